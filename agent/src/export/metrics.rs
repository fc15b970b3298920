//! Prometheus metrics: every name and label name lives here.
//!
//! Label names follow Istio's standard metrics (`source_workload`,
//! `destination_workload_namespace`, `connection_security_policy`, `reporter`, ...)
//! so existing queries and habits carry over. High-cardinality label values are
//! capped per label: past the cap a new value is reported as `~other` and the
//! overflow is counted.
//!
//! The connection and byte families are not updated per connection: observations
//! are summed per label set in [`Pending`] (one hash of the label values, no
//! allocation for a label set already pending) and applied to the Prometheus
//! families by [`Metrics::flush`], which the pipeline calls every tick and every
//! scrape calls before it reads. A busy node's thousands of connections per second
//! to a few destinations then cost a few family updates per tick. A label set seen
//! for the first time is exported at zero before it counts ([`super::new_series`]).

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
    sync::Mutex,
    time::Instant,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::new_series::{Admit, Births, Counts, Scrapers};
use crate::{
    classify::{Classification, ClientAuth},
    export::ConnectionRecord,
};

pub const PREFIX: &str = "mtls_auditor";

/// Labels of the connection and byte families, in order.
pub const CONNECTION_LABELS: [&str; 9] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_port",
    "connection_security_policy",
    "expected_security_policy",
    "verdict",
];

/// Reasons of `http_shed_total`.
pub const SHED_REASONS: [&str; 6] = [
    "idle_evicted",
    "refused",
    "header_timeout",
    "idle_timeout",
    "edges_busy",
    "body_too_large",
];

/// Labels of the failed-attempts family, in order.
pub const ATTEMPT_LABELS: [&str; 6] = [
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_port",
    "reason",
];

/// Value a capped label takes once its cap is reached.
pub const OVERFLOW: &str = "~other";

/// Caps the distinct values of each label.
struct LabelCaps {
    max: usize,
    seen: HashMap<&'static str, HashSet<String>>,
}

impl LabelCaps {
    fn cap<'a>(&mut self, label: &'static str, value: &'a str) -> (&'a str, bool) {
        let set = self.seen.entry(label).or_default();
        if set.contains(value) {
            return (value, false);
        }
        if set.len() >= self.max {
            return (OVERFLOW, true);
        }
        set.insert(value.to_owned());
        (value, false)
    }
}

/// The agent's metrics.
pub struct Metrics {
    pub registry: Registry,
    connections: IntCounterVec,
    bytes: IntCounterVec,
    hops: IntCounterVec,
    attempts: IntCounterVec,
    pub proxies: IntGauge,
    handshakes: IntCounterVec,
    pub events_received: IntCounter,
    pub events_lost: IntCounter,
    pub decode_errors: IntCounter,
    pub capture_truncations: IntCounter,
    pub captured_bytes: IntCounter,
    pub kernel_errors: IntCounterVec,
    pub flows_tracked: IntGauge,
    pub quiet_sockets: IntGauge,
    pub probes_attached: IntGauge,
    pub policy_reloads: IntCounterVec,
    pub policy_loaded: IntGauge,
    pub records_dropped: IntCounter,
    pub overlap_conflicts: IntCounter,
    pub events_emitted: IntCounter,
    pub events_suppressed: IntCounter,
    pub edges_overflow: IntCounter,
    pub label_overflow: IntCounterVec,
    pub ready: IntGauge,
    pub http_connections: IntGauge,
    pub http_shed: IntCounterVec,
    caps: Mutex<LabelCaps>,
    pending: Mutex<Pending>,
    births: Mutex<Births>,
    scrapers: Mutex<Scrapers>,
}

/// Connection and byte counts not yet applied to their families, by label set
/// (the [`CONNECTION_LABELS`] values, before capping).
#[derive(Default)]
struct Pending {
    /// Hash of the label values -> the label sets with that hash.
    rows: HashMap<u64, Vec<PendingRow>>,
}

struct PendingRow {
    labels: [String; 9],
    /// Observations summed here (each is one connection, or one connection's bytes).
    observations: u64,
    counts: Counts,
}

impl Pending {
    fn add(&mut self, labels: [&str; 9], connection: bool, bytes: Option<(u64, u64)>) {
        let hash = foldhash::fast::FixedState::default().hash_one(labels);
        let bucket = self.rows.entry(hash).or_default();
        let row = match bucket
            .iter_mut()
            .position(|r| r.labels.iter().zip(&labels).all(|(a, b)| a == b))
        {
            Some(i) => &mut bucket[i],
            None => {
                bucket.push(PendingRow {
                    labels: labels.map(str::to_owned),
                    observations: 0,
                    counts: Counts::default(),
                });
                bucket.last_mut().expect("just pushed")
            }
        };
        row.observations += 1;
        row.counts.add(Counts {
            connections: u64::from(connection),
            bytes,
        });
    }
}

type Made<T> = Result<T, prometheus::Error>;

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Made<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Made<IntCounter> {
    let c = IntCounter::new(format!("{PREFIX}_{name}"), help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Made<IntGauge> {
    let g = IntGauge::new(format!("{PREFIX}_{name}"), help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// `max_label_values`: distinct values kept per label before `~other`. Fails
    /// only on a name or label set Prometheus refuses (a bug caught by the tests).
    pub fn new(max_label_values: usize) -> Made<Self> {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}_build_info"),
                "Build information; always 1.",
            ),
            &["version", "rustc"],
        )?;
        r.register(Box::new(build.clone()))?;
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("MTLS_AUDITOR_RUSTC").unwrap_or("unknown"),
            ])
            .set(1);
        let m = Self {
            connections: counter_vec(
                &r,
                "connections_total",
                "TCP connections seen, by reporter, workloads, destination port, observed and expected security and verdict.",
                &CONNECTION_LABELS,
            )?,
            bytes: counter_vec(
                &r,
                "bytes_total",
                "Payload bytes of finished connections, by the same labels and direction (client_to_server, server_to_client).",
                &[&CONNECTION_LABELS[..], &["direction"]].concat(),
            )?,
            hops: counter_vec(
                &r,
                "connection_hops_total",
                "Connection records by their hop on the mesh's data path (direct, app_to_proxy, proxy_upstream, proxy_inbound, proxy_to_app); connections_total counts each logical connection once per reporter.",
                &["hop"],
            )?,
            attempts: counter_vec(
                &r,
                "connection_attempts_failed_total",
                "connect()s that never established, by source, destination (where the socket connected to, before any NAT) and reason: refused (a RST answered the SYN: nothing listens there, or a firewall rejects) or unanswered (no answer before the caller gave up or the SYN retries ran out). A port scan shows here. Workloads, namespaces and ports are capped like connections_total's.",
                &ATTEMPT_LABELS,
            )?,
            proxies: gauge(
                &r,
                "mesh_proxies",
                "Processes seen intercepting connections (SO_ORIGINAL_DST) and still remembered.",
            )?,
            handshakes: counter_vec(
                &r,
                "tls_handshakes_total",
                "TLS handshakes, by negotiated version, client authentication and mesh marker.",
                &["tls_version", "client_auth", "mesh"],
            )?,
            events_received: counter(
                &r,
                "events_received_total",
                "Ring-buffer events read from the kernel.",
            )?,
            events_lost: counter(
                &r,
                "events_lost_total",
                "Kernel events lost because the ring buffer was full.",
            )?,
            decode_errors: counter(
                &r,
                "event_decode_errors_total",
                "Ring-buffer records that did not decode.",
            )?,
            capture_truncations: counter(
                &r,
                "capture_truncations_total",
                "Segments cut at the capture budget or chunk size.",
            )?,
            captured_bytes: counter(
                &r,
                "captured_bytes_total",
                "Payload bytes sent up by the kernel.",
            )?,
            kernel_errors: counter_vec(
                &r,
                "kernel_errors_total",
                "Failures counted by the kernel programs, by kind.",
                &["kind"],
            )?,
            flows_tracked: gauge(&r, "flows_tracked", "Connections currently tracked.")?,
            quiet_sockets: gauge(
                &r,
                "quiet_sockets",
                "Established sockets that have carried no payload yet: held in kernel socket storage, announced to the agent when they first speak or close.",
            )?,
            probes_attached: gauge(&r, "probes_attached", "Kernel programs attached.")?,
            policy_reloads: counter_vec(
                &r,
                "policy_reloads_total",
                "Policy reloads, by result (ok, error).",
                &["result"],
            )?,
            policy_loaded: gauge(&r, "policy_loaded", "1 when a policy is in force.")?,
            records_dropped: counter(
                &r,
                "records_dropped_total",
                "Connection records and events dropped because their writer could not keep up.",
            )?,
            overlap_conflicts: counter(
                &r,
                "tcp_overlap_conflicts_total",
                "Overlapping TCP segments whose bytes differed (an evasion attempt or a broken stack); the receiver's copy is the one classified.",
            )?,
            events_emitted: counter(&r, "verdict_events_total", "Verdict events written.")?,
            events_suppressed: counter(
                &r,
                "verdict_events_suppressed_total",
                "Verdict events suppressed by the per-workload rate limit.",
            )?,
            edges_overflow: counter(
                &r,
                "edges_overflow_total",
                "Connections folded into the edges view's ~other rows: those of edges evicted, least recently seen first, from a view full at --max-edges.",
            )?,
            label_overflow: counter_vec(
                &r,
                "label_overflow_total",
                "Label values folded into ~other because the label reached its cap.",
                &["label"],
            )?,
            ready: gauge(
                &r,
                "ready",
                "1 once the probes are attached, the policy loaded and, in a cluster, the first lists of pods and Istio policy are in.",
            )?,
            http_connections: gauge(
                &r,
                "http_connections",
                "Connections open to the HTTP listener (at most --http-max-connections).",
            )?,
            http_shed: counter_vec(
                &r,
                "http_shed_total",
                "HTTP connections closed or requests refused to keep the listener answering, by reason: idle_evicted (an idle connection closed to admit a new one at --http-max-connections), refused (a new connection closed: every slot busy), header_timeout, idle_timeout, edges_busy (an edges request answered 503), body_too_large.",
                &["reason"],
            )?,
            caps: Mutex::new(LabelCaps {
                max: max_label_values.max(1),
                seen: HashMap::new(),
            }),
            pending: Mutex::new(Pending::default()),
            births: Mutex::new(Births::default()),
            scrapers: Mutex::new(Scrapers::default()),
            registry: r,
        };
        // Series that exist from the start, at zero, so dashboards and alerts see them.
        for kind in [
            "storage_failed",
            "load_failed",
            "header_unparsed",
            "cb_flags_failed",
            "no_base",
            "map_update_failed",
        ] {
            m.kernel_errors.with_label_values(&[kind]).inc_by(0);
        }
        for result in ["ok", "error"] {
            m.policy_reloads.with_label_values(&[result]).inc_by(0);
        }
        for reason in SHED_REASONS {
            m.http_shed.with_label_values(&[reason]).inc_by(0);
        }
        for hop in crate::hops::Hop::ALL {
            m.hops.with_label_values(&[hop.as_str()]).inc_by(0);
        }
        Ok(m)
    }

    /// Counts a finished connection: once per reporter that counts it (Istio's
    /// `reporter`: the ends this node saw, each logical connection of the mesh's
    /// data path once, see [`crate::hops::Hop::reporters`]), plus its bytes and its
    /// TLS handshake.
    pub fn observe(&self, rec: &ConnectionRecord) {
        self.observe_parts(rec, true, true);
    }

    /// Counts a connection that is still open but whose class is settled: its
    /// connection and handshake now, its bytes when it finishes
    /// ([`Metrics::observe_bytes`]). Long-lived connections (pooled proxy
    /// connections, database pools) are then counted when they are known, not
    /// hours later when they close.
    pub fn observe_open(&self, rec: &ConnectionRecord) {
        self.observe_parts(rec, true, false);
    }

    /// The bytes of a finished connection already counted by [`Metrics::observe_open`].
    pub fn observe_bytes(&self, rec: &ConnectionRecord) {
        self.observe_parts(rec, false, true);
    }

    fn observe_parts(&self, rec: &ConnectionRecord, connection: bool, bytes: bool) {
        if connection {
            self.hops.with_label_values(&[rec.hop.as_str()]).inc();
            // An app_to_proxy record borrows its upstream's handshake: counted there.
            if rec.hop != crate::hops::Hop::AppToProxy {
                self.observe_handshake(&rec.classification);
            }
        }
        self.observe_reporters(rec, connection, bytes);
    }

    fn observe_reporters(&self, rec: &ConnectionRecord, connection: bool, bytes: bool) {
        let cls: &Classification = &rec.classification;
        let super::Judged {
            source_workload: sw,
            source_namespace: sns,
            destination_workload: dw,
            destination_namespace: dns,
            expected,
            verdict,
        } = rec.judged();
        let port = rec.server.port.to_string();
        let counted = rec.reporters();
        let mut reporters = Vec::with_capacity(2);
        if counted.source {
            reporters.push("source");
        }
        if counted.destination {
            reporters.push("destination");
        }
        if reporters.is_empty() {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let bytes = bytes.then(|| {
            (
                rec.bytes_client_to_server.unwrap_or(0),
                rec.bytes_server_to_client.unwrap_or(0),
            )
        });
        for reporter in reporters {
            pending.add(
                [
                    reporter,
                    sw,
                    sns,
                    dw,
                    dns,
                    port.as_str(),
                    cls.connection_security_policy.as_str(),
                    expected,
                    verdict,
                ],
                connection,
                bytes,
            );
        }
    }

    /// Counts failed connection attempts, given as label values in
    /// [`ATTEMPT_LABELS`] order with their counts.
    pub fn observe_attempts<'a>(&self, rows: impl IntoIterator<Item = ([&'a str; 6], u64)>) {
        let Ok(mut caps) = self.caps.lock() else {
            return;
        };
        for (mut labels, n) in rows {
            for (i, value) in labels.iter_mut().enumerate().take(5) {
                let label = ATTEMPT_LABELS[i];
                let (v, overflow) = caps.cap(label, value);
                if overflow {
                    self.label_overflow.with_label_values(&[label]).inc_by(n);
                }
                *value = v;
            }
            self.attempts.with_label_values(&labels).inc_by(n);
        }
    }

    /// Applies the pending connection and byte counts to their families, capping
    /// each label's distinct values on the way.
    pub fn flush(&self) {
        self.flush_at(Instant::now());
    }

    fn flush_at(&self, now: Instant) {
        let rows = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut p.rows),
            Err(_) => return,
        };
        let hold = self
            .scrapers
            .lock()
            .map_or(std::time::Duration::ZERO, |s| s.hold(now));
        let (Ok(mut caps), Ok(mut births)) = (self.caps.lock(), self.births.lock()) else {
            return;
        };
        for row in rows.into_values().flatten() {
            let mut labels: [&str; 9] = std::array::from_fn(|i| row.labels[i].as_str());
            // source/destination workload, namespaces and port are capped.
            for (i, value) in labels.iter_mut().enumerate().take(6).skip(1) {
                let label = CONNECTION_LABELS[i];
                let (v, overflow) = caps.cap(label, value);
                if overflow {
                    self.label_overflow
                        .with_label_values(&[label])
                        .inc_by(row.observations);
                }
                *value = v;
            }
            let hash = foldhash::fast::FixedState::default().hash_one(labels);
            match births.admit(hash, &labels, row.counts, hold, now) {
                Admit::Apply => self.apply(&labels, row.counts, false),
                Admit::ExportZero => self.apply(&labels, row.counts, true),
                Admit::Withheld => {}
            }
        }
        for (labels, counts) in births.take_due(hold, now) {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.apply(&labels, counts, false);
        }
    }

    /// Adds `counts` to the series of `labels` (the [`CONNECTION_LABELS`] values),
    /// or only creates those series, at zero, when `zero`.
    fn apply(&self, labels: &[&str], counts: Counts, zero: bool) {
        let n = |v: u64| if zero { 0 } else { v };
        if counts.connections > 0 {
            self.connections
                .with_label_values(labels)
                .inc_by(n(counts.connections));
        }
        if let Some((c2s, s2c)) = counts.bytes {
            let mut with_dir = [""; 10];
            with_dir[..9].copy_from_slice(labels);
            with_dir[9] = "client_to_server";
            self.bytes.with_label_values(&with_dir).inc_by(n(c2s));
            with_dir[9] = "server_to_client";
            self.bytes.with_label_values(&with_dir).inc_by(n(s2c));
        }
    }

    /// Notes a scrape by `scraper` (a hash of its address and user agent).
    pub fn scraped_by(&self, scraper: u64) {
        if let Ok(mut s) = self.scrapers.lock() {
            s.scraped(scraper, Instant::now());
        }
    }

    fn observe_handshake(&self, cls: &Classification) {
        if let Some(tls) = &cls.tls {
            let auth = match tls.client_auth {
                ClientAuth::Certificate => "certificate",
                ClientAuth::EmptyCertificate => "empty_certificate",
                ClientAuth::None => "none",
                ClientAuth::Resumed => "resumed",
                ClientAuth::Unknown => "unknown",
            };
            let mesh = match cls.mesh {
                Some(crate::classify::MeshMarker::IstioSidecar) => "istio_sidecar",
                Some(crate::classify::MeshMarker::IstioHbone) => "istio_hbone",
                Some(crate::classify::MeshMarker::Linkerd) => "linkerd",
                None => "none",
            };
            self.handshakes
                .with_label_values(&[tls_version_label(tls.version.as_deref()), auth, mesh])
                .inc();
        }
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn prometheus_text(&self) -> String {
        self.flush();
        super::exposition::text(&self.registry)
    }

    /// The OpenMetrics text format (1.0.0).
    pub fn openmetrics_text(&self) -> String {
        self.flush();
        super::exposition::openmetrics(&self.registry)
    }
}

/// The `tls_version` label: the known versions, or `other` for any value off the
/// wire (one label value, not 65,536).
fn tls_version_label(v: Option<&str>) -> &str {
    match v {
        Some(v @ ("1.3" | "1.2" | "1.1" | "1.0" | "ssl3")) => v,
        Some(_) => "other",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_past_the_cap_fold_into_other() {
        let mut caps = LabelCaps {
            max: 2,
            seen: HashMap::new(),
        };
        assert_eq!(caps.cap("source_workload", "a"), ("a", false));
        assert_eq!(caps.cap("source_workload", "b"), ("b", false));
        assert_eq!(caps.cap("source_workload", "a"), ("a", false));
        assert_eq!(caps.cap("source_workload", "c"), (OVERFLOW, true));
        // Each label has its own cap.
        assert_eq!(caps.cap("destination_port", "8080"), ("8080", false));
    }

    #[test]
    fn a_new_label_set_is_exported_at_zero_before_it_counts() {
        let m = Metrics::new(10).expect("the metrics register");
        let edge = |port| {
            [
                "destination",
                "example-service-b",
                "default",
                "example-service-a",
                "default",
                port,
                "none",
                "mutual_tls",
                "violation",
            ]
        };
        let value = |port: &str| -> Option<u64> {
            let text = crate::export::exposition::text(&m.registry);
            text.lines()
                .find(|l| {
                    l.starts_with("mtls_auditor_connections_total{")
                        && l.contains(&format!("destination_port=\"{port}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        let observe = |port| {
            m.pending
                .lock()
                .expect("lock")
                .add(edge(port), true, Some((10, 20)));
        };
        // Nobody has scraped twice: nobody can miss a zero, the count applies now.
        let t0 = Instant::now();
        observe("9090");
        m.flush_at(t0);
        assert_eq!(value("9090"), Some(1));
        // Prometheus scrapes once a second: a new edge shows 0 for one interval
        // (and a little), then its count.
        let sec = std::time::Duration::from_secs(1);
        m.scrapers.lock().expect("lock").scraped(1, t0);
        m.scrapers.lock().expect("lock").scraped(1, t0 + sec);
        observe("9091");
        m.flush_at(t0 + sec);
        assert_eq!(value("9091"), Some(0));
        observe("9091");
        m.flush_at(t0 + 2 * sec);
        assert_eq!(value("9091"), Some(0));
        m.flush_at(t0 + 3 * sec);
        assert_eq!(value("9091"), Some(2));
        // A label set already exported counts at once.
        observe("9090");
        m.flush_at(t0 + 3 * sec);
        assert_eq!(value("9090"), Some(2));
        let bytes = crate::export::exposition::text(&m.registry);
        assert!(
            bytes
                .lines()
                .any(|l| l.starts_with("mtls_auditor_bytes_total{")
                    && l.contains("destination_port=\"9091\"")
                    && l.contains("server_to_client")
                    && l.ends_with(" 40")),
            "{bytes}"
        );
    }

    #[test]
    fn both_formats_carry_every_family() {
        let m = Metrics::new(10).expect("the metrics register");
        m.events_received.inc_by(3);
        let text = m.prometheus_text();
        assert!(text.contains("# TYPE mtls_auditor_events_received_total counter"));
        assert!(text.contains("mtls_auditor_events_received_total 3"));
        let om = m.openmetrics_text();
        assert!(om.contains("# TYPE mtls_auditor_events_received counter"));
        assert!(om.contains("mtls_auditor_events_received_total 3"));
        assert!(om.contains("mtls_auditor_kernel_errors_total{kind=\"load_failed\"} 0"));
        assert!(om.ends_with("# EOF\n"));
    }
}
