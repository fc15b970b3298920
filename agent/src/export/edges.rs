//! The edges view: connections aggregated by source -> destination:port, observed
//! and expected security and verdict, served to `mtls-auditor edges`.
//!
//! The view holds at most `--max-edges` edges. When a new edge arrives at a full
//! view, the edge seen least recently is folded into an overflow row, so the view
//! always shows current traffic and no connection is lost from the counts: there is
//! one overflow row (source and destination `~other`, port 0) per observed class,
//! expected class and verdict, holding the connections of every edge folded into it.

use std::{collections::HashMap, fmt::Write as _, hash::BuildHasher as _};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::{export::ConnectionRecord, text::escape};

/// Source, destination and namespace of overflow rows.
pub const OVERFLOW: &str = "~other";

/// One edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edge {
    /// `namespace/workload`, or the address when the workload is unknown; `~other`
    /// in an overflow row.
    pub source: String,
    pub destination: String,
    pub source_workload_namespace: String,
    pub destination_workload_namespace: String,
    /// 0 in an overflow row.
    pub destination_port: u16,
    pub connection_security_policy: String,
    pub expected_security_policy: String,
    pub verdict: String,
    pub connections: u64,
    /// When the last connection of this edge ended (RFC 3339).
    pub last_seen: String,
    /// In an overflow row: how many edges were folded into it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded_edges: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Edge {
    /// Whether this is an overflow row.
    pub fn is_overflow(&self) -> bool {
        self.folded_edges > 0
    }
}

/// What one finished connection adds to the view.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub source_namespace: &'a str,
    pub destination_namespace: &'a str,
    pub port: u16,
    pub observed: &'a str,
    pub expected: &'a str,
    pub verdict: &'a str,
    /// When it ended (RFC 3339).
    pub end: &'a str,
}

/// A hash of an edge's identity (source, destination, port, observed, expected,
/// verdict): looking an edge up costs no allocation. The edge it names is compared
/// field by field; on the (rare) collision with another edge the next salt is
/// tried.
type Key = u64;
const SALTS: u64 = 8;

fn key_of(s: &Seen<'_>, salt: u64) -> Key {
    foldhash::fast::FixedState::with_seed(salt).hash_one((
        s.source,
        s.destination,
        s.port,
        s.observed,
        s.expected,
        s.verdict,
    ))
}

impl Edge {
    fn is(&self, s: &Seen<'_>) -> bool {
        self.destination_port == s.port
            && self.source == s.source
            && self.destination == s.destination
            && self.connection_security_policy == s.observed
            && self.expected_security_policy == s.expected
            && self.verdict == s.verdict
    }
}
/// Observed, expected, verdict.
type OverflowKey = (String, String, String);

/// The edges seen, at most `cap` of them plus the overflow rows.
pub struct Edges {
    /// Ordered by when each edge last saw a connection.
    map: LruCache<Key, Edge>,
    overflow: HashMap<OverflowKey, Edge>,
    cap: usize,
    /// Buffers for the source and destination names of the record being counted.
    names: (String, String),
}

/// An end's name in the view, written into `out` (a buffer kept between calls, so
/// naming an end allocates nothing once the buffer is as long as the names).
fn name(out: &mut String, ns: &str, workload: &str, addr: std::net::IpAddr) {
    out.clear();
    // Writing into a String cannot fail.
    let _ = if workload == "unknown" {
        write!(out, "{addr}")
    } else {
        write!(out, "{ns}/{workload}")
    };
}

impl Edges {
    /// A view of at most `cap` edges (at least 1).
    pub fn new(cap: usize) -> Self {
        Self {
            // Unbounded: the cap is enforced here, so that a large `--max-edges`
            // costs memory only as edges arrive.
            map: LruCache::unbounded(),
            overflow: HashMap::new(),
            cap: cap.max(1),
            names: Default::default(),
        }
    }

    /// Counts `rec` on its edge. Returns the connections that this call folded
    /// into an overflow row (those of the edge it evicted), 0 if none.
    pub fn record(&mut self, rec: &ConnectionRecord) -> u64 {
        let j = rec.judged();
        let (mut source, mut destination) = std::mem::take(&mut self.names);
        name(
            &mut source,
            j.source_namespace,
            j.source_workload,
            rec.client.addr,
        );
        name(
            &mut destination,
            j.destination_namespace,
            j.destination_workload,
            rec.server.addr,
        );
        let folded = self.count(&Seen {
            source: &source,
            destination: &destination,
            source_namespace: j.source_namespace,
            destination_namespace: j.destination_namespace,
            port: rec.server.port,
            observed: rec.classification.connection_security_policy.as_str(),
            expected: j.expected,
            verdict: j.verdict,
            end: &rec.end,
        });
        self.names = (source, destination);
        folded
    }

    /// Counts one connection on its edge; a new edge in a full view evicts the
    /// least recently seen one into its overflow row. Returns the connections
    /// folded into an overflow row by this call.
    pub fn count(&mut self, s: &Seen<'_>) -> u64 {
        let mut key = None;
        for salt in 0..SALTS {
            let k = key_of(s, salt);
            match self.map.get_mut(&k) {
                Some(e) if e.is(s) => {
                    e.connections += 1;
                    if s.end > e.last_seen.as_str() {
                        s.end.clone_into(&mut e.last_seen);
                    }
                    return 0;
                }
                Some(_) => continue,
                None => {
                    key = Some(k);
                    break;
                }
            }
        }
        let mut folded = 0;
        let Some(key) = key else {
            // Every salt collided: counted in an overflow row.
            self.fold(self.edge_of(s));
            return 1;
        };
        while self.map.len() >= self.cap {
            let Some((_, evicted)) = self.map.pop_lru() else {
                break;
            };
            folded += evicted.connections;
            self.fold(evicted);
        }
        let edge = self.edge_of(s);
        self.map.put(key, edge);
        folded
    }

    fn edge_of(&self, s: &Seen<'_>) -> Edge {
        Edge {
            source: s.source.to_owned(),
            destination: s.destination.to_owned(),
            source_workload_namespace: s.source_namespace.to_owned(),
            destination_workload_namespace: s.destination_namespace.to_owned(),
            destination_port: s.port,
            connection_security_policy: s.observed.to_owned(),
            expected_security_policy: s.expected.to_owned(),
            verdict: s.verdict.to_owned(),
            connections: 1,
            last_seen: s.end.to_owned(),
            folded_edges: 0,
        }
    }

    fn fold(&mut self, e: Edge) {
        let key = (
            e.connection_security_policy,
            e.expected_security_policy,
            e.verdict,
        );
        let row = self.overflow.entry(key.clone()).or_insert_with(|| Edge {
            source: OVERFLOW.into(),
            destination: OVERFLOW.into(),
            source_workload_namespace: OVERFLOW.into(),
            destination_workload_namespace: OVERFLOW.into(),
            destination_port: 0,
            connection_security_policy: key.0,
            expected_security_policy: key.1,
            verdict: key.2,
            connections: 0,
            last_seen: String::new(),
            folded_edges: 0,
        });
        row.connections += e.connections;
        row.folded_edges += 1;
        if e.last_seen > row.last_seen {
            row.last_seen = e.last_seen;
        }
    }

    /// Edges held (overflow rows not included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every edge and overflow row, in no order: a copy to sort, filter and
    /// serialize without holding up whoever records connections.
    pub fn all(&self) -> Vec<Edge> {
        let mut v = Vec::with_capacity(self.map.len() + self.overflow.len());
        v.extend(self.map.iter().map(|(_, e)| e.clone()));
        v.extend(self.overflow.values().cloned());
        v
    }

    /// Edges matching the filters, sorted (see [`sort`]).
    pub fn snapshot(&self, namespace: Option<&str>, verdict: Option<&str>) -> Vec<Edge> {
        let mut v = self.all();
        sort(&mut v);
        v.retain(|e| matches(e, namespace, verdict));
        v
    }
}

/// By source, destination and port, the overflow rows last.
pub fn sort(edges: &mut [Edge]) {
    edges.sort_by(|a, b| {
        (
            a.is_overflow(),
            &a.source,
            &a.destination,
            a.destination_port,
        )
            .cmp(&(
                b.is_overflow(),
                &b.source,
                &b.destination,
                b.destination_port,
            ))
            .then_with(|| {
                (
                    &a.connection_security_policy,
                    &a.expected_security_policy,
                    &a.verdict,
                )
                    .cmp(&(
                        &b.connection_security_policy,
                        &b.expected_security_policy,
                        &b.verdict,
                    ))
            })
    });
}

/// Whether `e` passes the filters: `namespace` on either side (overflow rows have
/// none), `verdict`.
pub fn matches(e: &Edge, namespace: Option<&str>, verdict: Option<&str>) -> bool {
    namespace.is_none_or(|n| {
        !e.is_overflow()
            && (e.source_workload_namespace == n || e.destination_workload_namespace == n)
    }) && verdict.is_none_or(|v| e.verdict == v)
}

/// The `edges` table. Names are printed with their control characters escaped, so
/// a crafted workload name cannot forge rows or move the cursor.
pub fn render_table(edges: &[Edge]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:<40} {:<11} {:<11} {:<11} {:>6}  LAST SEEN",
        "SOURCE", "DESTINATION", "OBSERVED", "EXPECTED", "VERDICT", "CONNS"
    );
    for e in edges {
        let dst = if e.is_overflow() {
            format!("{OVERFLOW} ({} edges folded)", e.folded_edges)
        } else {
            format!("{}:{}", escape(&e.destination), e.destination_port)
        };
        let _ = writeln!(
            s,
            "{:<32} {:<40} {:<11} {:<11} {:<11} {:>6}  {}",
            escape(&e.source),
            dst,
            escape(&e.connection_security_policy),
            escape(&e.expected_security_policy),
            escape(&e.verdict),
            e.connections,
            escape(&e.last_seen)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(source: &'a str, port: u16, verdict: &'a str, end: &'a str) -> Seen<'a> {
        Seen {
            source,
            destination: "default/db",
            source_namespace: "default",
            destination_namespace: "default",
            port,
            observed: "none",
            expected: "mutual_tls",
            verdict,
            end,
        }
    }

    fn time(i: u32) -> String {
        format!("2026-11-28T15:{:02}:{:02}.000Z", i / 60 % 60, i % 60)
    }

    #[test]
    fn a_full_view_evicts_the_least_recently_seen_edge_into_an_overflow_row() {
        let mut edges = Edges::new(3);
        for (i, src) in ["default/a", "default/b", "default/c"].iter().enumerate() {
            assert_eq!(edges.count(&seen(src, 80, "violation", &time(i as u32))), 0);
        }
        // `a` is seen again, so `b` is now the least recently seen.
        assert_eq!(
            edges.count(&seen("default/a", 80, "violation", &time(3))),
            0
        );
        assert_eq!(
            edges.count(&seen("default/b", 80, "violation", &time(4))),
            0
        );
        assert_eq!(
            edges.count(&seen("default/b", 80, "violation", &time(5))),
            0
        );
        // A new edge: `c` (1 connection, seen at 2) goes.
        assert_eq!(
            edges.count(&seen("default/d", 80, "violation", &time(6))),
            1
        );
        // Another: `a` (2 connections) goes, into the same overflow row.
        assert_eq!(
            edges.count(&seen("default/e", 80, "violation", &time(7))),
            2
        );
        assert_eq!(edges.len(), 3);
        let snap = edges.snapshot(None, None);
        let names: Vec<(&str, u64)> = snap
            .iter()
            .map(|e| (e.source.as_str(), e.connections))
            .collect();
        assert_eq!(
            names,
            [
                ("default/b", 3),
                ("default/d", 1),
                ("default/e", 1),
                ("~other", 3)
            ]
        );
        let other = snap.last().expect("overflow row");
        assert!(other.is_overflow());
        assert_eq!(other.folded_edges, 2);
        assert_eq!(other.destination_port, 0);
        assert_eq!(other.verdict, "violation");
        assert_eq!(other.last_seen, time(3));
        // Nothing is lost: every connection is on an edge or in the overflow row.
        assert_eq!(snap.iter().map(|e| e.connections).sum::<u64>(), 8);
    }

    #[test]
    fn the_view_never_freezes() {
        // A burst fills the view; hours of new traffic after it still show.
        let mut edges = Edges::new(100);
        let mut folded = 0;
        for i in 0..10_000u32 {
            folded += edges.count(&seen(&format!("burst/{i}"), 80, "compliant", &time(0)));
        }
        assert_eq!(folded, 9_900);
        for i in 0..50u32 {
            edges.count(&seen(&format!("later/{i}"), 443, "violation", &time(1)));
        }
        let snap = edges.snapshot(None, None);
        assert_eq!(
            snap.iter()
                .filter(|e| e.source.starts_with("later/"))
                .count(),
            50
        );
        assert_eq!(edges.len(), 100);
        let other: Vec<&Edge> = snap.iter().filter(|e| e.is_overflow()).collect();
        assert_eq!(other.len(), 1, "{other:?}");
        assert_eq!(other[0].connections, 9_950);
        assert_eq!(other[0].folded_edges, 9_950);
        assert_eq!(snap.iter().map(|e| e.connections).sum::<u64>(), 10_050);
    }

    #[test]
    fn overflow_rows_keep_their_verdict_and_skip_namespace_filters() {
        let mut edges = Edges::new(1);
        edges.count(&seen("default/a", 80, "violation", &time(0)));
        edges.count(&seen("default/b", 80, "compliant", &time(1)));
        edges.count(&seen("default/c", 80, "compliant", &time(2)));
        let violations = edges.snapshot(None, Some("violation"));
        assert_eq!(violations.len(), 1);
        assert!(violations[0].is_overflow());
        assert_eq!(violations[0].connections, 1);
        let compliant = edges.snapshot(None, Some("compliant"));
        assert_eq!(
            compliant
                .iter()
                .map(|e| (e.source.as_str(), e.connections))
                .collect::<Vec<_>>(),
            [("default/c", 1), ("~other", 1)]
        );
        let default = edges.snapshot(Some("default"), None);
        assert_eq!(default.len(), 1);
        assert_eq!(default[0].source, "default/c");
    }

    #[test]
    fn the_json_of_an_edge_is_unchanged_and_an_overflow_row_says_what_it_folded() {
        let mut edges = Edges::new(1);
        edges.count(&seen("default/a", 80, "violation", &time(0)));
        let one = serde_json::to_value(&edges.snapshot(None, None)[0]).expect("json");
        assert!(one.get("folded_edges").is_none(), "{one}");
        edges.count(&seen("default/b", 80, "violation", &time(1)));
        let rows = edges.snapshot(None, None);
        let back: Vec<Edge> =
            serde_json::from_str(&serde_json::to_string(&rows).expect("json")).expect("parse");
        assert_eq!(back, rows);
        assert_eq!(back[1].folded_edges, 1);
        let table = render_table(&rows);
        assert!(
            table
                .lines()
                .nth(2)
                .is_some_and(|l| l.starts_with("~other") && l.contains("~other (1 edges folded)")),
            "{table}"
        );
    }

    #[test]
    fn crafted_names_cannot_forge_rows_or_move_the_cursor() {
        let mut edges = Edges::new(10);
        let forged = "default/x\ndefault/forged                   default/db:80   mutual_tls  mutual_tls  compliant  9999";
        edges.count(&Seen {
            destination: "ns/\u{1b}[2J\u{1b}[Hdb\r",
            ..seen(forged, 80, "violation", &time(0))
        });
        let table = render_table(&edges.snapshot(None, None));
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            !table
                .trim_end()
                .chars()
                .any(|c| c.is_control() && c != '\n')
        );
        let row = table.lines().nth(1).expect("row");
        assert!(row.starts_with("default/x\\ndefault/forged"), "{row}");
        assert!(row.contains("ns/\\u{1b}[2J\\u{1b}[Hdb\\r:80"), "{row}");
    }
}
