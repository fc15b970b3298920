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
}

/// Where the agent listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (Istio PeerAuthentication and DestinationRule, our
    /// TransportPolicy and Inventory). Errors name file, line and column; exits
    /// non-zero on any error. Conflicts are warnings.
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
    /// The capture to read (pcap or pcapng; Ethernet, Linux cooked, raw IP, loopback).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
    /// JSON lines instead of a table. Field names follow the metric labels
    /// (`connection_security_policy`, `destination_port`, ...).
    #[arg(long)]
    pub json: bool,
    /// Bytes kept from the start of each direction.
    #[arg(long, default_value_t = 65_536)]
    pub budget: u32,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `mtls_auditor=debug`.
    #[arg(long, global = true, env = "MTLS_AUDITOR_LOG", default_value = "info")]
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
    #[arg(long, env = "MTLS_AUDITOR_RING_BYTES", default_value_t = agent_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Where connection records go: `-` for stdout, a file path (appended to), or
    /// `off` (metrics and events only).
    #[arg(long, short, env = "MTLS_AUDITOR_OUTPUT", default_value = "-")]
    pub output: String,
    /// How often the agent drains the ring buffer when the kernel does not wake it.
    #[arg(long, env = "MTLS_AUDITOR_POLL_MS", default_value_t = 20)]
    pub poll_ms: u64,
    /// How long a closed connection with one end on this node waits for its other end.
    #[arg(long, env = "MTLS_AUDITOR_LINGER_MS", default_value_t = 1000)]
    pub linger_ms: u64,
    /// How often kernel counters are logged (0: only at exit).
    #[arg(long, env = "MTLS_AUDITOR_STATS_INTERVAL_S", default_value_t = 60)]
    pub stats_interval_s: u64,
    /// Policy files or directories (Istio PeerAuthentication/DestinationRule, our
    /// TransportPolicy and Inventory). Reloaded when they change and on SIGHUP.
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
    /// `json`: one JSON object per connection; `table`: a table for people.
    #[arg(long, env = "MTLS_AUDITOR_FORMAT", value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
    /// HTTP listener for /metrics, /healthz, /readyz and /api/v1/edges (`off` to
    /// disable). Loopback by default.
    #[arg(long, env = "MTLS_AUDITOR_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Distinct values kept per metric label before new ones become `~other`.
    #[arg(long, env = "MTLS_AUDITOR_MAX_LABEL_VALUES", default_value_t = 1000)]
    pub max_label_values: usize,
    /// Edges kept for `mtls-auditor edges`.
    #[arg(long, env = "MTLS_AUDITOR_MAX_EDGES", default_value_t = 10_000)]
    pub max_edges: usize,
    /// Verdict events (JSON lines, schema mtls-auditor.event/v1): `-` for stdout or
    /// a file. Violations, rejections and permissive connections; see --events-all.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS")]
    pub events: Option<String>,
    /// Make every judged connection an event, not only the findings.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_ALL")]
    pub events_all: bool,
    /// Events per second per source workload (sustained), beyond the burst.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_RATE", default_value_t = 10.0)]
    pub events_rate: f64,
    /// Events a source workload may emit at once before the rate applies.
    #[arg(long, env = "MTLS_AUDITOR_EVENTS_BURST", default_value_t = 100)]
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
    #[arg(long, env = "MTLS_AUDITOR_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
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
