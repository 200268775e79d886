//! CPU time of a process, for the benches: its POSIX CPU-time clock
//! (`clock_getcpuclockid`), which counts all its threads, exited ones
//! included, in nanoseconds. `/proc/<pid>/stat` counts in ticks of 10 ms:
//! about ±8 % of a LIST round's CPU, and an idle hub's whole minute is one
//! or two ticks.

use std::time::Duration;

use nix::time::{clock_getcpuclockid, clock_gettime};
use nix::unistd::Pid;

/// CPU time (user + system) of process `pid` so far.
pub fn process_cpu(pid: u32) -> nix::Result<Duration> {
    let clock = clock_getcpuclockid(Pid::from_raw(pid as i32))?;
    Ok(Duration::from(clock_gettime(clock)?))
}
