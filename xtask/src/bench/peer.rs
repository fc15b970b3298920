//! The peer: tshark capturing and dissecting the same loopback short-connection
//! traffic (without our agent), so that its CPU per connection stands beside ours.
//!
//! tshark runs with a capture filter on the nginx port, `-n`, and prints fields of
//! every packet (`frame.number`, `tcp.stream`, `http.request.uri`,
//! `http.response.code`, `tls.handshake.type`), which makes it dissect each one up
//! to HTTP; its output is counted, not stored. It stops capturing by itself
//! (`-a duration:`) a little after the load, dissects what it still has, and
//! exits; its CPU is then read from `wait4` (its own and its dumpcap's, which it
//! waits for) minus what it had used once capturing had started (loading its
//! dissectors is not per-connection cost).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    load::{self, ConnRun},
    sys::{self, Guard},
};

pub struct PeerRun {
    pub load: ConnRun,
    /// tshark + dumpcap CPU seconds while capturing and dissecting.
    pub cpu_s: f64,
    pub packets: u64,
    pub http_requests: u64,
    /// "packets dropped" tshark reports, if any.
    pub dropped: u64,
}

/// Packets captured and dropped, from tshark's closing lines on stderr
/// (`6188 packets captured`, `12 packets dropped from lo`).
pub fn parse_tshark_counts(stderr: &str) -> (Option<u64>, u64) {
    let count = |what: &str| {
        stderr.lines().find_map(|l| {
            let l = l.trim().trim_start_matches("tshark:").trim();
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with(what).then(|| n.parse::<u64>().ok())?
        })
    };
    (
        count("packets captured"),
        count("packets dropped").unwrap_or(0),
    )
}

/// Process CPU (seconds, children waited for included) of an exited child, and
/// its exit status, through wait4.
fn wait_with_rusage(pid: u32, limit: Duration) -> Result<(f64, i32)> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 writes into both out-params.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child by PID, without blocking.
        let rc = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut ru) };
        if rc == pid as i32 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok((secs(ru.ru_utime) + secs(ru.ru_stime), status));
        }
        if rc < 0 {
            bail!("wait4(tshark): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            bail!("tshark did not finish dissecting within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn tshark_round(dir: &Path, port: u16, seconds: u64) -> Result<PeerRun> {
    let tmp = dir.join("tshark");
    fs::create_dir_all(&tmp)?;
    let err_path = tmp.join("stderr.log");
    let err = fs::File::create(&err_path)?;
    let linger = 2;
    let mut child = Command::new("tshark")
        .args(["-i", "lo", "-f", &format!("tcp port {port}"), "-n"])
        // A large capture buffer (MiB), so that dumpcap drops little.
        .args(["-B", "128"])
        .args(["-a", &format!("duration:{}", seconds + linger)])
        .args(["-T", "fields", "-e", "frame.number", "-e", "tcp.stream"])
        .args(["-e", "http.request.uri", "-e", "http.response.code"])
        .args(["-e", "tls.handshake.type"])
        // dumpcap's temporary capture file goes here, not to /tmp.
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .context("starting tshark (apt package tshark)")?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("tshark: no stdout"))?;
    // Until wait4 below has reaped it, the guard stops tshark on an early return.
    let mut guard = Guard(Some(child));
    let counter = thread::spawn(move || {
        let (mut packets, mut requests) = (0u64, 0u64);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            packets += 1;
            if line.split('\t').nth(2).is_some_and(|u| !u.is_empty()) {
                requests += 1;
            }
        }
        (packets, requests)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("Capturing on")
    {
        guard
            .check_alive("tshark")
            .with_context(|| fs::read_to_string(&err_path).unwrap_or_default())?;
        if Instant::now() > deadline {
            bail!("tshark did not start capturing within 30 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    // dumpcap starts capturing a moment before tshark says so.
    thread::sleep(Duration::from_millis(300));
    let at_start: f64 = std::iter::once(pid)
        .chain(sys::children(pid))
        .filter_map(|p| sys::cpu_seconds(p).ok())
        .sum();
    let load = load::wrk(port, seconds)?;
    let (cpu_total, status) = wait_with_rusage(pid, Duration::from_secs(60 + 10 * seconds))?;
    // Reaped: the guard must not signal the PID any more (dropping a Child
    // neither signals nor waits).
    drop(guard.0.take());
    let (packets, http_requests) = counter
        .join()
        .map_err(|_| anyhow!("tshark output counter panicked"))?;
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if status != 0 {
        bail!("tshark exited with status {status}:\n{stderr}");
    }
    let (captured, dropped) = parse_tshark_counts(&stderr);
    if captured.is_some_and(|c| c != packets) {
        eprintln!(
            "bench: tshark captured {} packets but printed {packets}",
            captured.unwrap_or(0)
        );
    }
    Ok(PeerRun {
        load,
        cpu_s: (cpu_total - at_start).max(0.0),
        packets,
        http_requests,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tshark_closing_lines_give_captured_and_dropped() {
        // tshark 4.0.17 on stderr after -a duration: stopped the capture.
        let err = "Running as user \"root\" and group \"root\". This could be dangerous.\n\
                   Capturing on 'Loopback: lo'\n \
                   ** (tshark:16100) 06:47:08.716208 [Main MESSAGE] -- Capture started.\n\
                   tshark: \n6188 packets captured\n";
        assert_eq!(parse_tshark_counts(err), (Some(6188), 0));
        let dropped = format!("{err}12 packets dropped from lo\n");
        assert_eq!(parse_tshark_counts(&dropped), (Some(6188), 12));
        assert_eq!(parse_tshark_counts("Capturing on 'lo'\n"), (None, 0));
    }
}
