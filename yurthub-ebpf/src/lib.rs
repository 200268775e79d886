//! Empty on purpose: this library exists only so that `yurthub` can list the
//! eBPF crate as a build-dependency and be rebuilt when the programs change.
#![no_std]
