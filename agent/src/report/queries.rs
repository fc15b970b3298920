//! The PromQL of the report, built in one place so that the "STRICT readiness"
//! dashboard runs the same text (with `$__range` for the window and
//! `=~"$namespace"` for the namespace).
//!
//! **Connections in a window, per series.** With `L`, `P`, `M`, `R` the series'
//! last value in the window, its last value before it (in the window as long
//! before), its smallest value in the window and its resets in the window:
//!
//! - no reset in the window: `L - P` (exact: no extrapolation), or `L` when the
//!   series was born in the window (no `P`: a client's first connection since the
//!   agent started makes the counter appear at 1, which `increase()` would never
//!   count, so a client that connected once would be invisible) or restarted
//!   across its start (`M < P`);
//! - resets in the window (an agent restarted): `increase()`, plus `M` when the
//!   series was born in the window.
//!
//! ```text
//! ((((L - P) and M >= P) or (L unless P) or (L and M < P)) and R == 0)
//!   or (increase(x[w]) + ((M unless P) or L * 0))
//! ```
//!
//! **Each connection once** (docs/observability.md): series of `reporter=
//! "destination"`, plus `reporter="source"` series whose destination namespace is
//! `unknown` and for which no destination series of the same edge exists in the
//! window.
//!
//! **First and last seen.** A range query, one step per `s` ending at the end of
//! the window, returns the steps at which a series changed (or appeared): its
//! first and last connection, to within one step.

use crate::export::metrics::{CONNECTION_LABELS, PREFIX};

/// Observed classes that STRICT would refuse: plaintext and one-way TLS.
pub const WEAK: &str = "none|tls";
/// Verdicts of connections that were not accepted (or do not count as accepted).
pub const NOT_ACCEPTED: &str = "rejected|exempt|unknown";

pub fn connections_metric() -> String {
    format!("{PREFIX}_connections_total")
}

pub fn build_info_metric() -> String {
    format!("{PREFIX}_build_info")
}

/// The connection labels without `reporter`: what identifies an edge.
pub fn edge_labels() -> String {
    CONNECTION_LABELS[1..].join(", ")
}

/// Every connection label.
pub fn all_labels() -> String {
    CONNECTION_LABELS.join(", ")
}

/// One label matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: &'static str,
    pub op: &'static str,
    pub value: String,
}

pub fn m(label: &'static str, op: &'static str, value: &str) -> Matcher {
    Matcher {
        label,
        op,
        value: value.to_owned(),
    }
}

/// Escapes a label value for a PromQL string literal.
fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn selector(ms: &[Matcher]) -> String {
    let inner: Vec<String> = ms
        .iter()
        .map(|m| format!("{}{}{}", m.label, m.op, quote(&m.value)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// Which servers a query covers: all, or one namespace.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// (`=` or `=~`, value) applied to the destination namespace of destination
    /// series and to the source namespace of client-side series.
    pub namespace: Option<(&'static str, String)>,
}

impl Scope {
    pub fn namespace(ns: Option<&str>) -> Self {
        Self {
            namespace: ns.map(|n| ("=", n.to_owned())),
        }
    }

    fn destination(&self, extra: &[Matcher]) -> Vec<Matcher> {
        let mut v = vec![m("reporter", "=", "destination")];
        if let Some((op, ns)) = &self.namespace {
            v.push(m("destination_workload_namespace", op, ns));
        }
        v.extend_from_slice(extra);
        v
    }

    fn source(&self, extra: &[Matcher]) -> Vec<Matcher> {
        let mut v = vec![
            m("reporter", "=", "source"),
            m("destination_workload_namespace", "=", "unknown"),
        ];
        if let Some((op, ns)) = &self.namespace {
            v.push(m("source_workload_namespace", op, ns));
        }
        v.extend_from_slice(extra);
        v
    }
}

/// Connections of each series matching `ms` in the window `w` (see the module
/// documentation).
pub fn window_count(ms: &[Matcher], w: &str) -> String {
    let x = format!("{}{}", connections_metric(), selector(ms));
    let l = format!("last_over_time({x}[{w}])");
    let p = format!("last_over_time({x}[{w}] offset {w})");
    let m = format!("min_over_time({x}[{w}])");
    format!(
        "((((({l} - {p}) and {m} >= {p}) or ({l} unless {p}) or ({l} and {m} < {p})) and resets({x}[{w}]) == 0) or (increase({x}[{w}]) + (({m} unless {p}) or {l} * 0)))"
    )
}

/// [`window_count`] under the count-once rule: destination series, plus client-side
/// series of destinations no agent saw.
pub fn counted(extra: &[Matcher], scope: &Scope, w: &str) -> String {
    let dest = window_count(&scope.destination(extra), w);
    let src = window_count(&scope.source(extra), w);
    format!(
        "({dest} or ({src} unless on ({}) last_over_time({}{{reporter=\"destination\"}}[{w}])))",
        edge_labels(),
        connections_metric()
    )
}

/// [`window_count`] of the servers' own series (`reporter="destination"`): what a
/// server's readiness is read from (a destination no agent saw is no server to
/// switch to STRICT).
pub fn at_servers(extra: &[Matcher], scope: &Scope, w: &str) -> String {
    window_count(&scope.destination(extra), w)
}

/// Accepted plaintext and one-way TLS: what STRICT would refuse.
pub fn weak_accepted() -> Vec<Matcher> {
    vec![
        m("connection_security_policy", "=~", WEAK),
        m("verdict", "!~", NOT_ACCEPTED),
    ]
}

/// The report's main query: connections in the window of every counted series,
/// by edge and reporting agent.
pub fn counts(scope: &Scope, w: &str) -> String {
    format!(
        "sum by ({}, instance) ({})",
        all_labels(),
        counted(&[], scope, w)
    )
}

/// Series of plaintext or one-way TLS that changed (or appeared) in the `step`
/// before each step of a range query: their first and last connections.
pub fn changed(scope: &Scope, step: &str) -> String {
    let weak = [m("connection_security_policy", "=~", WEAK)];
    let changed = |ms: &[Matcher]| {
        let x = format!("{}{}", connections_metric(), selector(ms));
        format!("(({x} - {x} offset {step}) != 0) or ({x} unless {x} offset {step})")
    };
    format!(
        "count by ({}, instance) ({} or {})",
        all_labels(),
        changed(&scope.destination(&weak)),
        changed(&scope.source(&weak))
    )
}

/// Connections per server namespace in each interval `w` (a range query with
/// step `w`): all of them, or only mutual TLS.
pub fn namespace_connections(scope: &Scope, mutual_tls_only: bool, w: &str) -> String {
    let extra = if mutual_tls_only {
        vec![m("connection_security_policy", "=", "mutual_tls")]
    } else {
        vec![]
    };
    format!(
        "sum by (destination_workload_namespace) ({})",
        at_servers(&extra, scope, w)
    )
}

/// Whether each agent sent a sample in the `w` before each step of a range query.
pub fn presence(w: &str) -> String {
    format!(
        "count by (instance) (count_over_time({}[{w}]))",
        build_info_metric()
    )
}

/// Share of the window each scrape target of the agents' jobs was up (0: never).
pub fn up_share(w: &str) -> String {
    format!(
        "avg by (job, instance) (avg_over_time(up[{w}])) and on (job) group by (job) (last_over_time({}[{w}]))",
        build_info_metric()
    )
}

/// Any mtls-auditor series at all in the window (the empty-window check).
pub fn any_series(w: &str) -> String {
    format!(
        "count(last_over_time({}[{w}])) or count(last_over_time({}[{w}]))",
        build_info_metric(),
        connections_metric()
    )
}

/// A duration as PromQL writes it: whole seconds.
pub fn duration(secs: u64) -> String {
    format!("{}s", secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            selector(&[m("a", "=", "x\"y\\z")]),
            r#"{a="x\"y\\z"}"#.to_owned()
        );
    }

    #[test]
    fn count_once_names_every_edge_label() {
        let q = counted(&[], &Scope::namespace(Some("shop")), "7d");
        assert!(q.contains("reporter=\"destination\", destination_workload_namespace=\"shop\""));
        assert!(q.contains(
            "reporter=\"source\", destination_workload_namespace=\"unknown\", source_workload_namespace=\"shop\""
        ));
        assert!(q.contains("unless on (source_workload, source_workload_namespace, destination_workload, destination_workload_namespace, destination_port, connection_security_policy, expected_security_policy, verdict)"));
        assert!(q.contains("[7d] offset 7d"));
    }
}
