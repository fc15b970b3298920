//! The report from the queries' answers: each counted series summed into its
//! server, client and violation; agents' coverage from their presence. A pure
//! function of the answers (and of the modes), so it is tested without a
//! Prometheus.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    answer::{Sample, Series},
    model::{
        Agent, Answers, Client, Coverage, Edge, Gap, Names, Namespace, Port, PrometheusInfo,
        Report, SCHEMA, Server, SharePoint, Target, Violation, Window, rfc3339,
    },
    modes::{Mode, Modes},
};

/// A count from Prometheus' estimate: never rounded down to zero when something
/// was counted.
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        (v.round() as u64).max(1)
    } else {
        0
    }
}

fn instance(l: &BTreeMap<String, String>) -> String {
    l.get("instance")
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

type Key = (Edge, String);

#[derive(Default)]
struct ClientAcc {
    none: f64,
    tls: f64,
    first: Option<f64>,
    last: Option<f64>,
}

impl ClientAcc {
    fn add(&mut self, e: &Edge, v: f64, first: Option<f64>, last: Option<f64>) {
        if e.observed == "tls" {
            self.tls += v;
        } else {
            self.none += v;
        }
        self.first = min_opt(self.first, first);
        self.last = max_opt(self.last, last);
    }

    fn finish(self, (namespace, workload): (String, String)) -> Client {
        let (none, tls) = (count(self.none), count(self.tls));
        Client {
            namespace,
            workload,
            connections: none + tls,
            plaintext_connections: none,
            one_way_tls_connections: tls,
            first_seen: self.first.map(rfc3339),
            last_seen: self.last.map(rfc3339),
        }
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Default)]
struct ServerAcc {
    total: f64,
    mutual_tls: f64,
    unknown: f64,
    weak: BTreeMap<(String, String), ClientAcc>,
    refused: BTreeMap<(String, String), ClientAcc>,
    instances: BTreeSet<String>,
    series: Vec<(Edge, f64)>,
}

/// Agents' coverage from the presence series: gaps, shares, who stopped.
fn coverage_agents(a: &Answers, w: &Window, notes: &mut Vec<String>) -> Vec<Agent> {
    let step = w.step_seconds as f64;
    let steps = w.steps();
    let up: BTreeMap<String, f64> =
        a.up.iter()
            .map(|s| (instance(&s.labels), s.value))
            .collect();
    let mut agents = Vec::new();
    for s in &a.presence {
        let present: BTreeSet<i64> = s
            .points
            .iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(t, _)| t.round() as i64)
            .collect();
        let mut gaps: Vec<(f64, f64)> = Vec::new();
        for &t in &steps {
            if present.contains(&(t.round() as i64)) {
                continue;
            }
            let from = (t - a.presence_window as f64).max(w.start_unix);
            match gaps.last_mut() {
                Some(g) if g.1 + step >= t - 0.5 => g.1 = t,
                _ => gaps.push((from, t)),
            }
        }
        let missing = steps
            .iter()
            .filter(|t| !present.contains(&(t.round() as i64)))
            .count();
        let stopped = gaps
            .last()
            .zip(steps.last())
            .is_some_and(|(g, last)| g.1 >= last - 0.5);
        let inst = instance(&s.labels);
        agents.push(Agent {
            reported_share: if steps.is_empty() {
                0.0
            } else {
                1.0 - missing as f64 / steps.len() as f64
            },
            up_share: up.get(&inst).copied(),
            gaps: gaps
                .iter()
                .map(|(f, t)| Gap {
                    from: rfc3339(*f),
                    to: rfc3339(*t),
                    seconds: (t - f).round() as u64,
                })
                .collect(),
            stopped_reporting: stopped,
            instance: inst,
        });
    }
    if !agents.is_empty()
        && agents
            .iter()
            .all(|g| !g.gaps.is_empty() && g.gaps[0].from == w.start)
    {
        notes.push(format!(
            "no agent sent anything at the start of the window ({}): Prometheus may not keep data that old (retention), or the agents were not deployed yet",
            w.start
        ));
    }
    agents.sort_by(|a, b| a.instance.cmp(&b.instance));
    agents
}

fn namespaces(a: &Answers, servers: &[Server]) -> Vec<Namespace> {
    let mut out: BTreeMap<String, Namespace> = BTreeMap::new();
    for s in servers {
        let n = out.entry(s.namespace.clone()).or_insert_with(|| Namespace {
            namespace: s.namespace.clone(),
            servers: 0,
            ready_for_strict: 0,
            mutual_tls_share: None,
            share_over_time: Vec::new(),
        });
        n.servers += 1;
        n.ready_for_strict += usize::from(s.ready_for_strict);
    }
    for n in out.values_mut() {
        let (all, mtls): (u64, u64) = servers
            .iter()
            .filter(|s| s.namespace == n.namespace)
            .fold((0, 0), |(a, m), s| {
                (a + s.connections, m + s.mutual_tls_connections)
            });
        n.mutual_tls_share = (all > 0).then(|| mtls as f64 / all as f64);
        let of = |series: &[Series]| -> BTreeMap<i64, f64> {
            series
                .iter()
                .filter(|s| {
                    s.labels
                        .get("destination_workload_namespace")
                        .map(String::as_str)
                        == Some(n.namespace.as_str())
                })
                .flat_map(|s| s.points.iter().map(|(t, v)| (t.round() as i64, *v)))
                .collect()
        };
        let all = of(&a.namespace_all);
        let mtls = of(&a.namespace_mutual_tls);
        n.share_over_time = all
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(t, v)| SharePoint {
                time: rfc3339(*t as f64),
                unix: *t as f64,
                mutual_tls_share: (mtls.get(t).copied().unwrap_or(0.0) / v).clamp(0.0, 1.0),
                connections: count(*v),
            })
            .collect();
    }
    out.into_values().collect()
}

/// Builds the report. `namespace`: the `--namespace` filter, for the record.
pub fn build(
    a: &Answers,
    window: Window,
    prometheus: PrometheusInfo,
    namespace: Option<String>,
    modes: &Modes,
    names: Names<'_>,
) -> Report {
    let Names {
        overflow,
        build_info,
    } = names;
    let seen = |v: &[Sample]| -> BTreeMap<Key, f64> {
        v.iter()
            .filter(|s| s.value.is_finite() && s.value > 0.0)
            .map(|s| ((Edge::from_labels(&s.labels), instance(&s.labels)), s.value))
            .collect()
    };
    let first = seen(&a.first_seen);
    let last = seen(&a.last_seen);
    let mut servers: BTreeMap<(String, String, Port), ServerAcc> = BTreeMap::new();
    let mut violations: BTreeMap<(String, String, Port, String, String, String), ClientAcc> =
        BTreeMap::new();
    let (mut total, mut unknown) = (0.0, 0.0);
    for s in &a.counts {
        let v = if s.value.is_finite() { s.value } else { 0.0 };
        if v <= 0.0 {
            continue;
        }
        let edge = Edge::from_labels(&s.labels);
        let inst = instance(&s.labels);
        let key = (edge.clone(), inst.clone());
        let (f, l) = (first.get(&key).copied(), last.get(&key).copied());
        total += v;
        if edge.observed == "unknown" {
            unknown += v;
        }
        if edge.verdict == "violation" {
            violations
                .entry((
                    format!("{}/{}", edge.source_namespace, edge.source_workload),
                    format!(
                        "{}/{}",
                        edge.destination_namespace, edge.destination_workload
                    ),
                    Port::parse(&edge.port),
                    edge.observed.clone(),
                    edge.expected.clone(),
                    edge.reporter.clone(),
                ))
                .or_default()
                .add(&edge, v, f, l);
        }
        if edge.reporter != "destination" {
            continue;
        }
        let acc = servers
            .entry((
                edge.destination_namespace.clone(),
                edge.destination_workload.clone(),
                Port::parse(&edge.port),
            ))
            .or_default();
        acc.total += v;
        acc.instances.insert(inst);
        match edge.observed.as_str() {
            "mutual_tls" => acc.mutual_tls += v,
            "unknown" => acc.unknown += v,
            _ => {}
        }
        let client = (edge.source_namespace.clone(), edge.source_workload.clone());
        if edge.weak_accepted() {
            acc.weak.entry(client).or_default().add(&edge, v, f, l);
        } else if edge.verdict == "rejected" {
            acc.refused.entry(client).or_default().add(&edge, v, f, l);
        }
        acc.series.push((edge, v));
    }

    let mut notes = Vec::new();
    let agents = coverage_agents(a, &window, &mut notes);
    let gappy: BTreeMap<&str, &Agent> = agents
        .iter()
        .filter(|g| !g.gaps.is_empty())
        .map(|g| (g.instance.as_str(), g))
        .collect();
    let mut out_servers: Vec<Server> = servers
        .into_iter()
        .map(|((ns, workload, port), acc)| {
            let port_num = match port {
                Port::Number(n) => Some(n),
                Port::Other(_) => None,
            };
            let Mode { mode, source } = modes.resolve(&ns, &workload, port_num, &acc.series);
            let mut caveats = Vec::new();
            if acc.unknown > 0.0 {
                caveats.push(format!(
                    "{} connection(s) of unknown class: the bytes did not show what they were, they may be plaintext",
                    count(acc.unknown)
                ));
            }
            for inst in &acc.instances {
                if let Some(g) = gappy.get(inst.as_str()) {
                    let missing: u64 = g.gaps.iter().map(|x| x.seconds).sum();
                    caveats.push(if g.stopped_reporting {
                        format!(
                            "agent {inst} stopped reporting at {}: nothing after that is known",
                            g.gaps.last().map_or("?", |x| x.from.as_str())
                        )
                    } else {
                        format!(
                            "agent {inst} sent nothing for {} of the window",
                            humantime::format_duration(Duration::from_secs(missing))
                        )
                    });
                }
            }
            if workload == "unknown" || workload == overflow {
                caveats.push(format!(
                    "workload `{workload}`: several servers may be counted together here"
                ));
            }
            let finish = |m: BTreeMap<(String, String), ClientAcc>| {
                let mut v: Vec<Client> = m.into_iter().map(|(k, c)| c.finish(k)).collect();
                v.sort_by_key(|c| std::cmp::Reverse(c.connections));
                v
            };
            let plaintext_clients = finish(acc.weak);
            Server {
                ready_for_strict: plaintext_clients.is_empty(),
                connections: count(acc.total),
                mutual_tls_connections: count(acc.mutual_tls),
                mutual_tls_share: if acc.total > 0.0 {
                    (acc.mutual_tls / acc.total).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                unknown_connections: count(acc.unknown),
                plaintext_clients,
                refused_clients: finish(acc.refused),
                reported_by: acc.instances.into_iter().collect(),
                caveats,
                namespace: ns,
                workload,
                port,
                mode,
                mode_source: source,
            }
        })
        .collect();
    // Those that are not ready first.
    out_servers.sort_by(|a, b| {
        (a.ready_for_strict, &a.namespace, &a.workload, &a.port).cmp(&(
            b.ready_for_strict,
            &b.namespace,
            &b.workload,
            &b.port,
        ))
    });
    let mut out_violations: Vec<Violation> = violations
        .into_iter()
        .map(
            |((source, destination, port, observed, expected, reporter), c)| {
                let c = c.finish((String::new(), String::new()));
                Violation {
                    source,
                    destination,
                    port,
                    observed,
                    expected,
                    connections: c.connections,
                    first_seen: c.first_seen,
                    last_seen: c.last_seen,
                    reporter,
                }
            },
        )
        .collect();
    out_violations.sort_by_key(|v| std::cmp::Reverse(v.connections));

    let never_up: Vec<Target> =
        a.up.iter()
            .filter(|s| s.value == 0.0)
            .map(|s| Target {
                job: s.labels.get("job").cloned().unwrap_or_default(),
                instance: instance(&s.labels),
            })
            .collect();
    if agents.is_empty() {
        notes.push(format!(
            "no {build_info} series in the window: which agents reported cannot be told"
        ));
    }
    notes.push(
        "incomplete captures cannot be counted from Prometheus: the connection counters carry no capture-outcome label (a connection whose refusal was not seen is counted as a violation, never as rejected)".into(),
    );
    let coverage = Coverage {
        agents_reporting: agents.iter().filter(|g| g.reported_share > 0.0).count(),
        agents_with_gaps: gappy.len(),
        agents,
        targets_never_up: never_up,
        connections: count(total),
        unknown_connections: count(unknown),
        unknown_share: (total > 0.0).then(|| unknown / total),
        incomplete_share: None,
        notes,
    };
    Report {
        schema: SCHEMA,
        prometheus,
        namespaces: namespaces(a, &out_servers),
        window,
        namespace,
        modes_from: modes.describe(),
        servers: out_servers,
        violations: out_violations,
        coverage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn series(
        instance: &str,
        src: &str,
        dst: &str,
        observed: &str,
        verdict: &str,
    ) -> BTreeMap<String, String> {
        let (sns, sw) = src.split_once('/').unwrap_or(("unknown", src));
        let (dns, dw) = dst.split_once('/').unwrap_or(("unknown", dst));
        labels(&[
            ("reporter", "destination"),
            ("source_workload_namespace", sns),
            ("source_workload", sw),
            ("destination_workload_namespace", dns),
            ("destination_workload", dw),
            ("destination_port", "8080"),
            ("connection_security_policy", observed),
            ("expected_security_policy", "none"),
            ("verdict", verdict),
            ("instance", instance),
        ])
    }

    const NAMES: Names<'static> = Names {
        overflow: "~other",
        build_info: "mtls_auditor_build_info",
    };

    fn window() -> Window {
        Window {
            start: rfc3339(1000.0),
            end: rfc3339(1600.0),
            seconds: 600,
            step_seconds: 60,
            start_unix: 1000.0,
            end_unix: 1600.0,
        }
    }

    #[test]
    fn readiness_clients_and_gaps() {
        let mut a = Answers {
            presence_window: 60,
            ..Answers::default()
        };
        a.counts = vec![
            Sample {
                labels: series("n1", "ns/a", "ns/s", "mutual_tls", "compliant"),
                value: 9.0,
            },
            Sample {
                labels: series("n1", "ns/b", "ns/s", "none", "permissive"),
                value: 0.2,
            },
            Sample {
                labels: series("n1", "ns/b", "ns/s", "tls", "compliant"),
                value: 2.0,
            },
            Sample {
                labels: series("n2", "ns/c", "ns/t", "none", "rejected"),
                value: 3.0,
            },
            Sample {
                labels: series("n2", "ns/d", "ns/t", "mutual_tls", "compliant"),
                value: f64::NAN,
            },
        ];
        a.last_seen = vec![Sample {
            labels: series("n1", "ns/b", "ns/s", "none", "permissive"),
            value: 1500.0,
        }];
        // n1 reports every step; n2 stops after its third.
        let steps = window().steps();
        assert_eq!(steps.len(), 10);
        assert_eq!(steps.last(), Some(&1600.0));
        a.presence = vec![
            Series {
                labels: labels(&[("instance", "n1")]),
                points: steps.iter().map(|t| (*t, 1.0)).collect(),
            },
            Series {
                labels: labels(&[("instance", "n2")]),
                points: steps[..3].iter().map(|t| (*t, 1.0)).collect(),
            },
        ];
        let r = build(
            &a,
            window(),
            PrometheusInfo {
                url: "u".into(),
                version: None,
            },
            None,
            &Modes::Inferred,
            NAMES,
        );
        assert_eq!(r.servers.len(), 2);
        // Not ready first: s accepted plaintext (a fraction of one still counts as one)
        // and one-way TLS from b.
        let s = &r.servers[0];
        assert_eq!((s.workload.as_str(), s.ready_for_strict), ("s", false));
        assert_eq!(s.mode, "PERMISSIVE");
        let b = &s.plaintext_clients[0];
        assert_eq!(
            (
                b.plaintext_connections,
                b.one_way_tls_connections,
                b.connections
            ),
            (1, 2, 3)
        );
        assert_eq!(b.last_seen.as_deref(), Some(rfc3339(1500.0).as_str()));
        let t = &r.servers[1];
        assert!(t.ready_for_strict);
        assert_eq!(t.refused_clients[0].connections, 3);
        assert_eq!(t.connections, 3, "a NaN count is no count");
        assert!(
            t.caveats
                .iter()
                .any(|c| c.contains("agent n2 stopped reporting")),
            "{:?}",
            t.caveats
        );
        let n2 = r
            .coverage
            .agents
            .iter()
            .find(|g| g.instance == "n2")
            .expect("n2");
        assert!(n2.stopped_reporting);
        assert!((n2.reported_share - 0.3).abs() < 1e-9);
        assert_eq!(n2.gaps.len(), 1);
        assert_eq!(r.coverage.agents_with_gaps, 1);
        assert!(r.coverage.incomplete_share.is_none());
    }

    #[test]
    fn broken_timestamps_still_print() {
        assert_eq!(rfc3339(f64::INFINITY), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-5.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1e300), "9999-12-31T23:59:59Z");
    }
}
