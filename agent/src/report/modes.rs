//! The effective PeerAuthentication mode of each server: resolved from policy
//! (files, and the cluster's objects when there is cluster access) exactly as the
//! agent resolves it, or, without any policy, inferred from how the agents judged
//! its connections.

use std::collections::BTreeMap;

use super::model::Edge;
use crate::policy::PolicySet;

/// A server's mode and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    pub mode: String,
    pub source: String,
}

/// Workload labels by (namespace, workload), for policy selectors.
pub type Labels = BTreeMap<(String, String), BTreeMap<String, String>>;

pub enum Modes {
    /// From policy: files and/or the cluster's objects. `labels` come from the
    /// cluster's pods; the inventory of the files is asked first.
    Policy {
        set: Box<PolicySet>,
        labels: Labels,
        from: String,
    },
    /// From the agents' verdicts.
    Inferred,
}

impl Modes {
    pub fn describe(&self) -> String {
        match self {
            Self::Policy { from, .. } => from.clone(),
            Self::Inferred => {
                "inferred from the agents' verdicts (no --policy and no cluster access)".into()
            }
        }
    }

    /// The mode of server `workload` in `ns` on `port`; `series` are its
    /// destination-side series in the window (for inference).
    pub fn resolve(
        &self,
        ns: &str,
        workload: &str,
        port: Option<u16>,
        series: &[(Edge, f64)],
    ) -> Mode {
        match self {
            Self::Policy { set, labels, .. } => {
                let found = set
                    .inventory
                    .workload_by_name(ns, workload)
                    .map(|w| w.labels)
                    .or_else(|| labels.get(&(ns.to_owned(), workload.to_owned())).cloned());
                let known = found.is_some();
                let labels = found.unwrap_or_default();
                // A folded port (`~other`) can only take the workload-wide mode.
                let d = set.peer_mode(ns, &labels, port.unwrap_or(0));
                let mut source = d.source;
                if !known {
                    source.push_str(
                        " (no labels known for this workload: only namespace and mesh-wide policies applied)",
                    );
                }
                Mode {
                    mode: d.mode.as_str().to_owned(),
                    source,
                }
            }
            Self::Inferred => infer(series),
        }
    }
}

/// Without policy: PERMISSIVE when the agents judged plaintext to it as
/// permissive; STRICT when they required mutual TLS of every judged connection to
/// it; otherwise not known.
pub fn infer(series: &[(Edge, f64)]) -> Mode {
    let judged: Vec<&Edge> = series
        .iter()
        .map(|(e, _)| e)
        .filter(|e| !matches!(e.verdict.as_str(), "unknown" | "exempt"))
        .collect();
    if judged.iter().any(|e| e.verdict == "permissive") {
        return Mode {
            mode: "PERMISSIVE".into(),
            source: "inferred: the agents judged plaintext to it as permissive".into(),
        };
    }
    if !judged.is_empty() && judged.iter().all(|e| e.expected == "mutual_tls") {
        return Mode {
            mode: "STRICT".into(),
            source: "inferred: the agents required mutual TLS of every connection to it (STRICT, or a DestinationRule or TransportPolicy requirement)".into(),
        };
    }
    Mode {
        mode: "UNKNOWN".into(),
        source: if judged.is_empty() {
            "not judged: the agents ran without policy; give --policy or cluster access".into()
        } else {
            "not told by the verdicts (PERMISSIVE or DISABLE); give --policy or cluster access"
                .into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(observed: &str, expected: &str, verdict: &str) -> (Edge, f64) {
        (
            Edge {
                reporter: "destination".into(),
                source_workload: "c".into(),
                source_namespace: "n".into(),
                destination_workload: "s".into(),
                destination_namespace: "n".into(),
                port: "80".into(),
                observed: observed.into(),
                expected: expected.into(),
                verdict: verdict.into(),
            },
            1.0,
        )
    }

    #[test]
    fn inference_from_verdicts() {
        let m = infer(&[
            edge("mutual_tls", "none", "compliant"),
            edge("none", "none", "permissive"),
        ]);
        assert_eq!(m.mode, "PERMISSIVE");
        let m = infer(&[
            edge("mutual_tls", "mutual_tls", "compliant"),
            edge("none", "mutual_tls", "rejected"),
            edge("unknown", "unknown", "unknown"),
        ]);
        assert_eq!(m.mode, "STRICT");
        assert_eq!(infer(&[edge("none", "none", "compliant")]).mode, "UNKNOWN");
        let m = infer(&[edge("none", "unknown", "unknown")]);
        assert_eq!(m.mode, "UNKNOWN");
        assert!(m.source.contains("without policy"), "{}", m.source);
    }
}
