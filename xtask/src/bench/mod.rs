//! `cargo xtask bench`: the cost of the agent, measured side by side in one run.
//!
//! Each round runs every workload without the agent and with it (in that order in
//! odd rounds, the other way round in even ones; one agent run per round, kernel
//! program statistics on for its duration), then the short-connection load once
//! more with tshark capturing and dissecting it instead (the peer), so machine
//! noise hits all sides alike. Workloads, all on loopback
//! (see `load`): short plaintext connections (nginx + wrk, `Connection: close`),
//! short mutual-TLS connections (nginx `ssl_verify_client on` + `openssl s_time
//! -new -cert`), bulk throughput (one iperf3 stream). Every port is chosen free at
//! run time, the agent's `--listen` included. The agent runs as the DaemonSet runs
//! it: `--output=off` (metrics and verdict events, no JSON line per connection).
//!
//! Within the agent run, each workload is a phase between two snapshots (see
//! `agent`), so its cost per connection is its own: kernel program time (run time
//! and runs per program from the kernel's BPF statistics), agent CPU, ring events
//! and payload bytes sent up, events lost. Connections are the load generator's
//! completed connections in that phase.
//!
//! Last, one agent run holds many idle loopback connections (see `hold`) and its
//! RSS is sampled before, while they are held, and after they are closed.
//!
//! Everything is printed as numbers and ratios beside the targets; nothing is
//! asserted.

mod agent;
mod bpf;
mod hold;
mod load;
mod peer;
mod report;
mod stats;
mod sys;
mod tls;

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::project_root;
use agent::{Agent, Final, PhaseCost};
use load::ConnRun;
use peer::PeerRun;

pub struct BenchOptions {
    pub rounds: usize,
    pub seconds: u64,
    /// Connections held open for the memory figures (0: none).
    pub hold: usize,
}

/// The agent's default instance lock (agent/src/instance.rs).
const AGENT_LOCK: &str = "/run/mtls-auditor/agent.lock";
/// How long the agent may take to catch up after a phase's load.
const SETTLE: Duration = Duration::from_secs(10);
/// Seconds the memory phase waits after the held connections are closed.
const AFTER_CLOSE_S: u64 = 5;

/// One workload phase with the agent attached.
pub struct Measured<T> {
    pub load: T,
    pub cost: PhaseCost,
}

/// Everything one round measured.
pub struct Round {
    pub short_off: ConnRun,
    pub mtls_off: ConnRun,
    pub bulk_off: f64,
    pub short_on: Measured<ConnRun>,
    pub mtls_on: Measured<ConnRun>,
    pub bulk_on: Measured<f64>,
    pub agent: Final,
    pub peer: PeerRun,
}

/// The memory phase's figures.
pub struct Memory {
    pub target: usize,
    pub opened: usize,
    pub open_s: f64,
    pub close_s: f64,
    pub baseline_kib: u64,
    pub peak_kib: u64,
    /// RssAnon (the agent's heap) at the baseline and its peak while holding.
    pub baseline_anon_kib: u64,
    pub peak_anon_kib: u64,
    /// RSS of the BPF map mappings (the ring buffer, mapped twice) at the baseline.
    pub ring_kib: u64,
    pub after_close_kib: u64,
    pub hwm_kib: u64,
    pub flows_held: u64,
    /// Established sockets held in kernel storage only (never spoke).
    pub quiet_held: u64,
    pub flows_after: u64,
    pub lost_open: u64,
    pub lost_close: u64,
    /// The highest RSS sampled while closing and in the [`AFTER_CLOSE_S`] after.
    pub closing_peak_kib: u64,
    /// How long each `/metrics` scrape took while holding, with [`EDGE_CLIENTS`]
    /// clients fetching the edges view at the same time (ms, sorted).
    pub scrape_ms: Vec<f64>,
    /// Edges-view answers those clients got meanwhile.
    pub edge_fetches: u64,
}

/// Clients that fetch `/api/v1/edges` in a loop while `/metrics` is timed.
pub const EDGE_CLIENTS: usize = 16;

struct Env<'a> {
    bin: &'a Path,
    dir: &'a Path,
    nginx: &'a load::Nginx,
    iperf_port: u16,
    certs: &'a tls::Certs,
    secs: u64,
}

/// One phase with the agent: snapshot, load, wait for the agent to catch up,
/// snapshot.
fn measure<T>(
    agent: &Agent,
    port: u16,
    run: impl FnOnce() -> Result<T>,
    conns: impl Fn(&T) -> u64,
) -> Result<Measured<T>> {
    let before = agent.snapshot(port, true)?;
    let load = run()?;
    let settled = agent.settle(before.flows, SETTLE)?;
    let after = agent.snapshot(port, true)?;
    let cost = PhaseCost::between(&before, &after, conns(&load), settled);
    Ok(Measured { load, cost })
}

type Without = (ConnRun, ConnRun, f64);
type With = (Measured<ConnRun>, Measured<ConnRun>, Measured<f64>, Final);

fn without(env: &Env) -> Result<Without> {
    let (http, tls_port) = (env.nginx.http_port, env.nginx.tls_port);
    Ok((
        load::wrk(http, env.secs)?,
        load::s_time(tls_port, env.certs, env.secs)?,
        load::iperf(env.iperf_port, env.secs)?,
    ))
}

fn with_agent(env: &Env, n: usize) -> Result<With> {
    let (secs, http, tls_port) = (env.secs, env.nginx.http_port, env.nginx.tls_port);
    let _stats = bpf::StatsOn::enable().context("turning on kernel BPF statistics")?;
    let agent = Agent::start(env.bin, env.dir, &format!("agent-round{n}"))?;
    // Let its start-up work (reading /proc for the sockets already open, the
    // first cgroup walk) pass before the first phase.
    thread::sleep(Duration::from_millis(500));
    let short = measure(&agent, http, || load::wrk(http, secs), |r| r.conns)?;
    let mtls = measure(
        &agent,
        tls_port,
        || load::s_time(tls_port, env.certs, secs),
        |r| r.conns,
    )?;
    let bulk = measure(
        &agent,
        env.iperf_port,
        || load::iperf(env.iperf_port, secs),
        |_| 1,
    )?;
    Ok((short, mtls, bulk, agent.stop()?))
}

/// Round `n`: without and with the agent (with it first in even rounds, so a drift
/// of the machine within a round does not favour one side), then tshark.
fn round(env: &Env, n: usize) -> Result<Round> {
    let ((short_off, mtls_off, bulk_off), (short_on, mtls_on, bulk_on, agent)) =
        if n.is_multiple_of(2) {
            let on = with_agent(env, n)?;
            (without(env)?, on)
        } else {
            let off = without(env)?;
            (off, with_agent(env, n)?)
        };
    let peer = peer::tshark_round(env.dir, env.nginx.http_port, env.secs)?;
    Ok(Round {
        short_off,
        mtls_off,
        bulk_off,
        short_on,
        mtls_on,
        bulk_on,
        agent,
        peer,
    })
}

fn memory(env: &Env, n: usize) -> Result<Memory> {
    let agent = Agent::start(env.bin, env.dir, "agent-memory")?;
    thread::sleep(Duration::from_secs(2));
    let baseline_kib = agent.rss_kib()?;
    let baseline_anon_kib = agent.anon_kib()?;
    let ring_kib = agent.bpf_mapped_kib()?;
    let mut peak_anon_kib = baseline_anon_kib;
    let lost = |m: &[agent::Sample]| agent::sum(m, "mtls_auditor_events_lost_total") as u64;
    let flows = |m: &[agent::Sample]| agent::sum(m, "mtls_auditor_flows_tracked") as u64;
    let quiet = |m: &[agent::Sample]| agent::sum(m, "mtls_auditor_quiet_sockets") as u64;
    let lost0 = lost(&agent.metrics()?);
    let mut peak_kib = baseline_kib;
    let (held, open_s) = hold::open(n, || {
        peak_kib = peak_kib.max(agent.rss_kib()?);
        Ok(())
    })?;
    // Held for 5 s, sampled every 250 ms, each time with a timed /metrics scrape
    // (flows tracked read from it) while other clients fetch the edges view.
    let mut flows_held = 0;
    let mut quiet_held = 0;
    let mut scrape_ms = Vec::new();
    let stop_fetching = std::sync::atomic::AtomicBool::new(false);
    let fetches = std::sync::atomic::AtomicU64::new(0);
    let addr = agent.addr();
    thread::scope(|s| -> Result<()> {
        for _ in 0..EDGE_CLIENTS {
            s.spawn(|| {
                while !stop_fetching.load(std::sync::atomic::Ordering::Relaxed) {
                    if agent::get(addr, "/api/v1/edges").is_ok() {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        let sampled = (|| -> Result<()> {
            for _ in 0..20 {
                peak_kib = peak_kib.max(agent.rss_kib()?);
                peak_anon_kib = peak_anon_kib.max(agent.anon_kib()?);
                let t = Instant::now();
                let m = agent.metrics()?;
                scrape_ms.push(t.elapsed().as_secs_f64() * 1e3);
                flows_held = flows_held.max(flows(&m));
                quiet_held = quiet_held.max(quiet(&m));
                thread::sleep(Duration::from_millis(250));
            }
            Ok(())
        })();
        stop_fetching.store(true, std::sync::atomic::Ordering::Relaxed);
        sampled
    })?;
    scrape_ms.sort_by(f64::total_cmp);
    let lost1 = lost(&agent.metrics()?);
    let opened = held.opened;
    // Closing, and 5 s after, sampled every 100 ms.
    let mut closing_peak_kib = 0;
    let close_s = thread::scope(|s| -> Result<f64> {
        let closing = s.spawn(|| held.close());
        let end = |t: Instant| t + Duration::from_secs(AFTER_CLOSE_S);
        let mut until = None;
        loop {
            closing_peak_kib = closing_peak_kib.max(agent.rss_kib()?);
            if until.is_none() && closing.is_finished() {
                until = Some(end(Instant::now()));
            }
            if until.is_some_and(|u| Instant::now() > u) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        closing
            .join()
            .map_err(|_| anyhow::anyhow!("closing the held connections panicked"))?
    })?;
    let after_close_kib = agent.rss_kib()?;
    let m = agent.metrics()?;
    let fin = agent.stop()?;
    Ok(Memory {
        target: n,
        opened,
        open_s,
        close_s,
        baseline_kib,
        peak_kib,
        baseline_anon_kib,
        peak_anon_kib,
        ring_kib,
        after_close_kib,
        hwm_kib: fin.peak_rss_kib,
        flows_held,
        quiet_held,
        flows_after: flows(&m),
        lost_open: lost1.saturating_sub(lost0),
        lost_close: lost(&m).saturating_sub(lost1),
        closing_peak_kib,
        scrape_ms,
        edge_fetches: fetches.into_inner(),
    })
}

/// `xtask bench-hold`: one process holding connections for [`bench`]'s memory
/// figures (see `hold`).
pub fn holder(connections: usize) -> Result<()> {
    hold::holder_main(connections)
}

pub fn bench(opts: &BenchOptions) -> Result<()> {
    let root = project_root();
    let bin = root.join("target/release/mtls-auditor");
    let dir = root.join("target/bench");
    sys::check_no_agent(Path::new(AGENT_LOCK))?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let certs = tls::make(&dir.join("tls"))?;
    let nginx = load::nginx(
        &dir.join("nginx"),
        &certs,
        sys::free_port()?,
        sys::free_port()?,
    )?;
    let iperf_port = sys::free_port()?;
    let _iperf = load::iperf_server(iperf_port)?;
    let env = Env {
        bin: &bin,
        dir: &dir,
        nginx: &nginx,
        iperf_port,
        certs: &certs,
        secs: opts.seconds,
    };
    let started = Instant::now();
    eprintln!(
        "bench: {} rounds of {} s per workload: without the agent, with it, with tshark instead \
         (nginx on 127.0.0.1:{} and :{} (mTLS), iperf3 on :{iperf_port}; logs in {})",
        opts.rounds,
        opts.seconds,
        nginx.http_port,
        nginx.tls_port,
        dir.display()
    );
    // Warm-up: page cache, nginx worker, TIME_WAIT steady state, TLS code paths.
    load::wrk(nginx.http_port, 2)?;
    load::s_time(nginx.tls_port, &certs, 1)?;
    let mut rounds = Vec::new();
    for n in 1..=opts.rounds {
        let r = round(&env, n)?;
        report::round_line(n, &r);
        rounds.push(r);
    }
    let memory = if opts.hold > 0 {
        eprintln!(
            "bench: holding {} connections open with the agent",
            opts.hold
        );
        Some(memory(&env, opts.hold)?)
    } else {
        None
    };
    eprintln!("bench: {:.0} s", started.elapsed().as_secs_f64());
    report::summary(opts, &rounds, memory.as_ref());
    Ok(())
}
