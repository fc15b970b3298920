//! Processes, ports and /proc readings the bench needs.

use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// A child process that is stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Guard(pub Option<Child>);

impl Guard {
    /// Fails when the child has already exited.
    pub fn check_alive(&mut self, what: &str) -> Result<()> {
        match self.0.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => bail!("{what} exited: {status}"),
            Some(Err(e)) => Err(e).with_context(|| format!("waiting for {what}")),
            None => bail!("{what} is not running"),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            // SAFETY: signalling a child we started, by PID; it has not been reaped
            // (try_wait above), so the PID is still its own.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port nothing listens on right now: bound with port 0, read, closed.
/// Whoever gets it next may still lose it to someone else; the callers check.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `child` listens on 127.0.0.1:`port` (read from /proc/net/tcp, so no
/// connection is made), failing early when the child exits.
pub fn wait_listening(child: &mut Guard, what: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        child.check_alive(what)?;
        let table = fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
        if listens(&table, port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} does not listen on 127.0.0.1:{port} after 10 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether /proc/net/tcp text has a socket in LISTEN (state 0A) on 127.0.0.1:`port`
/// or 0.0.0.0:`port`.
pub fn listens(proc_net_tcp: &str, port: u16) -> bool {
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    proc_net_tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && want.iter().any(|w| w == f[1])
    })
}

/// CPU time (user + system, children not included) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (ticks, _) = stat_ticks(&stat).ok_or_else(|| anyhow!("{path}: no utime/stime"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// utime + stime (clock ticks) and the parent PID, from /proc/PID/stat text.
pub fn stat_ticks(stat: &str) -> Option<(u64, u32)> {
    // After the parenthesised comm (which may hold spaces and parentheses): state is
    // field 3 (1-based), ppid 4, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(11)? + n(12)?, n(1)? as u32))
}

/// Busy CPU time of the whole machine, all CPUs together, in seconds: every
/// process and the kernel (user, nice, system, irq, softirq), not idle, iowait or
/// time stolen by the hypervisor.
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = busy_ticks(&stat).ok_or_else(|| anyhow!("/proc/stat: no `cpu` line"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// Busy clock ticks from the `cpu` line of /proc/stat text (guest time is inside
/// user time already).
pub fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// PIDs whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
                .is_some_and(|(_, ppid)| ppid == pid)
        })
        .collect()
}

/// A `Vm*:` line of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field_kib(&status, field).ok_or_else(|| anyhow!("{path}: no {field} line"))
}

/// The resident KiB of the mappings of /proc/PID/smaps whose path is `path`
/// (`anon_inode:bpf-map`: the ring buffer, whose data pages are mapped twice so
/// that a record can wrap around, and so count twice in RSS).
pub fn mapped_kib(pid: u32, path: &str) -> Result<u64> {
    let file = format!("/proc/{pid}/smaps");
    let smaps = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    Ok(smaps_kib(&smaps, path))
}

pub fn smaps_kib(smaps: &str, path: &str) -> u64 {
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let mut words = line.split_whitespace();
        if words
            .next()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            inside = words.nth(4) == Some(path);
        } else if inside && let Some(v) = line.strip_prefix("Rss:") {
            kib += v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib
}

pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Fails when another agent holds the instance lock at `path`: its probes would
/// count in the rounds without ours, and ours could not start. Tries the lock
/// itself (and lets go at once), as the agent does.
pub fn check_no_agent(path: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd as _;
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    // SAFETY: flock on a descriptor we own; closing the file releases the lock.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        let holder = fs::read_to_string(path).unwrap_or_default();
        bail!(
            "another mtls-auditor agent (PID {}) holds {}: its probes would be attached during the rounds without ours, and ours would refuse to start; stop it first",
            holder.trim(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_address_port_and_state() {
        // Captured from /proc/net/tcp: a listener on 127.0.0.1:18480, a connection
        // from port 18480 (state 01), a wildcard listener on 5201.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:4830 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:9C40 0100007F:4831 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1\n\
           2: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31339 1 0000000000000000 100 0 0 10 0\n";
        assert!(listens(table, 18480));
        assert!(
            !listens(table, 18481),
            "an established socket is not a listener"
        );
        assert!(listens(table, 5201));
        assert!(!listens(table, 40000));
    }

    #[test]
    fn stat_fields_are_counted_after_a_comm_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 1234 0 0 0 250 38 0 0 20 0 5 0 \
                    9999 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(stat_ticks(stat), Some((288, 17)));
        assert_eq!(stat_ticks("4242 no parenthesis"), None);
    }

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        let stat = "cpu  100 2 30 5000 7 1 4 900 50 0\ncpu0 50 1 15 2500 3 0 2 450 25 0\nintr 1\n";
        assert_eq!(busy_ticks(stat), Some(137));
        assert_eq!(busy_ticks("intr 1\n"), None);
        assert_eq!(busy_ticks("cpu  1 2\n"), None, "too few fields");
    }

    #[test]
    fn status_lines_give_kib() {
        let smaps = "7fc9e24b8000-7fc9e2cb9000 r--s 00001000 00:10 26                         anon_inode:bpf-map\n\
            Size:               8196 kB\n\
            Rss:                8196 kB\n\
            5648e4d91000-5648e521f000 r--p 00000000 fe:00 5385228   /usr/bin/mtls-auditor\n\
            Rss:                 100 kB\n\
            7fc9e2ffa000-7fc9e2ffb000 rw-s 00000000 00:10 26                         anon_inode:bpf-map\n\
            Rss:                   4 kB\n";
        assert_eq!(smaps_kib(smaps, "anon_inode:bpf-map"), 8200);
        let status = "Name:\tmtls-auditor\nVmHWM:\t   61234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(40960));
        assert_eq!(status_field_kib(status, "VmHWM"), Some(61234));
        assert_eq!(status_field_kib(status, "VmSwap"), None);
    }
}
