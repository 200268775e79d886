//! Test harness for yurthub: the apiserver double, sandbox helpers and
//! process runners shared by the end-to-end tests in `tests/tests/`.

pub mod apiserver;
pub mod cpu;
pub mod hub;
pub mod pki;
pub mod pool;
pub mod sandbox;
pub mod stack_floor;
