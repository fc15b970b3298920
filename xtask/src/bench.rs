//! `cargo xtask bench`: the cost of the agent, measured side by side in one run.
//!
//! Rounds alternate without and with the agent attached, so machine noise hits both
//! sides alike; each figure is the median of its rounds and the printed ratio is
//! with/without. Workloads, all on loopback:
//! - short connections: nginx serving a small page, `wrk -H 'Connection: close'`
//!   (one TCP connection per request);
//! - bulk throughput: one `iperf3` stream.
//!
//! While attached, the agent's events received, CPU seconds (utime+stime from
//! /proc) and peak RSS (VmHWM) are read.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::project_root;

const NGINX_PORT: u16 = 18480;
const IPERF_PORT: u16 = 18481;

pub struct BenchOptions {
    pub rounds: usize,
    pub seconds: u64,
}

struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling a child we started, by PID.
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

fn nginx(dir: &Path) -> Result<Guard> {
    fs::create_dir_all(dir.join("logs"))?;
    fs::write(dir.join("index.html"), "x".repeat(612))?;
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{ listen 127.0.0.1:{NGINX_PORT} reuseport backlog=4096; root {d}; }}\n}}\n",
        d = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &conf_path.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt package nginx-light)")?;
    wait_port(NGINX_PORT)?;
    Ok(Guard(Some(child)))
}

fn iperf_server() -> Result<Guard> {
    let child = Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3")?;
    wait_port(IPERF_PORT)?;
    Ok(Guard(Some(child)))
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// Requests per second from `wrk` with one connection per request.
fn wrk_rate(seconds: u64) -> Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{seconds}s"),
            "-H",
            "Connection: close",
            &format!("http://127.0.0.1:{NGINX_PORT}/index.html"),
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk output:\n{text}"))
}

/// Bits per second of one iperf3 stream.
fn iperf_rate(seconds: u64) -> Result<f64> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": { ... "bits_per_second": N ... }
    let at = text
        .find("\"sum_received\"")
        .ok_or_else(|| anyhow!("no sum_received in iperf3 output"))?;
    let rest = &text[at..];
    let k = rest
        .find("\"bits_per_second\"")
        .ok_or_else(|| anyhow!("no bits_per_second"))?;
    let num: String = rest[k + 18..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse::<f64>().with_context(|| format!("parsing {num}"))
}

struct AgentRun {
    child: Guard,
    pid: u32,
    stderr_path: PathBuf,
    started: Instant,
}

fn start_agent(bin: &Path, dir: &Path) -> Result<AgentRun> {
    let stderr_path = dir.join("agent.log");
    let log = fs::File::create(&stderr_path)?;
    let child = Command::new(bin)
        .args(["run", "--output", "/dev/null", "--stats-interval-s", "0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    let pid = child.id();
    let guard = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = fs::read_to_string(&stderr_path).unwrap_or_default();
        if log.contains("ready: reporting connections") {
            break;
        }
        if Instant::now() > deadline || log.contains("mtls-auditor:") {
            bail!("the agent did not start:\n{log}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(AgentRun {
        child: guard,
        pid,
        stderr_path,
        started: Instant::now(),
    })
}

struct AgentCost {
    cpu_s: f64,
    peak_rss_kib: u64,
    events: u64,
    wall_s: f64,
    lost: u64,
}

fn stop_agent(run: AgentRun) -> Result<AgentCost> {
    let stat = fs::read_to_string(format!("/proc/{}/stat", run.pid))?;
    let status = fs::read_to_string(format!("/proc/{}/status", run.pid))?;
    // Fields after the parenthesised comm: utime is field 14, stime 15 (1-based).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = (ticks(11) + ticks(12)) / hz;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wall_s = run.started.elapsed().as_secs_f64();
    drop(run.child);
    let log = fs::read_to_string(&run.stderr_path).unwrap_or_default();
    let stats = log
        .lines()
        .rev()
        .find(|l| l.contains("final_=true"))
        .unwrap_or("");
    let field = |name: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or(0)
    };
    Ok(AgentCost {
        cpu_s,
        peak_rss_kib,
        events: field("events_received="),
        wall_s,
        lost: field("ringbuf_full="),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn bench(opts: &BenchOptions) -> Result<()> {
    let root = project_root();
    let bin = root.join("target/release/mtls-auditor");
    let dir = root.join("target/bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let _nginx = nginx(&dir.join("nginx"))?;
    let _iperf = iperf_server()?;
    let secs = opts.seconds;

    let (mut rate_off, mut rate_on, mut bulk_off, mut bulk_on) = (vec![], vec![], vec![], vec![]);
    let mut costs = Vec::new();
    eprintln!(
        "bench: {} rounds of {secs} s per workload, alternating without/with the agent",
        opts.rounds
    );
    // Warm-up: page cache, nginx worker, TIME_WAIT steady state.
    wrk_rate(2)?;
    for round in 0..opts.rounds {
        rate_off.push(wrk_rate(secs)?);
        bulk_off.push(iperf_rate(secs)?);
        let agent = start_agent(&bin, &dir)?;
        let wrk_started = Instant::now();
        rate_on.push(wrk_rate(secs)?);
        let wrk_s = wrk_started.elapsed().as_secs_f64();
        bulk_on.push(iperf_rate(secs)?);
        let cost = stop_agent(agent)?;
        eprintln!(
            "  round {}: conn/s {:.0} -> {:.0}, Gbit/s {:.2} -> {:.2}, agent cpu {:.2}s rss {} KiB events {} (wrk phase {wrk_s:.1}s)",
            round + 1,
            rate_off[round],
            rate_on[round],
            bulk_off[round] / 1e9,
            bulk_on[round] / 1e9,
            cost.cpu_s,
            cost.peak_rss_kib,
            cost.events
        );
        costs.push(cost);
    }
    let (r0, r1) = (median(&mut rate_off), median(&mut rate_on));
    let (b0, b1) = (median(&mut bulk_off), median(&mut bulk_on));
    let mut ev_rate: Vec<f64> = costs
        .iter()
        .map(|c| c.events as f64 / c.wall_s.max(0.001))
        .collect();
    let mut cpu: Vec<f64> = costs.iter().map(|c| c.cpu_s).collect();
    let rss = costs.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0);
    let lost: u64 = costs.iter().map(|c| c.lost).sum();
    let mut cpu_per_s: Vec<f64> = costs
        .iter()
        .map(|c| c.cpu_s / c.wall_s.max(0.001))
        .collect();
    println!();
    println!(
        "mtls-auditor bench ({} rounds, {secs} s each, medians)",
        opts.rounds
    );
    println!(
        "{:<40} {:>14} {:>14} {:>8}",
        "workload", "without", "with agent", "ratio"
    );
    println!(
        "{:<40} {:>14.0} {:>14.0} {:>8.3}",
        "short connections (req/s, wrk)",
        r0,
        r1,
        r1 / r0
    );
    println!(
        "{:<40} {:>14.2} {:>14.2} {:>8.3}",
        "bulk throughput (Gbit/s, iperf3)",
        b0 / 1e9,
        b1 / 1e9,
        b1 / b0
    );
    println!(
        "agent: events/s handled {:.0}, CPU {:.2} s per run ({:.1}% of a core), peak RSS {} KiB, events lost {}",
        median(&mut ev_rate),
        median(&mut cpu),
        100.0 * median(&mut cpu_per_s),
        rss,
        lost
    );
    println!("targets: connection rate >= 0.97, throughput >= 0.99");
    Ok(())
}
