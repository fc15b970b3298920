//! `mtls-auditor run`: the live pipeline.
//!
//! One thread owns the ring buffer and the flow table: it drains the ring in
//! batches (woken by the kernel past a fill watermark, otherwise every
//! `poll_ms`), feeds the flow table, emits finished connections to the JSON writer
//! and hands decided sockets back to the kernel. The async runtime waits for
//! SIGINT/SIGTERM and stops it.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use agent_common::stats::Stat;
use aya::maps::{MapData, RingBuf};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    capture,
    cgroups::CgroupResolver,
    classify::{self, Resumptions},
    cli::RunArgs,
    clock::Clock,
    export::{ConnectionRecord, ExportError, Format, JsonLines, Output},
    flows::Connection,
    flows::{FlowConfig, FlowTable},
    policy::{PolicySet, watch},
    probes::{ProbeConfig, ProbeError, Probes},
    verdict,
};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("starting the pipeline thread: {0}")]
    Thread(std::io::Error),
    #[error("the pipeline thread panicked")]
    Panicked,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<crate::policy::Diagnostic>),
}

/// Runs until SIGINT/SIGTERM. Returns after everything is detached.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    let cfg = ProbeConfig {
        capture_budget: args.capture_budget,
        ring_bytes: args.ring_bytes,
        ..ProbeConfig::default()
    };
    let output = match args.output_path() {
        Some(path) => Output::File(path),
        None => Output::Stdout,
    };
    let format = match args.format {
        crate::cli::OutputFormat::Json => Format::Json,
        crate::cli::OutputFormat::Table => Format::Table,
    };
    // Policy: a bad file at start is fatal; later, the last good policy stays.
    let (policy_tx, policy_rx) = std::sync::mpsc::channel::<Arc<PolicySet>>();
    let reload_stats = Arc::new(watch::ReloadStats::default());
    let (policy, reload) = if args.policy.is_empty() {
        (None, None)
    } else {
        let set = watch::load_set(&args.policy, &args.root_namespace).map_err(RunError::Policy)?;
        info!(
            peer_authentications = set.files.peer_authentications.len(),
            destination_rules = set.files.destination_rules.len(),
            transport_policies = set.files.transport_policies.len(),
            inventories = set.files.inventories.len(),
            "policy loaded"
        );
        let reload = watch::spawn(
            args.policy.clone(),
            args.root_namespace.clone(),
            policy_tx,
            Arc::clone(&reload_stats),
        );
        (Some(Arc::new(set)), Some(reload))
    };
    let mut probes = Probes::load(&cfg)?;
    let ring = probes.take_events()?;
    let json = JsonLines::start(&output, format, 8_192)?;
    let resolver = CgroupResolver::new(probes.cgroup_root().to_path_buf());
    let table = FlowTable::new(
        FlowConfig {
            budget: args.capture_budget,
            linger_ns: args.linger_ms * 1_000_000,
        },
        Some(resolver),
    );
    let shutdown = Arc::new(AtomicBool::new(false));
    let pipeline = Pipeline {
        policy,
        policy_rx,
        resumptions: Resumptions::default(),
        probes,
        ring,
        table,
        json,
        clock: Clock::new(),
        poll: Duration::from_millis(args.poll_ms.max(1)),
        stats_interval_ns: args.stats_interval_s.saturating_mul(1_000_000_000),
        shutdown: Arc::clone(&shutdown),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            pipeline.run();
            let _ = done_tx.send(());
        })
        .map_err(RunError::Thread)?;
    info!("ready: reporting connections; SIGINT or SIGTERM stops");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(|source| RunError::Signal {
            signal: "SIGINT",
            source,
        })?;
        let mut term = signal(SignalKind::terminate()).map_err(|source| RunError::Signal {
            signal: "SIGTERM",
            source,
        })?;
        let mut hup = signal(SignalKind::hangup())
            .map_err(|source| RunError::Signal { signal: "SIGHUP", source })?;
        let mut done_rx = done_rx;
        loop {
            tokio::select! {
                _ = int.recv() => { info!(signal = "SIGINT", "stopping"); break; }
                _ = term.recv() => { info!(signal = "SIGTERM", "stopping"); break; }
                _ = hup.recv() => {
                    match &reload {
                        Some(r) => { info!(signal = "SIGHUP", "reloading policy"); let _ = r.send(watch::Trigger::Signal); }
                        None => info!(signal = "SIGHUP", "no policy files to reload"),
                    }
                }
                _ = &mut done_rx => { warn!("pipeline stopped on its own"); break; }
            }
        }
        Ok::<(), RunError>(())
    })?;
    shutdown.store(true, Ordering::Relaxed);
    worker.join().map_err(|_| RunError::Panicked)?;
    info!("stopped; probes detached");
    Ok(())
}

/// Classifies a finished connection, letting resumed TLS sessions inherit the class
/// of the full handshake they resume.
fn record(
    conn: &Connection,
    clock: &Clock,
    resumptions: &mut Resumptions,
    policy: Option<&PolicySet>,
) -> ConnectionRecord {
    let mut cls = classify::classify(&conn.classify_input());
    resumptions.apply(
        (conn.client.ip(), conn.server.ip(), conn.server.port()),
        &mut cls,
    );
    let assessment = policy.map(|p| verdict::assess(conn, &cls, p));
    ConnectionRecord::with_classification(conn, clock, cls, assessment)
}

struct Pipeline {
    policy: Option<Arc<PolicySet>>,
    policy_rx: std::sync::mpsc::Receiver<Arc<PolicySet>>,
    resumptions: Resumptions,
    probes: Probes,
    ring: RingBuf<MapData>,
    table: FlowTable,
    json: JsonLines,
    clock: Clock,
    poll: Duration,
    stats_interval_ns: u64,
    shutdown: Arc<AtomicBool>,
}

const TICK_NS: u64 = 100_000_000;

impl Pipeline {
    fn run(mut self) {
        let mut logger = self.probes.take_logger();
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(self.poll.as_millis()).unwrap_or(i32::MAX);
        let mut last_tick = 0u64;
        let mut last_stats = Clock::now_mono_ns();
        let mut decode_errors = 0u64;
        let mut events = 0u64;
        let mut last_kernel = Vec::new();
        loop {
            let stopping = self.shutdown.load(Ordering::Relaxed);
            if !stopping {
                // SAFETY: poll on one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, timeout) };
            }
            while let Some(item) = self.ring.next() {
                events += 1;
                match capture::decode(&item) {
                    Ok(event) => self.table.on_event(event),
                    Err(err) => {
                        decode_errors += 1;
                        if decode_errors.is_power_of_two() {
                            warn!(error = %err, total = decode_errors, "undecodable ring buffer record");
                        }
                    }
                }
            }
            for cookie in self.table.take_decided() {
                if let Err(err) = self.probes.mark_decided(cookie) {
                    debug!(cookie, error = %err, "marking a socket decided failed");
                }
            }
            if let Some(l) = logger.as_mut() {
                l.flush();
            }
            let now = Clock::now_mono_ns();
            if now.saturating_sub(last_tick) >= TICK_NS || stopping {
                last_tick = now;
                while let Ok(p) = self.policy_rx.try_recv() {
                    self.policy = Some(p);
                }
                let (json, clock, res) = (&self.json, &self.clock, &mut self.resumptions);
                let policy = self.policy.as_deref();
                self.table.tick(now, &mut |conn| {
                    json.send(record(&conn, clock, res, policy))
                });
            }
            if stopping {
                let (json, clock, res) = (&self.json, &self.clock, &mut self.resumptions);
                let policy = self.policy.as_deref();
                self.table
                    .flush(&mut |conn| json.send(record(&conn, clock, res, policy)));
                self.log_stats(&mut last_kernel, events, decode_errors, true);
                break;
            }
            if self.stats_interval_ns > 0
                && now.saturating_sub(last_stats) >= self.stats_interval_ns
            {
                last_stats = now;
                self.log_stats(&mut last_kernel, events, decode_errors, false);
            }
        }
        let Pipeline { probes, json, .. } = self;
        // Detach before the last records are flushed: nothing of ours stays attached
        // once `run` returns.
        drop(probes);
        json.finish();
    }

    fn log_stats(
        &self,
        last: &mut Vec<(Stat, u64)>,
        events: u64,
        decode_errors: u64,
        final_: bool,
    ) {
        let kernel = self.probes.stats();
        let get = |s: Stat| kernel.iter().find(|(k, _)| *k == s).map_or(0, |(_, v)| *v);
        let flows = self.table.stats();
        let lost = get(Stat::RingbufFull);
        let before = last
            .iter()
            .find(|(k, _)| *k == Stat::RingbufFull)
            .map_or(0, |(_, v)| *v);
        if lost > before {
            warn!(
                lost_events = lost,
                new = lost - before,
                "ring buffer was full: kernel events lost"
            );
        }
        let kernel_fields: Vec<String> = kernel
            .iter()
            .map(|(s, v)| format!("{}={v}", s.name()))
            .collect();
        info!(
            final_ = final_,
            events_received = events,
            decode_errors,
            connections_tracked = self.table.len(),
            connections_reported = flows.connections_emitted,
            orphan_events = flows.orphan_events,
            records_written = self.json.written(),
            records_dropped = self.json.dropped(),
            kernel = %kernel_fields.join(" "),
            "stats"
        );
        *last = kernel;
    }
}
