//! The ABI between the kernel programs in `yurthub-ebpf` and the daemon's
//! `redirect` module: map names and `#[repr(C)]` key/value types, defined once.
#![no_std]
