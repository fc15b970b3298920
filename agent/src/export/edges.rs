//! The edges view: connections aggregated by source -> destination:port, observed
//! and expected security and verdict, served to `mtls-auditor edges`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::export::ConnectionRecord;

/// One edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edge {
    /// `namespace/workload`, or the address when the workload is unknown.
    pub source: String,
    pub destination: String,
    pub source_workload_namespace: String,
    pub destination_workload_namespace: String,
    pub destination_port: u16,
    pub connection_security_policy: String,
    pub expected_security_policy: String,
    pub verdict: String,
    pub connections: u64,
    /// When the last connection of this edge ended (RFC 3339).
    pub last_seen: String,
}

type Key = (String, String, u16, String, String, String);

/// All edges seen, capped in number.
pub struct Edges {
    map: HashMap<Key, Edge>,
    cap: usize,
    /// Connections not recorded because the cap was reached.
    pub overflow: u64,
}

fn name(ns: &str, workload: &str, addr: std::net::IpAddr) -> String {
    if workload == "unknown" {
        addr.to_string()
    } else {
        format!("{ns}/{workload}")
    }
}

impl Edges {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap,
            overflow: 0,
        }
    }

    /// Counts `rec` on its edge; false when the edge is new and the table is full.
    pub fn record(&mut self, rec: &ConnectionRecord) -> bool {
        let j = rec.judged();
        let source = name(j.source_namespace, j.source_workload, rec.client.addr);
        let destination = name(
            j.destination_namespace,
            j.destination_workload,
            rec.server.addr,
        );
        let observed = rec.classification.connection_security_policy.as_str();
        let key = (
            source.clone(),
            destination.clone(),
            rec.server.port,
            observed.to_owned(),
            j.expected.to_owned(),
            j.verdict.to_owned(),
        );
        if let Some(e) = self.map.get_mut(&key) {
            e.connections += 1;
            e.last_seen.clone_from(&rec.end);
            return true;
        }
        if self.map.len() >= self.cap {
            self.overflow += 1;
            return false;
        }
        self.map.insert(
            key,
            Edge {
                source,
                destination,
                source_workload_namespace: j.source_namespace.to_owned(),
                destination_workload_namespace: j.destination_namespace.to_owned(),
                destination_port: rec.server.port,
                connection_security_policy: observed.to_owned(),
                expected_security_policy: j.expected.to_owned(),
                verdict: j.verdict.to_owned(),
                connections: 1,
                last_seen: rec.end.clone(),
            },
        );
        true
    }

    /// Edges matching the filters, sorted by source, destination, port.
    pub fn snapshot(&self, namespace: Option<&str>, verdict: Option<&str>) -> Vec<Edge> {
        let mut v: Vec<Edge> = self
            .map
            .values()
            .filter(|e| {
                namespace.is_none_or(|n| {
                    e.source_workload_namespace == n || e.destination_workload_namespace == n
                })
            })
            .filter(|e| verdict.is_none_or(|v| e.verdict == v))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (&a.source, &a.destination, a.destination_port).cmp(&(
                &b.source,
                &b.destination,
                b.destination_port,
            ))
        });
        v
    }
}

/// The `edges` table.
pub fn render_table(edges: &[Edge]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:<40} {:<11} {:<11} {:<11} {:>6}  LAST SEEN",
        "SOURCE", "DESTINATION", "OBSERVED", "EXPECTED", "VERDICT", "CONNS"
    );
    for e in edges {
        let dst = format!("{}:{}", e.destination, e.destination_port);
        let _ = writeln!(
            s,
            "{:<32} {:<40} {:<11} {:<11} {:<11} {:>6}  {}",
            e.source,
            dst,
            e.connection_security_policy,
            e.expected_security_policy,
            e.verdict,
            e.connections,
            e.last_seen
        );
    }
    s
}
