//! Command line. Every flag can also be set through an `MTLS_AUDITOR_*`
//! environment variable, which is how a DaemonSet configures the agent.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mtls-auditor",
    version,
    about = "Proves, from the bytes on the wire, which TCP connections on this node are plaintext, TLS or mutual TLS.",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and report every TCP connection on this host when it
    /// finishes: classified from its first bytes, judged against the policy, as JSON
    /// lines or a table, with Prometheus metrics, verdict events and the edges view
    /// on the HTTP listener. Runs until SIGINT or SIGTERM, then detaches everything.
    Run(RunArgs),
    /// Classify every TCP connection of a pcap or pcapng capture with the same
    /// classifier the agent runs, one line per connection.
    Classify(ClassifyArgs),
    /// Check policy files, or explain what a connection requires.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Ask a running agent for its edges: source -> destination:port, observed,
    /// expected, verdict, connections, last seen.
    Edges(EdgesArgs),
    /// STRICT readiness across the cluster, from Prometheus: for each server seen
    /// in the window, its mode, the clients that still send it plaintext or one-way
    /// TLS, the clients it refuses, its mutual-TLS share; every policy violation;
    /// and which agents reported, so missing data is never read as "ready".
    Report(ReportArgs),
}

/// How `mtls-auditor report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Markdown,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Prometheus' base URL (`http://host:9090`, or with a path prefix); the
    /// report reads its HTTP API (/api/v1/query, /api/v1/query_range).
    #[arg(long, env = "MTLS_AUDITOR_PROMETHEUS", value_name = "URL")]
    pub prometheus: String,
    /// Length of the window, ending at --until (`7d`, `36h`, `90m`).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// End of the window, RFC 3339 (`2026-12-01T10:00:00Z`). Default: now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub until: Option<std::time::SystemTime>,
    /// Only servers in this namespace (and this namespace's connections to
    /// destinations no agent saw).
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Policy files or directories that give each server its mode (Istio
    /// PeerAuthentication, with an Inventory for workload labels). With cluster
    /// access the API server's PeerAuthentications and pods are read as well.
    /// Without either, the mode is inferred from the agents' verdicts.
    #[arg(long = "policy", value_delimiter = ',')]
    pub policy: Vec<PathBuf>,
    /// Istio's root namespace (mesh-wide policies).
    #[arg(
        long,
        env = "MTLS_AUDITOR_ROOT_NAMESPACE",
        default_value = "istio-system"
    )]
    pub root_namespace: String,
    /// Kubernetes: read PeerAuthentications and pods (once) from the API server this
    /// kubeconfig names. Inside a pod with a service account this is automatic.
    #[arg(long, env = "MTLS_AUDITOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `table` and `markdown` for people, `json` for scripts (the documented
    /// contract), `html` for one self-contained page with charts.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write the report to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Deadline of each request to Prometheus (and to the API server).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct EdgesArgs {
    /// The agent's HTTP listener.
    #[arg(long, env = "MTLS_AUDITOR_LISTEN", default_value = DEFAULT_LISTEN)]
    pub agent: String,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only edges with this namespace on either side.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Only edges with this verdict (compliant, violation, rejected, permissive, exempt, unknown).
    #[arg(long, value_parser = ["compliant", "violation", "rejected", "permissive", "exempt", "unknown"])]
    pub verdict: Option<String>,
    /// Give up when the agent has not answered in full within this time
    /// (connecting, the answer and its body: a listener that never answers or
    /// drips its answer is an error, not a hang).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Where the agent listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (Istio PeerAuthentication, DestinationRule,
    /// ServiceEntry and the `istio` mesh ConfigMap, our TransportPolicy and
    /// Inventory) against Istio's validation rules and ours. Errors name file,
    /// line and column and the Istio rule; exits non-zero on any error.
    /// Conflicts, and files with no policy, are warnings.
    Check {
        /// Files or directories (their *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// What does a connection from one workload (or address) to another require,
    /// and which policy objects decide it?
    Explain {
        /// Policy files or directories.
        #[arg(long = "policy", required = true, value_delimiter = ',')]
        paths: Vec<PathBuf>,
        /// Source: `namespace/workload` from the inventory, or an IP address.
        #[arg(long)]
        from: String,
        /// Destination and port: `namespace/workload:PORT`, `service:PORT`, or `IP:PORT`.
        #[arg(long)]
        to: String,
        /// Istio's root namespace (mesh-wide policies).
        #[arg(
            long,
            env = "MTLS_AUDITOR_ROOT_NAMESPACE",
            default_value = "istio-system"
        )]
        root_namespace: String,
    },
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The capture to read: pcap or pcapng; Ethernet (802.1Q/QinQ, PPPoE, MPLS),
    /// Linux cooked v1/v2 (any ARPHRD type), raw IP, BSD loopback, PPP, 802.11;
    /// tunnels (IP-in-IP, GRE, VXLAN, Geneve, GTP-U, CAPWAP, Teredo) are followed
    /// and IP fragments reassembled. Packets that cannot be read are counted on
    /// stderr with the reason; a file that ends mid-record (copied while tcpdump
    /// was writing it) is read up to the cut, which stderr names.
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
    /// JSON lines instead of a table. Field names follow the metric labels
    /// (`connection_security_policy`, `destination_port`, ...).
    #[arg(long)]
    pub json: bool,
    /// Bytes kept from the start of each direction.
    #[arg(long, default_value_t = 65_536)]
    pub budget: u32,
    /// Exit non-zero (after printing what was read) if the file ends early or is
    /// corrupt part-way, or if any packet could not be read.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `mtls_auditor=debug`.
    /// A bare word must be a level (off, error, warn, info, debug, trace); filter a
    /// target with TARGET=LEVEL.
    #[arg(long, global = true, env = "MTLS_AUDITOR_LOG", default_value = "info",
          value_parser = log_filter)]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, env = "MTLS_AUDITOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML file of settings: keys are these flags' long names (`capture-budget:
    /// 8192`), plus `log-level` and `log-format`. The command line and `MTLS_AUDITOR_*`
    /// variables win over the file; examples/mtls-auditor.yaml lists every key with
    /// its default.
    #[arg(long, env = "MTLS_AUDITOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bytes captured from the start of each direction of every connection.
    #[arg(long, env = "MTLS_AUDITOR_CAPTURE_BUDGET", default_value_t = agent_common::DEFAULT_CAPTURE_BUDGET,
          value_parser = clap::value_parser!(u32).range(1..=agent_common::MAX_CAPTURE_BUDGET as i64))]
    pub capture_budget: u32,
    /// Size of the kernel-to-agent ring buffer in bytes (a power of two).
    #[arg(long, env = "MTLS_AUDITOR_RING_BYTES", default_value_t = agent_common::DEFAULT_RING_BYTES,
          value_parser = ring_bytes)]
    pub ring_bytes: u32,
    /// Where connection records go: `-` for stdout, a file path (appended to), or
    /// `off` (metrics and events only).
    #[arg(long, short, env = "MTLS_AUDITOR_OUTPUT", default_value = "-")]
    pub output: String,
    /// How often the agent drains the ring buffer when the kernel does not wake it
    /// (1 to 10000 ms).
    #[arg(long, env = "MTLS_AUDITOR_POLL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub poll_ms: u64,
    /// How long a closed connection with one end on this node waits for its other end.
    #[arg(long, env = "MTLS_AUDITOR_LINGER_MS", default_value_t = 1000)]
    pub linger_ms: u64,
    /// How often kernel counters are logged (0: only at exit).
    #[arg(long, env = "MTLS_AUDITOR_STATS_INTERVAL_S", default_value_t = 60)]
    pub stats_interval_s: u64,
    /// Policy files or directories (Istio PeerAuthentication, DestinationRule,
    /// ServiceEntry and the `istio` mesh ConfigMap, whose `enableAutoMtls: false`
    /// turns auto-mTLS off; our TransportPolicy and Inventory). Reloaded when they
    /// change and on SIGHUP.
    /// Without policy files or a cluster, connections are classified but not judged;
    /// in a cluster, Istio's objects from the API server are judged by as well.
    #[arg(long = "policy", env = "MTLS_AUDITOR_POLICY", value_delimiter = ',')]
    pub policy: Vec<PathBuf>,
    /// Istio's root namespace (mesh-wide policies).
    #[arg(
        long,
        env = "MTLS_AUDITOR_ROOT_NAMESPACE",
        default_value = "istio-system"
    )]
    pub root_namespace: String,
    /// Turn off a built-in exemption of the mesh's own traffic: `proxy-to-app`
    /// (a proxy delivering inbound traffic to its app inside one pod),
    /// `istio-envoy-prometheus` (15090), `istio-agent-health` (15020, 15021),
    /// `istio-envoy-admin` (15000 on loopback), `istio-dns` (DNS captured to 15053),
    /// `istio-ambient-probe` (kubelet probes from 169.254.7.127), `istio-ztunnel`
    /// (15020, 15021, 15000 of ztunnel's own pod), `linkerd-admin` (4191),
    /// `linkerd-tap` (4190).
    /// Repeatable or comma-separated. See docs/mesh.md.
    #[arg(
        long = "disable-exemption",
        env = "MTLS_AUDITOR_DISABLE_EXEMPTION",
        value_delimiter = ',',
        value_name = "NAME",
        value_parser = clap::builder::PossibleValuesParser::new([
            "proxy-to-app",
            "istio-envoy-prometheus",
            "istio-agent-health",
            "istio-envoy-admin",
            "istio-dns",
            "istio-ambient-probe",
            "istio-ztunnel",
            "linkerd-admin",
            "linkerd-tap",
        ])
    )]
    pub disable_exemption: Vec<String>,
    /// `json`: one JSON object per connection; `table`: a table for people (one row
    /// per connection that counts in the metrics: the in-pod delivery hops of a mesh
    /// proxy are left out; they are in the JSON records).
    #[arg(long, env = "MTLS_AUDITOR_FORMAT", value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
    /// HTTP listener for /metrics, /healthz, /readyz and /api/v1/edges (`off` to
    /// disable). Loopback by default.
    #[arg(long, env = "MTLS_AUDITOR_LISTEN", default_value = DEFAULT_LISTEN, value_parser = listen_address)]
    pub listen: String,
    /// Connections the HTTP listener keeps open at once (lowered to stay 256 below
    /// the open-file limit). At the cap a new connection takes the place of the one
    /// idle longest, so idle or slow clients cannot lock a scrape out.
    #[arg(long, env = "MTLS_AUDITOR_HTTP_MAX_CONNECTIONS", default_value_t = crate::export::http::DEFAULT_MAX_CONNECTIONS,
          value_parser = at_least_one)]
    pub http_max_connections: usize,
    /// Distinct values kept per metric label before new ones become `~other`.
    #[arg(long, env = "MTLS_AUDITOR_MAX_LABEL_VALUES", default_value_t = 1000,
          value_parser = at_least_one)]
    pub max_label_values: usize,
    /// Edges kept for `mtls-auditor edges`. Past it the least recently seen edges
    /// are folded into `~other` rows (one per observed, expected and verdict).
    #[arg(long, env = "MTLS_AUDITOR_MAX_EDGES", default_value_t = 10_000,
          value_parser = at_least_one)]
    pub max_edges: usize,
    /// Verdict events (JSON lines, schema mtls-auditor.event/v1): `-` for stdout or
    /// a file. Violations, rejections and permissive connections; see --events-all.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS")]
    pub events: Option<String>,
    /// Make every judged connection an event, not only the findings.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_ALL")]
    pub events_all: bool,
    /// Events per second per source workload (sustained), beyond the burst; 0: the
    /// burst only.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_RATE", default_value_t = 10.0, value_parser = events_rate,
          allow_negative_numbers = true)]
    pub events_rate: f64,
    /// Events a source workload may emit at once before the rate applies.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub events_burst: u32,
    /// Kubernetes: read pods, Services, EndpointSlices and Istio's policy from the
    /// API server this kubeconfig names. Inside a pod with a service account the
    /// agent connects by itself; without either it runs standalone.
    #[arg(long, env = "MTLS_AUDITOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node this agent runs on (its pods are watched). Default: the hostname.
    #[arg(long, env = "MTLS_AUDITOR_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubernetes: watch every pod of the cluster, not only this node's, so that
    /// connections to and from pods on other nodes name their pod, workload and
    /// labels (and the policy is resolved with them). Costs a cluster-wide pod watch
    /// per node: memory for every pod, and API-server load that grows with nodes
    /// times pod churn.
    #[arg(long, env = "MTLS_AUDITOR_REMOTE_PODS")]
    pub remote_pods: bool,
    /// The cluster's DNS domain, for service FQDNs.
    #[arg(
        long,
        env = "MTLS_AUDITOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// The host's cgroup v2 hierarchy: programs attach to its root and cgroup ids
    /// resolve to paths under it. Default: the cgroup2 mount in /proc/self/mountinfo.
    /// In a container with its own cgroup namespace, mount the host's
    /// /sys/fs/cgroup and point here.
    #[arg(long, env = "MTLS_AUDITOR_CGROUP_ROOT", value_parser = cgroup_root)]
    pub cgroup_root: Option<PathBuf>,
    /// The lock that keeps a second agent from starting on this node (two agents
    /// would both attach and count every connection twice): the agent holds an
    /// exclusive lock on this file while it runs and writes its PID in it.
    /// Default: /run/mtls-auditor/agent.lock (if /run cannot be written, a warning).
    /// In a container, mount the host's /run/mtls-auditor there.
    #[arg(long, env = "MTLS_AUDITOR_INSTANCE_LOCK", value_name = "PATH")]
    pub instance_lock: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Json,
    Table,
}

impl RunArgs {
    pub fn output_path(&self) -> Option<PathBuf> {
        (self.output != "-").then(|| PathBuf::from(&self.output))
    }
}

// Value checks of the flags. They run for the command line, the environment and
// the config file alike (the file's values go through the flag's own parser), so a
// bad value is refused before anything starts and its message names where it came
// from.

/// The ring buffer size: a power of two the kernel accepts.
fn ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("not a number of bytes ({e})"))?;
    if n.is_power_of_two() && n >= 4096 {
        Ok(n)
    } else {
        Err(format!(
            "not a power of two of at least 4096 (e.g. {})",
            agent_common::DEFAULT_RING_BYTES
        ))
    }
}

/// `IP:PORT`, or `off` (also empty) for no listener. Kept as the text: `run` parses
/// it again.
fn listen_address(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "off" || s.parse::<std::net::SocketAddr>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err("not an IP address and port such as 127.0.0.1:9477 or [::1]:9477, nor `off`".into())
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count ({e})")),
    }
}

fn events_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        Ok(_) => Err("must be a number of events per second of at least 0".into()),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

fn cgroup_root(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if crate::cgroups::cgroup2_at(&p).is_some() {
        Ok(p)
    } else if !p.exists() {
        Err("no such directory".into())
    } else {
        Err(format!(
            "not a cgroup v2 hierarchy (nor is {s}/unified); mount the host's /sys/fs/cgroup there"
        ))
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A tracing env-filter whose every directive parses. A bare word must be a level:
/// env-filter would read `verbose` as "everything of target `verbose`", which turns
/// every other log off without a word.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map_err(|e| format!("`{s}` is not a log filter: {e}"))?;
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level ({}); to filter a target write TARGET=LEVEL, e.g. mtls_auditor=debug",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(s.to_owned())
}
