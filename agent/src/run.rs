//! `mtls-auditor run`: the live pipeline.
//!
//! One thread owns the ring buffer and the flow table: it drains the ring in
//! batches (woken by the kernel past a fill watermark, otherwise every
//! `poll_ms`), feeds the flow table, classifies and judges finished connections,
//! counts them in the metrics and the edges view, hands records and verdict events
//! to their writers (never waiting for them) and gives decided sockets back to the
//! kernel. The async runtime serves the HTTP listener and waits for signals:
//! SIGINT/SIGTERM stop, SIGHUP reloads the policy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
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
    classify::Resumptions,
    cli::{OutputFormat, RunArgs},
    clock::Clock,
    export::{
        self, ExportError, Format, JsonLines, Output, Writer,
        edges::Edges,
        events::{Decision, EventPolicy, VerdictEvent},
        http::{self, Shared},
        metrics::Metrics,
    },
    flows::{Connection, FlowConfig, FlowTable},
    hops::{BuiltinExemptions, Hop, Hops, HopsConfig, TUNNEL_PORTS},
    kube::{ClusterState, SharedState},
    policy::{PolicySet, watch},
    probes::{ProbeConfig, ProbeError, Probes},
    record::Stages,
};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
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
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    #[error(
        "--output - and --events - would interleave on stdout: send one of them to a file (or --output off)"
    )]
    BothOnStdout,
    #[error("registering the metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("--disable-exemption: {0}")]
    Exemption(String),
}

fn output_of(path: Option<std::path::PathBuf>) -> Output {
    match path {
        Some(p) if p.as_os_str() == "off" => Output::Off,
        Some(p) => Output::File(p),
        None => Output::Stdout,
    }
}

/// Returns the heap that a burst of connections left free to the system: glibc
/// keeps freed memory in its arenas otherwise, and the agent's RSS would stay at
/// the burst's peak (under a DaemonSet's memory limit).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into())
}

/// Runs until SIGINT/SIGTERM. Returns after everything is detached.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    // What would stop the agent later is reported before anything starts: first a
    // missing privilege, then the settings.
    crate::probes::check_privileges()?;
    if args.output == "-" && args.events.as_deref() == Some("-") {
        return Err(RunError::BothOnStdout);
    }
    let builtin =
        BuiltinExemptions::with_disabled(&args.disable_exemption).map_err(RunError::Exemption)?;
    let mut kube_client = None;
    let listen: Option<SocketAddr> = if args.listen.is_empty() || args.listen == "off" {
        None
    } else {
        Some(args.listen.parse().map_err(|e| RunError::Listen {
            addr: args.listen.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?)
    };

    let _instance = crate::instance::acquire(args.instance_lock.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;

    // Kubernetes, when there is one.
    let cluster: Option<SharedState> = match crate::kube::detect(args.kubeconfig.as_deref()) {
        Some(source) => {
            let client = rt.block_on(crate::kube::client(&source))?;
            let node = args.node_name.clone().unwrap_or_else(hostname);
            let mut state = ClusterState::new(&node);
            state.cluster_domain.clone_from(&args.cluster_domain);
            info!(
                ?source,
                node = %node,
                pods = if args.remote_pods { "all" } else { "this node's" },
                "Kubernetes mode: watching pods, Services, EndpointSlices and Istio policy"
            );
            Some((Arc::new(RwLock::new(state)), client))
        }
        None => None,
    }
    .map(|(state, client)| {
        kube_client = Some(client);
        state
    });

    // Policy first: a bad file is fatal before anything is attached.
    let (policy_tx, policy_rx) = std::sync::mpsc::channel::<Arc<PolicySet>>();
    let reload_stats = Arc::new(watch::ReloadStats::default());
    let (policy, reload) = if args.policy.is_empty() && cluster.is_none() {
        (None, None)
    } else {
        let set = watch::load_set(&args.policy, &args.root_namespace, cluster.as_ref())
            .map_err(RunError::Policy)?;
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
            cluster.clone(),
            policy_tx,
            Arc::clone(&reload_stats),
        );
        (Some(Arc::new(set)), Some(reload))
    };
    if let (Some(state), Some(client), Some(reload)) = (&cluster, kube_client.take(), &reload) {
        let _enter = rt.enter();
        let node = state
            .read()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        let scope = if args.remote_pods {
            crate::kube::PodScope::Cluster
        } else {
            crate::kube::PodScope::Node
        };
        crate::kube::spawn(client, Arc::clone(state), &node, scope, reload.clone());
    }

    let shared = Arc::new(Shared {
        metrics: Metrics::new(args.max_label_values).map_err(RunError::Metrics)?,
        edges: Mutex::new(Edges::new(args.max_edges)),
        ready: AtomicBool::new(false),
        cluster: cluster.clone(),
        policy_synced: AtomicBool::new(policy.as_ref().is_some_and(|p| p.cluster_synced)),
    });
    shared
        .metrics
        .policy_loaded
        .set(i64::from(policy.is_some()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    // Bind before attaching: a busy address is an error at start.
    let server = match listen {
        Some(addr) => Some(
            rt.block_on(http::bind(addr, Arc::clone(&shared), args))
                .map_err(|source| RunError::Listen {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };

    let cfg = ProbeConfig {
        capture_budget: args.capture_budget,
        ring_bytes: args.ring_bytes,
        // Wake the reader early enough that a burst between two polls cannot fill
        // the ring, whatever its size.
        wakeup_bytes: u64::from(args.ring_bytes / 16),
        cgroup_root: args.cgroup_root.clone(),
    };
    let mut probes = Probes::load(&cfg)?;
    let ring = probes.take_events()?;
    // Loading parsed the kernel's BTF (megabytes of types), freed by now: give
    // that heap back rather than carry it as baseline RSS.
    trim_heap();
    shared
        .metrics
        .probes_attached
        .set(probes.attached().len() as i64);
    let format = match args.format {
        OutputFormat::Json => Format::Json,
        OutputFormat::Table => Format::Table,
    };
    let records = export::records_writer(&output_of(args.output_path()), format, 8_192)?;
    let events = match &args.events {
        Some(p) => Some(Writer::start(
            &output_of((p != "-").then(|| p.into())),
            None,
            export::write_json::<VerdictEvent>,
            8_192,
            "events",
        )?),
        None => None,
    };
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
        reload_stats,
        resumptions: Resumptions::default(),
        probes,
        ring,
        table,
        hops: Hops::new(HopsConfig::default()),
        builtin,
        table_format: format == Format::Table,
        records,
        events,
        event_policy: EventPolicy::new(args.events_all, args.events_rate, args.events_burst),
        shared: Arc::clone(&shared),
        clock: Clock::new(),
        poll: Duration::from_millis(args.poll_ms.max(1)),
        stats_interval_ns: args.stats_interval_s.saturating_mul(1_000_000_000),
        shutdown: Arc::clone(&shutdown),
        count_later: Vec::new(),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            pipeline.run();
            let _ = done_tx.send(());
        })
        .map_err(RunError::Thread)?;
    shared.ready.store(true, Ordering::Relaxed);
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    match listen {
        Some(addr) => {
            info!(listen = %addr, "ready: reporting connections; metrics on http://{addr}/metrics; SIGINT or SIGTERM stops")
        }
        None => info!("ready: reporting connections; SIGINT or SIGTERM stops"),
    }

    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |kind, name| signal(kind).map_err(|source| RunError::Signal { signal: name, source });
        let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
        let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
        let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
        if let Some(server) = server {
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    warn!(error = %e, "HTTP listener stopped");
                }
            });
        }
        let mut done_rx = done_rx;
        loop {
            tokio::select! {
                _ = int.recv() => { info!(signal = "SIGINT", "stopping"); break; }
                _ = term.recv() => { info!(signal = "SIGTERM", "stopping"); break; }
                _ = hup.recv() => match &reload {
                    Some(r) => { info!(signal = "SIGHUP", "reloading policy"); let _ = r.send(watch::Trigger::Signal); }
                    None => info!(signal = "SIGHUP", "no policy files to reload"),
                },
                _ = &mut done_rx => { warn!("pipeline stopped on its own"); break; }
            }
        }
        Ok::<(), RunError>(())
    })?;
    shared.ready.store(false, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    worker.join().map_err(|_| RunError::Panicked)?;
    rt.shutdown_timeout(Duration::from_secs(1));
    info!("stopped; probes detached");
    Ok(())
}

struct Pipeline {
    policy: Option<Arc<PolicySet>>,
    policy_rx: Receiver<Arc<PolicySet>>,
    reload_stats: Arc<watch::ReloadStats>,
    resumptions: Resumptions,
    probes: Probes,
    ring: RingBuf<MapData>,
    table: FlowTable,
    /// The mesh's data path: which connection is which hop.
    hops: Hops,
    builtin: BuiltinExemptions,
    /// People read the table: it shows the connections that count, not every hop.
    table_format: bool,
    records: JsonLines,
    events: Option<Writer<VerdictEvent>>,
    event_policy: EventPolicy,
    shared: Arc<Shared>,
    clock: Clock,
    poll: Duration,
    stats_interval_ns: u64,
    shutdown: Arc<AtomicBool>,
    /// Settled connections with one end so far, younger than the linger: counted
    /// once their other end is announced or the linger is over (a socket is
    /// announced when it first speaks, so a local peer's end can trail by
    /// microseconds; counting without it would leave out its reporter for good).
    count_later: Vec<u64>,
}

const TICK_NS: u64 = 100_000_000;

/// Counters of the previous tick, to feed deltas into Prometheus counters.
#[derive(Default)]
struct Last {
    kernel: Vec<(Stat, u64)>,
    reloads_ok: u64,
    reloads_failed: u64,
    dropped: u64,
    overlaps: u64,
}

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
        let mut last = Last::default();
        loop {
            let stopping = self.shutdown.load(Ordering::Relaxed);
            if !stopping {
                // SAFETY: poll on one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, timeout) };
            }
            let mut batch = 0u64;
            while let Some(item) = self.ring.next() {
                batch += 1;
                match capture::decode(&item) {
                    Ok(event) => {
                        let (first, then) = event.split();
                        for event in std::iter::once(first).chain(then) {
                            self.hops.on_event(&event);
                            self.table.on_event(event);
                        }
                    }
                    Err(err) => {
                        decode_errors += 1;
                        self.shared.metrics.decode_errors.inc();
                        if decode_errors.is_power_of_two() {
                            warn!(error = %err, total = decode_errors, "undecodable ring buffer record");
                        }
                    }
                }
            }
            events += batch;
            self.shared.metrics.events_received.inc_by(batch);
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
                    if p.cluster_synced {
                        self.shared.policy_synced.store(true, Ordering::Relaxed);
                    }
                    self.policy = Some(p);
                }
                self.table.settle(&mut |conn| {
                    let cls = conn.classify();
                    cls.is_settled().then_some(cls)
                });
                // What is settled is counted now, not when it closes.
                let mut settled = self.table.take_newly_settled();
                settled.append(&mut self.count_later);
                for cookie in settled {
                    let Some(conn) = self.table.connection_of(cookie) else {
                        continue; // finished: counted as it was emitted
                    };
                    if conn.counted {
                        continue;
                    }
                    if !conn.both_ends()
                        && now.saturating_sub(conn.first_ns) < self.table.linger_ns()
                    {
                        self.count_later.push(cookie);
                        continue;
                    }
                    let record = Stages {
                        resumptions: &mut self.resumptions,
                        hops: &self.hops,
                        table: &self.table,
                        policy: self.policy.as_deref(),
                        builtin: &self.builtin,
                        clock: &self.clock,
                    }
                    .record(conn);
                    self.shared.metrics.observe_open(&record);
                    self.table.mark_counted(cookie);
                }
                let mut finished = Vec::new();
                if stopping {
                    self.table.flush(&mut |conn| finished.push(conn));
                } else {
                    self.table.tick(now, &mut |conn| finished.push(conn));
                }
                // Tunnels first, then a proxy's other connections, then the rest:
                // a delivery out of a tunnel, or an app connection, that finished
                // in the same tick is linked to its tunnel (or upstream) by what
                // `finish` remembers of it.
                // (Ranked by index: a connection is large, and moving it costs more
                // than the rest of its record.)
                let rank = |conn: &Connection| -> u8 {
                    if TUNNEL_PORTS.contains(&conn.server.port()) {
                        0
                    } else if conn
                        .client_end
                        .as_ref()
                        .is_some_and(|e| self.hops.proxy_of(e).is_some())
                    {
                        1
                    } else {
                        2
                    }
                };
                let ranks: Vec<u8> = finished.iter().map(rank).collect();
                for pass in 0..3 {
                    for (conn, _) in finished.iter().zip(&ranks).filter(|(_, r)| **r == pass) {
                        self.finish(conn, now);
                    }
                }
                self.table.recycle(finished);
                self.count_attempts();
                if self.table.shrink() {
                    trim_heap();
                }
                self.shared.metrics.flush();
                self.update_gauges(&mut last);
            }
            if stopping {
                self.log_stats(events, decode_errors, true);
                break;
            }
            if self.stats_interval_ns > 0
                && now.saturating_sub(last_stats) >= self.stats_interval_ns
            {
                last_stats = now;
                self.log_stats(events, decode_errors, false);
            }
        }
        let Pipeline {
            probes,
            records,
            events,
            ..
        } = self;
        // Detach before the last records are flushed: nothing of ours stays attached
        // once `run` returns.
        drop(probes);
        records.finish();
        if let Some(e) = events {
            e.finish();
        }
    }

    fn stages(&mut self) -> Stages<'_> {
        Stages {
            resumptions: &mut self.resumptions,
            hops: &self.hops,
            table: &self.table,
            policy: self.policy.as_deref(),
            builtin: &self.builtin,
            clock: &self.clock,
        }
    }

    /// The connection attempts that failed since the last tick, counted by source,
    /// destination and reason (summed first: a port scan is thousands per tick).
    fn count_attempts(&mut self) {
        let attempts = self.table.take_attempts();
        if attempts.is_empty() {
            return;
        }
        let inventory = self.policy.as_deref().map(|p| &p.inventory);
        let mut sums: HashMap<[String; 6], u64> = HashMap::new();
        let (mut refused, mut unanswered) = (0u64, 0u64);
        for a in &attempts {
            let source = inventory.and_then(|inv| {
                inv.workload_of(&crate::inventory::EndFacts {
                    cgroup: a.cgroup.as_deref(),
                    netns_cookie: (a.netns_cookie != 0).then_some(a.netns_cookie),
                    addr: a.client.ip(),
                    comm: a.process.as_ref().map(|p| &*p.comm),
                })
            });
            let destination = inventory.and_then(|inv| {
                inv.workload_by_addr(a.server.ip())
                    .map(|w| (w.name, w.namespace))
                    .or_else(|| {
                        inv.services_for(a.server.ip(), a.server.port())
                            .into_iter()
                            .next()
                            .map(|s| (s.name, s.namespace))
                    })
            });
            let unknown = || ("unknown".to_owned(), "unknown".to_owned());
            let (sw, sns) = source.map_or_else(unknown, |w| (w.name, w.namespace));
            let (dw, dns) = destination.unwrap_or_else(unknown);
            let reason = if a.refused {
                refused += 1;
                "refused"
            } else {
                unanswered += 1;
                "unanswered"
            };
            *sums
                .entry([
                    sw,
                    sns,
                    dw,
                    dns,
                    a.server.port().to_string(),
                    reason.to_owned(),
                ])
                .or_default() += 1;
        }
        debug!(
            refused,
            unanswered, "connection attempts that never established"
        );
        self.shared.metrics.observe_attempts(
            sums.iter()
                .map(|(k, n)| (std::array::from_fn(|i| k[i].as_str()), *n)),
        );
    }

    /// Makes the record of a finished connection and hands it to every consumer.
    fn finish(&mut self, conn: &Connection, now: u64) {
        // A mark the kernel has not consumed (nothing more was sent within the
        // budget) would hold a slot of the LRU map: cleared, one syscall, only
        // for the ends that were marked (most short connections close before
        // they settle, and were not).
        for end in conn.ends().filter(|e| e.marked_decided) {
            self.probes.clear_decided(end.cookie);
        }
        let record = self.stages().record(conn);
        if matches!(record.hop, Hop::ProxyUpstream | Hop::ProxyTunnel) {
            self.hops.upstream_finished(conn, &record.classification);
        }
        if record.hop == Hop::ProxyTunnel {
            self.hops.tunnel_finished(conn, &record.classification);
        } else {
            self.hops.not_a_tunnel(conn);
        }
        if conn.counted {
            self.shared.metrics.observe_bytes(&record);
        } else {
            self.shared.metrics.observe(&record);
        }
        let counted = record.reporters().any();
        if counted && let Ok(mut e) = self.shared.edges.lock() {
            self.shared.metrics.edges_overflow.inc_by(e.record(&record));
        }
        if !record.raises_events() {
            if counted || !self.table_format {
                self.records.send(record);
            }
            return;
        }
        if let Some(w) = &self.events {
            match self.event_policy.decide(&record, now) {
                Decision::Emit(suppressed) => {
                    if let Some(ev) = VerdictEvent::new(&record, suppressed) {
                        self.shared.metrics.events_emitted.inc();
                        w.send(ev);
                    }
                }
                Decision::Suppressed => self.shared.metrics.events_suppressed.inc(),
                Decision::Skip => {}
            }
        }
        self.records.send(record);
    }

    /// Kernel counters, flow count, reloads and drops into the metrics.
    fn update_gauges(&self, last: &mut Last) {
        let m = &self.shared.metrics;
        let kernel = self.probes.stats();
        let prev = |s: Stat| {
            last.kernel
                .iter()
                .find(|(k, _)| *k == s)
                .map_or(0, |(_, v)| *v)
        };
        for &(s, v) in &kernel {
            let d = v.saturating_sub(prev(s));
            if d == 0 {
                continue;
            }
            match s {
                Stat::RingbufFull => {
                    m.events_lost.inc_by(d);
                    warn!(
                        lost_events = v,
                        new = d,
                        "ring buffer was full: kernel events lost"
                    );
                }
                Stat::TruncatedPackets => m.capture_truncations.inc_by(d),
                Stat::CapturedBytes => m.captured_bytes.inc_by(d),
                Stat::StorageFailed
                | Stat::LoadFailed
                | Stat::HeaderUnparsed
                | Stat::CbFlagsFailed
                | Stat::NoBase
                | Stat::MapUpdateFailed => {
                    m.kernel_errors.with_label_values(&[s.name()]).inc_by(d);
                }
                _ => {}
            }
        }
        let count = |s: Stat| kernel.iter().find(|(k, _)| *k == s).map_or(0, |(_, v)| *v);
        let quiet = count(Stat::AnnounceDeferred).saturating_sub(count(Stat::AnnounceMade));
        last.kernel = kernel;
        m.flows_tracked.set(self.table.len() as i64);
        m.quiet_sockets
            .set(i64::try_from(quiet).unwrap_or(i64::MAX));
        m.proxies.set(self.hops.proxies() as i64);
        m.ready.set(i64::from(self.shared.is_ready()));
        let ok = self.reload_stats.ok.load(Ordering::Relaxed);
        let failed = self.reload_stats.failed.load(Ordering::Relaxed);
        m.policy_reloads
            .with_label_values(&["ok"])
            .inc_by(ok - last.reloads_ok);
        m.policy_reloads
            .with_label_values(&["error"])
            .inc_by(failed - last.reloads_failed);
        (last.reloads_ok, last.reloads_failed) = (ok, failed);
        let dropped = self.records.dropped() + self.events.as_ref().map_or(0, Writer::dropped);
        m.records_dropped.inc_by(dropped - last.dropped);
        last.dropped = dropped;
        let overlaps = self.table.stats().overlap_conflicts;
        m.overlap_conflicts
            .inc_by(overlaps.saturating_sub(last.overlaps));
        last.overlaps = overlaps;
    }

    fn log_stats(&self, events: u64, decode_errors: u64, final_: bool) {
        let kernel = self.probes.stats();
        let flows = self.table.stats();
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
            records_written = self.records.written(),
            records_dropped = self.records.dropped(),
            kernel = %kernel_fields.join(" "),
            "stats"
        );
    }
}
