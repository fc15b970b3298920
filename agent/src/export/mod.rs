//! Everything that leaves the agent: connection records (JSON lines or a table),
//! verdict events, Prometheus metrics, the edges view and the HTTP listener.
//!
//! Record writers run on their own thread behind a bounded channel: the pipeline
//! never waits for them. When a channel is full a record is dropped and counted.

pub mod edges;
pub mod events;
mod exposition;
pub mod http;
pub mod metrics;
mod new_series;

use std::{
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
};

use serde::Serialize;
use thiserror::Error;
use tracing::warn;

use crate::{
    classify::{Classification, Protocol},
    clock::Clock,
    flows::{Connection, End, Role},
    hops::{Hop, HopFacts, Interceptor, Reporters},
    verdict::Assessment,
};

/// Version of the connection record schema.
pub const CONNECTION_SCHEMA: &str = "mtls-auditor.connection/v1";

/// One finished connection, as written to the JSON lines output.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub schema: &'static str,
    /// When the first end was seen (RFC 3339).
    pub start: String,
    /// When the last end closed, or when the agent stopped watching.
    pub end: String,
    pub duration_ms: f64,
    /// `local`: both ends on this node; `outbound`: only the client end is here;
    /// `inbound`: only the server end is here. For an `app_to_proxy` hop the
    /// destination is where the app was going, not the proxy: `outbound`.
    pub direction: Direction,
    /// What this connection is on the mesh's data path (`direct`, `app_to_proxy`,
    /// `proxy_upstream`, `proxy_inbound`, `proxy_to_app`; see docs/mesh.md).
    pub hop: Hop,
    pub client: Endpoint,
    /// For an intercepted connection: the original destination (where the client
    /// meant to go), with `local` the destination's socket when it is on this
    /// node; the proxy that accepted it is `interceptor`.
    pub server: Endpoint,
    /// The proxy that accepted this connection (its socket, listener, process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interceptor: Option<Interceptor>,
    /// For `app_to_proxy`: the proxy's upstream connection whose bytes decided
    /// the class of this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRecord>,
    /// For `app_to_proxy`: the protocol the app itself spoke to its proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<Protocol>,
    /// For `proxy_to_app`: the client of the intercepted connection this delivery
    /// most likely carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivers_for: Option<std::net::SocketAddr>,
    /// The connection was translated on its way out (DNAT to a Service's endpoint,
    /// SNAT, REDIRECT to a proxy): what the client socket named and what its
    /// packets carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatRecord>,
    /// For `proxy_to_app` out of a mesh tunnel (HBONE, Linkerd's transport): the
    /// tunnel connection whose class decided, and whose client is the real client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelRecord>,
    /// Bytes sent client to server, from the kernel's counters (`null` when the
    /// connection predates the agent).
    pub bytes_client_to_server: Option<u64>,
    pub bytes_server_to_client: Option<u64>,
    /// What the bytes say: `connection_security_policy`, evidence, TLS facts, ...
    #[serde(flatten)]
    pub classification: Classification,
    /// Who the ends are and what policy says: workloads, expected, verdict.
    #[serde(flatten)]
    pub assessment: Option<Assessment>,
    /// The connection was established before the agent attached its probes.
    pub predates_agent: bool,
    /// The connection was still open when the agent stopped.
    pub open: bool,
    pub capture: CaptureSummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Local,
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// Present when this end is a socket on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEnd>,
}

/// A translated connection's two views.
#[derive(Debug, Clone, Serialize)]
pub struct NatRecord {
    pub socket_client: std::net::SocketAddr,
    pub socket_server: std::net::SocketAddr,
    pub wire_client: std::net::SocketAddr,
    pub wire_server: std::net::SocketAddr,
}

/// The tunnel connection a delivery came out of.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelRecord {
    #[serde(flatten)]
    pub link: crate::hops::TunnelRef,
    /// When it was opened (RFC 3339).
    pub start: String,
}

/// The upstream connection that decided an `app_to_proxy` record.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamRecord {
    #[serde(flatten)]
    pub link: crate::hops::UpstreamRef,
    /// When it was opened (RFC 3339).
    pub start: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalEnd {
    pub socket_cookie: u64,
    pub pid: Option<u32>,
    /// Shared with the end it describes (no copy per record).
    pub comm: Option<std::sync::Arc<str>>,
    /// uid of the owning process, when the kernel saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    /// Path below the cgroup v2 root.
    pub cgroup: Option<std::sync::Arc<str>>,
    pub netns_cookie: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureSummary {
    /// Captured bytes of each direction (holes excluded).
    pub client_to_server: u64,
    pub server_to_client: u64,
    /// A segment went past the capture budget or chunk size.
    pub truncated: bool,
    /// A kernel event of this connection was lost.
    pub lost: bool,
    /// Captured bytes do not all connect to the start of their stream.
    pub gaps: bool,
    /// The classification was final before the connection closed, so the agent
    /// told the kernel to stop capturing it (bytes past that point are not kept).
    pub settled: bool,
}

fn local_end(e: &End) -> LocalEnd {
    LocalEnd {
        socket_cookie: e.cookie,
        pid: e.process.as_ref().map(|p| p.pid),
        comm: e.process.as_ref().map(|p| std::sync::Arc::clone(&p.comm)),
        uid: e.uid,
        cgroup_id: (e.cgroup_id != 0).then_some(e.cgroup_id),
        cgroup: e.cgroup.clone(),
        netns_cookie: (e.netns_cookie != 0).then_some(e.netns_cookie),
    }
}

/// The policy labels of a record: both ends' workloads, what was expected and the
/// verdict; `unknown` throughout when the record has no assessment.
pub struct Judged<'a> {
    pub source_workload: &'a str,
    pub source_namespace: &'a str,
    pub destination_workload: &'a str,
    pub destination_namespace: &'a str,
    pub expected: &'a str,
    pub verdict: &'a str,
}

impl ConnectionRecord {
    pub fn judged(&self) -> Judged<'_> {
        match &self.assessment {
            Some(a) => Judged {
                source_workload: &a.source_workload,
                source_namespace: &a.source_workload_namespace,
                destination_workload: &a.destination_workload,
                destination_namespace: &a.destination_workload_namespace,
                expected: a.expected_security_policy,
                verdict: a.verdict.as_str(),
            },
            None => Judged {
                source_workload: "unknown",
                source_namespace: "unknown",
                destination_workload: "unknown",
                destination_namespace: "unknown",
                expected: "unknown",
                verdict: "unknown",
            },
        }
    }

    /// Classifies `conn` and builds its record (without policy).
    pub fn new(conn: &Connection, clock: &Clock) -> Self {
        Self::with_classification(conn, clock, conn.classify(), None)
    }

    pub fn with_classification(
        conn: &Connection,
        clock: &Clock,
        classification: Classification,
        assessment: Option<Assessment>,
    ) -> Self {
        Self::with_hop(
            conn,
            clock,
            classification,
            assessment,
            HopFacts::direct(),
            None,
        )
    }

    /// Which reporters count this record in the metrics and the edges view
    /// ([`Hop::reporters`]).
    pub fn reporters(&self) -> Reporters {
        let (client, server) = (self.client.local.is_some(), self.server.local.is_some());
        if self.hop == Hop::ProxyToApp && self.tunnel.is_some() {
            return Reporters {
                source: false,
                destination: server,
            };
        }
        self.hop.reporters(client, server)
    }

    /// Whether this record is the one that raises a verdict event for its
    /// logical connection on this node: the source's record when the source is
    /// here, else the destination's.
    pub fn raises_events(&self) -> bool {
        let r = self.reporters();
        r.source
            || (r.destination && !(self.hop == Hop::ProxyUpstream && self.client.local.is_some()))
    }

    /// The record of a hop: `facts` from the hops stage; `app_protocol` what the
    /// app's own bytes were, when `classification` is the upstream's.
    pub fn with_hop(
        conn: &Connection,
        clock: &Clock,
        classification: Classification,
        assessment: Option<Assessment>,
        facts: HopFacts,
        app_protocol: Option<Protocol>,
    ) -> Self {
        let c2s = conn.client_to_server();
        let s2c = conn.server_to_client();
        let (bytes_c2s, bytes_s2c) = conn.byte_counts();
        let end_ns = conn
            .ends()
            .filter_map(|e| e.closed_ns)
            .max()
            .unwrap_or(conn.last_ns)
            .max(conn.first_ns);
        // The proxy's socket of an app_to_proxy hop is not the destination.
        let server_end = conn
            .server_end
            .as_ref()
            .filter(|_| facts.hop != Hop::AppToProxy);
        let direction = match (&conn.client_end, server_end) {
            (Some(_), Some(_)) => Direction::Local,
            (Some(_), None) => Direction::Outbound,
            _ => Direction::Inbound,
        };
        let endpoint = |addr: std::net::SocketAddr, role: Role| Endpoint {
            addr: addr.ip(),
            port: addr.port(),
            local: match role {
                Role::Client => conn.client_end.as_deref().map(local_end),
                Role::Server => server_end.map(|e| local_end(e)),
            },
        };
        let upstream = facts.upstream.map(|link| UpstreamRecord {
            start: clock.rfc3339(link.start_ns),
            link,
        });
        let tunnel = facts.tunnel.map(|link| TunnelRecord {
            start: clock.rfc3339(link.start_ns),
            link,
        });
        Self {
            schema: CONNECTION_SCHEMA,
            start: clock.rfc3339(conn.first_ns),
            end: clock.rfc3339(end_ns),
            duration_ms: (end_ns - conn.first_ns) as f64 / 1e6,
            direction,
            hop: facts.hop,
            client: endpoint(conn.client, Role::Client),
            server: endpoint(conn.server, Role::Server),
            interceptor: facts.interceptor,
            upstream,
            app_protocol,
            delivers_for: facts.delivers,
            nat: conn.nat.as_deref().map(|n| NatRecord {
                socket_client: n.socket.0,
                socket_server: n.socket.1,
                wire_client: n.wire.0,
                wire_server: n.wire.1,
            }),
            tunnel,
            bytes_client_to_server: bytes_c2s,
            bytes_server_to_client: bytes_s2c,
            classification,
            assessment,
            predates_agent: conn.preexisting(),
            open: conn.open,
            capture: CaptureSummary {
                client_to_server: c2s.map_or(0, |s| s.captured()),
                server_to_client: s2c.map_or(0, |s| s.captured()),
                truncated: conn
                    .ends()
                    .any(|e| e.egress().truncated || e.ingress().truncated),
                lost: conn.ends().any(|e| e.lost),
                gaps: c2s.is_some_and(|s| s.has_gap()) || s2c.is_some_and(|s| s.has_gap()),
                settled: conn.settled.is_some(),
            },
        }
    }
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("opening output file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("starting the writer thread: {0}")]
    Thread(io::Error),
}

/// Where records go.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
    /// Nowhere (metrics and events only).
    Off,
}

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the versioned schema).
    Json,
    /// A table for people: one row per connection, header first.
    Table,
}

const TABLE_HEADER: &str = "TIME          SOURCE                         DESTINATION                            HOP            OBSERVED    EXPECTED    VERDICT     REASON";

fn endpoint_label(workload: Option<(&str, &str)>, addr: IpAddr) -> String {
    match workload {
        Some((ns, name)) if name != "unknown" => format!("{ns}/{name}"),
        _ => addr.to_string(),
    }
}

/// One table row.
pub fn table_row(r: &ConnectionRecord) -> String {
    let time = r.end.get(11..23).unwrap_or(&r.end);
    let (src, dst, expected, verdict, reason) = match &r.assessment {
        Some(a) => (
            endpoint_label(
                Some((&a.source_workload_namespace, &a.source_workload)),
                r.client.addr,
            ),
            format!(
                "{}:{}",
                endpoint_label(
                    Some((&a.destination_workload_namespace, &a.destination_workload)),
                    r.server.addr
                ),
                r.server.port
            ),
            a.expected_security_policy,
            a.verdict.as_str(),
            a.verdict_reason.as_str(),
        ),
        None => (
            r.client.addr.to_string(),
            format!("{}:{}", r.server.addr, r.server.port),
            "-",
            "-",
            r.classification.evidence.as_str(),
        ),
    };
    table_line([
        time,
        &src,
        &dst,
        r.hop.as_str(),
        r.classification.connection_security_policy.as_str(),
        expected,
        verdict,
        reason,
    ])
}

/// A table row from its fields (time, source, destination, hop, observed,
/// expected, verdict, reason), control characters escaped: names and reasons come
/// from the wire, the cluster and policy files, and a crafted one must not forge
/// rows or move the cursor.
fn table_line(fields: [&str; 8]) -> String {
    let [time, src, dst, hop, observed, expected, verdict, reason] =
        fields.map(crate::text::escape);
    format!(
        "{time:<13} {src:<30} {dst:<38} {hop:<14} {observed:<11} {expected:<11} {verdict:<11} {reason}"
    )
}

/// A writer thread for records of type `T`, behind a bounded channel.
pub struct Writer<T: Send + 'static> {
    tx: Option<SyncSender<T>>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How one record is written.
pub type WriteFn<T> = fn(&T, &mut dyn Write) -> io::Result<()>;

fn open_sink(output: &Output) -> Result<Box<dyn Write + Send>, ExportError> {
    Ok(match output {
        Output::Stdout => Box::new(io::stdout()),
        Output::Off => Box::new(io::sink()),
        Output::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ExportError::Open {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

impl<T: Send + 'static> Writer<T> {
    pub fn start(
        output: &Output,
        header: Option<&'static str>,
        write: WriteFn<T>,
        capacity: usize,
        name: &str,
    ) -> Result<Self, ExportError> {
        if matches!(output, Output::Off) {
            // Nothing to write: records are not even queued (no thread, no encoding).
            return Ok(Self {
                tx: None,
                dropped: Arc::new(AtomicU64::new(0)),
                written: Arc::new(AtomicU64::new(0)),
                thread: None,
            });
        }
        let sink = open_sink(output)?;
        let (tx, rx) = mpsc::sync_channel(capacity);
        let written = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&written);
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(rx, sink, header, write, &w))
            .map_err(ExportError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            written,
            thread: Some(thread),
        })
    }

    /// Queues a record; never blocks.
    pub fn send(&self, record: T) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(dropped = n, "output cannot keep up; records dropped");
                }
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Flushes and stops the writer.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The connection-record writer.
pub type JsonLines = Writer<ConnectionRecord>;

/// Starts the connection-record writer in `format`.
pub fn records_writer(
    output: &Output,
    format: Format,
    capacity: usize,
) -> Result<JsonLines, ExportError> {
    match format {
        Format::Json => Writer::start(
            output,
            None,
            write_json::<ConnectionRecord>,
            capacity,
            "records",
        ),
        Format::Table => {
            Writer::start(output, Some(TABLE_HEADER), write_table, capacity, "records")
        }
    }
}

/// One JSON object and a newline.
pub fn write_json<T: Serialize>(record: &T, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

fn write_table(record: &ConnectionRecord, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{}", table_row(record))
}

fn write_loop<T>(
    rx: Receiver<T>,
    sink: Box<dyn Write + Send>,
    header: Option<&'static str>,
    write: WriteFn<T>,
    written: &AtomicU64,
) {
    let mut out = io::BufWriter::new(sink);
    if let Some(h) = header {
        let _ = writeln!(out, "{h}");
        let _ = out.flush();
    }
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for record in &batch {
            if let Err(err) = write(record, &mut out) {
                warn!(error = %err, "writing a record failed");
                continue;
            }
            written.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(err) = out.flush() {
            warn!(error = %err, "flushing records failed");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod table_tests {
    #[test]
    fn crafted_names_stay_on_their_row() {
        let line = super::table_line([
            "15:19:31.898",
            "default/a\n15:19:31.899  default/forged",
            "ns/\u{1b}[1A\u{1b}[2Kdb:8080",
            "direct",
            "none",
            "mutual_tls",
            "violation",
            "required by PeerAuthentication x/\r\u{9b}y",
        ]);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("default/a\\n15:19:31.899  default/forged"),
            "{line}"
        );
        assert!(line.contains("ns/\\u{1b}[1A\\u{1b}[2Kdb:8080"), "{line}");
        assert!(line.ends_with("x/\\r\\u{9b}y"), "{line}");
    }
}
