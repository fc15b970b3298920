//! Many idle TCP connections on loopback, both ends local, for the agent's memory
//! per tracked connection.
//!
//! Both ends of every connection take a descriptor, and the open-file limit may
//! not be raisable (no CAP_SYS_RESOURCE: the build machines' hard limit is
//! 20,000), so the connections are spread over holder processes (`xtask
//! bench-hold`, this same binary), each within its own limit. Each holder has its
//! own listener (so every holder's connections have a destination of their own
//! and one source address has ports enough) with a large accept backlog; its
//! connectors pause while more than [`IN_FLIGHT`] connections wait to be accepted,
//! so no SYN is dropped and retried a second later.
//!
//! A holder prints `open N SECONDS` once its connections are established (or
//! `error ...`), holds them until its stdin says `close` or ends, closes them
//! (clients first) and prints `closed SECONDS`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::sys::Guard;

const CONNECTORS: usize = 2;
/// Connections allowed to wait for accept (the kernel caps the backlog at
/// net.core.somaxconn, 4096 by default).
const IN_FLIGHT: u64 = 512;
/// Descriptors a holder keeps free besides its connections' two per connection.
const SPARE_FDS: u64 = 256;

/// The connections a holder process can take: half its open-file limit (raised
/// to the hard limit first), less some spare.
pub fn per_holder() -> Result<usize> {
    let limit = raise_soft_to_hard()?;
    Ok((limit.saturating_sub(SPARE_FDS) / 2).clamp(1, 20_000) as usize)
}

fn raise_soft_to_hard() -> Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit reads the struct we pass; up to the hard limit needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            bail!(
                "setrlimit(RLIMIT_NOFILE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(l.rlim_cur)
}

/// `xtask bench-hold --connections N`: one holder process.
pub fn holder_main(n: usize) -> Result<()> {
    let out = std::io::stdout();
    let result = per_holder().and_then(|max| {
        if n > max {
            bail!(
                "{n} connections need {} descriptors; the limit allows {max}",
                2 * n
            );
        }
        open_all(n, Instant::now() + Duration::from_secs(180))
    });
    let held = match result {
        Ok(h) => h,
        Err(e) => {
            writeln!(out.lock(), "error {e:#}")?;
            return Err(e);
        }
    };
    writeln!(out.lock(), "open {} {:.3}", held.0.len(), held.2)?;
    let mut line = String::new();
    // Until `close` or the end of stdin (the parent gone).
    while std::io::stdin().read_line(&mut line)? > 0 && line.trim() != "close" {
        line.clear();
    }
    let t = Instant::now();
    let (clients, servers, _) = held;
    drop(clients);
    drop(servers);
    writeln!(out.lock(), "closed {:.3}", t.elapsed().as_secs_f64())?;
    Ok(())
}

/// Opens `n` loopback connections: (client ends, server ends, seconds taken).
fn open_all(n: usize, deadline: Instant) -> Result<(Vec<TcpStream>, Vec<TcpStream>, f64)> {
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the holder's listener")?;
    // listen() again sets the new backlog on a listening socket.
    // SAFETY: listen on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    let addr: SocketAddr = listener.local_addr()?;
    let connected = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let connectors: Vec<JoinHandle<Result<Vec<TcpStream>>>> = (0..CONNECTORS)
        .map(|t| {
            let (connected, accepted, stop) = (
                Arc::clone(&connected),
                Arc::clone(&accepted),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in (t..n).step_by(CONNECTORS) {
                    while connected.load(Ordering::Relaxed)
                        > accepted.load(Ordering::Relaxed) + IN_FLIGHT
                    {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            bail!("stopped after {} connections", mine.len());
                        }
                        thread::sleep(Duration::from_micros(100));
                    }
                    let mut tries = 0;
                    let s = loop {
                        match TcpStream::connect(addr) {
                            Ok(s) => break s,
                            Err(e) => {
                                tries += 1;
                                if tries == 5 {
                                    let open = connected.load(Ordering::Relaxed);
                                    return Err(e).with_context(|| {
                                        format!("connecting to {addr} ({open} open, 5 tries)")
                                    });
                                }
                                thread::sleep(Duration::from_millis(20));
                            }
                        }
                    };
                    mine.push(s);
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(mine)
            })
        })
        .collect();
    let mut servers = Vec::with_capacity(n);
    let mut accept_err = None;
    while servers.len() < n {
        match listener.accept() {
            Ok((s, _)) => {
                servers.push(s);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if connectors.iter().all(JoinHandle::is_finished)
                    && connected.load(Ordering::Relaxed) < n as u64
                {
                    break; // a connector failed: its error follows
                }
                if Instant::now() > deadline {
                    accept_err = Some(anyhow!(
                        "accepted {} of {n} within the time limit",
                        servers.len()
                    ));
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => {
                accept_err = Some(anyhow::Error::from(e).context("accept"));
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    let mut clients = Vec::with_capacity(n);
    for c in connectors {
        clients.extend(c.join().map_err(|_| anyhow!("a connector panicked"))??);
    }
    if let Some(e) = accept_err {
        return Err(e);
    }
    if servers.len() < n {
        bail!("accepted {} of {n}", servers.len());
    }
    Ok((clients, servers, started.elapsed().as_secs_f64()))
}

/// Holder processes with their connections open.
pub struct Holders {
    procs: Vec<Holder>,
    pub opened: usize,
}

struct Holder {
    guard: Guard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

type FirstLine = (BufReader<ChildStdout>, Result<usize>);

/// Starts holders for `n` connections in all and waits until every one has its
/// connections open, calling `tick` about every 100 ms meanwhile. Returns them
/// and the seconds the opening took.
pub fn open(n: usize, mut tick: impl FnMut() -> Result<()>) -> Result<(Holders, f64)> {
    let per = per_holder()?;
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<()>();
    let mut waiting: Vec<(Guard, ChildStdin, JoinHandle<FirstLine>)> = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(per);
        left -= count;
        let mut child = Command::new(&exe)
            .args(["bench-hold", "--connections", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} bench-hold", exe.display()))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("holder: no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("holder: no stdout"))?;
        // The first line is read on a thread of its own, so that `tick` goes on.
        let tx = tx.clone();
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let res = r
                .read_line(&mut line)
                .map_err(anyhow::Error::from)
                .and_then(|_| parse_open(&line));
            let _ = tx.send(());
            (r, res)
        });
        waiting.push((Guard(Some(child)), stdin, reader));
    }
    drop(tx);
    let mut done = 0;
    while done < waiting.len() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => done += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        tick()?;
        // Dropping the guards stops the holders, which ends the readers.
        if started.elapsed() > Duration::from_secs(200) {
            bail!("{n} connections were not open after 200 s");
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    let mut procs = Vec::new();
    let mut opened = 0;
    for (guard, stdin, reader) in waiting {
        let (stdout, res) = reader
            .join()
            .map_err(|_| anyhow!("a holder's reader panicked"))?;
        opened += res?;
        procs.push(Holder {
            guard,
            stdin,
            stdout,
        });
    }
    Ok((Holders { procs, opened }, open_s))
}

/// `open N SECONDS` -> N; `error ...` -> the error.
pub fn parse_open(line: &str) -> Result<usize> {
    let line = line.trim();
    if let Some(e) = line.strip_prefix("error ") {
        bail!("holder: {e}");
    }
    line.strip_prefix("open ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("holder: unexpected `{line}`"))
}

impl Holders {
    /// Closes every connection (all holders at once); returns the seconds until
    /// the last holder was done.
    pub fn close(mut self) -> Result<f64> {
        let t = Instant::now();
        for h in &mut self.procs {
            h.stdin
                .write_all(b"close\n")
                .context("telling a holder to close")?;
        }
        for mut h in self.procs {
            let mut line = String::new();
            h.stdout.read_line(&mut line)?;
            if !line.starts_with("closed ") {
                bail!("holder: `{}` instead of `closed`", line.trim());
            }
            if let Some(mut c) = h.guard.0.take() {
                c.wait().context("waiting for a holder")?;
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_lines_give_counts_or_errors() {
        assert_eq!(parse_open("open 9872 1.250\n").expect("open"), 9872);
        let e = parse_open("error connecting to 127.0.0.1:4000: refused\n").expect_err("error");
        assert_eq!(
            e.to_string(),
            "holder: connecting to 127.0.0.1:4000: refused"
        );
        assert!(parse_open("").is_err());
    }

    #[test]
    fn a_holder_opens_and_closes_its_connections() {
        // Small: the real run holds 100,000 over several processes.
        let (clients, servers, secs) =
            open_all(50, Instant::now() + Duration::from_secs(30)).expect("opens");
        assert_eq!((clients.len(), servers.len()), (50, 50));
        assert!(secs >= 0.0);
        let peer = servers[0].peer_addr().expect("peer");
        assert!(clients.iter().any(|c| c.local_addr().ok() == Some(peer)));
    }
}
