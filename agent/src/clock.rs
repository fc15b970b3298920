//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts monotonic nanoseconds to wall-clock time with an offset taken once.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `realtime - monotonic` in nanoseconds at construction.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    /// A clock whose wall time equals its monotonic time (tests, pcap replay).
    pub fn identity() -> Self {
        Self { offset_ns: 0 }
    }

    /// Current CLOCK_MONOTONIC in nanoseconds, the kernel's timebase.
    pub fn now_mono_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    pub fn to_system(&self, mono_ns: u64) -> SystemTime {
        let ns = i128::from(mono_ns) + self.offset_ns;
        let ns = u64::try_from(ns.max(0)).unwrap_or(0);
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// RFC 3339 with milliseconds, UTC.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_millis(self.to_system(mono_ns)).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
