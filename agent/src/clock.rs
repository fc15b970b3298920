//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time.

use std::{
    cell::Cell,
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

thread_local! {
    /// The last whole second [`Clock::rfc3339`] formatted, and its text.
    static SECOND: Cell<Option<(u64, [u8; 19])>> = const { Cell::new(None) };
}

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

    /// RFC 3339 with milliseconds, UTC. Records come many to a second: the date and
    /// time of day are formatted once per second (per thread) and reused.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        let t = self.to_system(mono_ns);
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        SECOND.with(|cached| {
            let prefix = match cached.get() {
                Some((s, prefix)) if s == secs => prefix,
                _ => {
                    let whole =
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                            .to_string();
                    // "YYYY-MM-DDTHH:MM:SSZ"; other lengths (years past 9999) are
                    // formatted in full every time.
                    let Ok(prefix) = <[u8; 19]>::try_from(&whole.as_bytes()[..whole.len() - 1])
                    else {
                        return humantime::format_rfc3339_millis(t).to_string();
                    };
                    cached.set(Some((secs, prefix)));
                    prefix
                }
            };
            let mut out = String::with_capacity(24);
            // The prefix came from a str and is ASCII.
            out.push_str(std::str::from_utf8(&prefix).unwrap_or_default());
            let _ = write!(out, ".{:03}Z", since.subsec_millis());
            out
        })
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_humantime_across_seconds_and_milliseconds() {
        let clock = Clock::identity();
        // Seconds visited in and out of order, so the cached second is both reused
        // and replaced; millisecond edges included.
        let base = 1_764_000_000u64 * 1_000_000_000;
        let offsets = [
            0,
            1,
            999_999,
            1_000_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            5_432_100_000,
            999_999_999,
            86_400 * 1_000_000_000 - 1,
            0,
        ];
        for off in offsets {
            let ns = base + off;
            let want = humantime::format_rfc3339_millis(clock.to_system(ns)).to_string();
            assert_eq!(clock.rfc3339(ns), want, "at {ns} ns");
        }
        assert_eq!(clock.rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
