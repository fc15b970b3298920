//! The report's shape: servers, clients, violations, coverage, namespaces (what
//! the JSON contract serialises), and the queries' answers it is built from.

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;

use super::answer::{Sample, Series};

/// Version of the JSON layout (fields may be added within v1).
pub const SCHEMA: &str = "mtls-auditor.report/v1";

/// The labels of one connection series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Edge {
    pub reporter: String,
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub port: String,
    pub observed: String,
    pub expected: String,
    pub verdict: String,
}

impl Edge {
    pub fn from_labels(l: &BTreeMap<String, String>) -> Self {
        let g = |k: &str| l.get(k).cloned().unwrap_or_else(|| "unknown".into());
        Self {
            reporter: g("reporter"),
            source_workload: g("source_workload"),
            source_namespace: g("source_workload_namespace"),
            destination_workload: g("destination_workload"),
            destination_namespace: g("destination_workload_namespace"),
            port: g("destination_port"),
            observed: g("connection_security_policy"),
            expected: g("expected_security_policy"),
            verdict: g("verdict"),
        }
    }

    /// Plaintext or one-way TLS the server accepted: what STRICT would refuse.
    pub fn weak_accepted(&self) -> bool {
        matches!(self.observed.as_str(), "none" | "tls")
            && !matches!(self.verdict.as_str(), "rejected" | "exempt" | "unknown")
    }
}

/// A port label: a number, or `~other` past the label cap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Other(String),
}

impl Port {
    pub fn parse(s: &str) -> Self {
        s.parse()
            .map_or_else(|_| Self::Other(s.to_owned()), Self::Number)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start: String,
    pub end: String,
    pub seconds: u64,
    /// Resolution of `first_seen`/`last_seen` and of coverage gaps.
    pub step_seconds: u64,
    #[serde(skip)]
    pub start_unix: f64,
    #[serde(skip)]
    pub end_unix: f64,
}

impl Window {
    /// The times of the steps of coverage and first/last seen: every
    /// `step_seconds`, the last one at the end of the window.
    pub fn steps(&self) -> Vec<f64> {
        let n = self.seconds.div_ceil(self.step_seconds.max(1)).max(1);
        (0..n)
            .rev()
            .map(|k| self.end_unix - (k * self.step_seconds) as f64)
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub namespace: String,
    pub workload: String,
    pub connections: u64,
    /// Of which plaintext (`none`) ...
    pub plaintext_connections: u64,
    /// ... and TLS without a client certificate.
    pub one_way_tls_connections: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub namespace: String,
    pub workload: String,
    pub port: Port,
    /// STRICT, PERMISSIVE, DISABLE or UNKNOWN.
    pub mode: String,
    pub mode_source: String,
    /// No plaintext or one-way TLS client was accepted in the window.
    pub ready_for_strict: bool,
    pub connections: u64,
    pub mutual_tls_connections: u64,
    pub mutual_tls_share: f64,
    /// Connections whose class the bytes did not tell.
    pub unknown_connections: u64,
    /// Clients that would be refused under STRICT.
    pub plaintext_clients: Vec<Client>,
    /// Clients whose attempts the server refused (for a STRICT server: the
    /// clients failing now).
    pub refused_clients: Vec<Client>,
    /// The agents (Prometheus `instance`) that saw its server end.
    pub reported_by: Vec<String>,
    /// Why "ready" may rest on less than the whole window.
    pub caveats: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub source: String,
    pub destination: String,
    pub port: Port,
    pub observed: String,
    pub expected: String,
    pub connections: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// `destination`, or `source` for destinations no agent saw.
    pub reporter: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub from: String,
    pub to: String,
    pub seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub instance: String,
    /// Share of the window's steps in which it sent samples.
    pub reported_share: f64,
    /// Average of its scrape target's `up` in the window (1: every scrape
    /// succeeded), when Prometheus has `up` for it.
    pub up_share: Option<f64>,
    pub gaps: Vec<Gap>,
    /// Its last gap runs to the end of the window.
    pub stopped_reporting: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub job: String,
    pub instance: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub agents_reporting: usize,
    pub agents_with_gaps: usize,
    pub agents: Vec<Agent>,
    /// Scrape targets of the agents' jobs that were never up in the window.
    pub targets_never_up: Vec<Target>,
    pub connections: u64,
    pub unknown_connections: u64,
    pub unknown_share: Option<f64>,
    /// Always null: the connection counters carry no capture-outcome label.
    pub incomplete_share: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SharePoint {
    pub time: String,
    #[serde(skip)]
    pub unix: f64,
    pub mutual_tls_share: f64,
    pub connections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Namespace {
    pub namespace: String,
    pub servers: usize,
    pub ready_for_strict: usize,
    pub mutual_tls_share: Option<f64>,
    /// Mutual-TLS share of its servers' connections, interval by interval.
    pub share_over_time: Vec<SharePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusInfo {
    pub url: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub prometheus: PrometheusInfo,
    pub window: Window,
    pub namespace: Option<String>,
    /// Where the modes come from.
    pub modes_from: String,
    pub servers: Vec<Server>,
    pub violations: Vec<Violation>,
    pub namespaces: Vec<Namespace>,
    pub coverage: Coverage,
}

/// The queries' answers.
#[derive(Debug, Default)]
pub struct Answers {
    pub counts: Vec<Sample>,
    pub first_seen: Vec<Sample>,
    pub last_seen: Vec<Sample>,
    pub presence: Vec<Series>,
    /// Seconds of the look-back of each presence point.
    pub presence_window: u64,
    pub up: Vec<Sample>,
    pub namespace_all: Vec<Series>,
    pub namespace_mutual_tls: Vec<Series>,
}

/// Unix seconds as RFC 3339, clamped to years 1970-9999 (what an answer from a
/// broken server may hold is still printable).
pub fn rfc3339(unix: f64) -> String {
    let secs = if unix.is_finite() {
        unix.clamp(0.0, 253_402_300_799.0) as u64
    } else {
        0
    };
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Names the report mentions: the value a capped label takes past its cap, and the
/// series that says an agent reported.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub overflow: &'a str,
    pub build_info: &'a str,
}
