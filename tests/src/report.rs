//! `mtls-auditor report` under test: a synthetic cluster's counters with known
//! truth (several nodes over a week, one restarting, one stopping halfway, one
//! never up), written as OpenMetrics for `promtool tsdb create-blocks-from
//! openmetrics`; a real Prometheus on a TSDB; the report command; and what its
//! JSON answers.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{Child, Record, Spawn, agent_bin, wait_for};

/// Prometheus over the synthetic TSDB.
pub const SYNTH_PROM: &str = "127.0.0.1:19141";

pub const DAY: i64 = 86_400;
pub const WINDOW: i64 = 7 * DAY;
/// Scrape interval of the synthetic data.
pub const SCRAPE: i64 = 180;

pub fn approx(got: f64, want: f64) -> bool {
    (got - want).abs() <= (want * 0.01).max(1.0)
}

pub fn s(v: &Record, k: &str) -> String {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned()
}

pub fn n(v: &Record, k: &str) -> f64 {
    v.get(k).and_then(Record::as_f64).unwrap_or(f64::NAN)
}

pub fn unix_of(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

pub fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix as u64)).to_string()
}

// --- the synthetic cluster -------------------------------------------------

/// An agent: when it ran, when it was down (restarting: `up` 0, counters reset).
pub struct Node {
    pub instance: &'static str,
    /// Stopped reporting (the node went away) at this time.
    pub stop: Option<i64>,
    /// Down from .0 to .1, then restarted with fresh counters.
    pub down: Option<(i64, i64)>,
    /// A scrape target that was never up.
    pub never_up: bool,
}

impl Node {
    pub fn running(&self, data_start: i64, t: i64) -> bool {
        !self.never_up
            && t >= data_start
            && self.stop.is_none_or(|s| t < s)
            && self.down.is_none_or(|(a, b)| t < a || t >= b)
    }

    pub fn process_start(&self, data_start: i64, t: i64) -> i64 {
        match self.down {
            Some((_, b)) if t >= b => b,
            _ => data_start,
        }
    }
}

/// One connection series and the end times of its connections.
pub struct Def {
    pub node: usize,
    pub reporter: &'static str,
    pub source: (&'static str, &'static str),
    pub destination: (&'static str, &'static str),
    pub port: &'static str,
    pub observed: &'static str,
    pub expected: &'static str,
    pub verdict: &'static str,
    pub events: Vec<i64>,
}

pub struct World {
    pub end: i64,
    pub start: i64,
    pub data_start: i64,
    pub nodes: Vec<Node>,
    pub defs: Vec<Def>,
}

impl World {
    pub fn new(end: i64) -> Self {
        let start = end - WINDOW;
        let at = |days: f64| start + (days * DAY as f64) as i64;
        let nodes = vec![
            Node {
                instance: "node-1:9477",
                stop: None,
                down: None,
                never_up: false,
            },
            Node {
                instance: "node-2:9477",
                stop: None,
                down: Some((at(2.0), at(2.0) + 1800)),
                never_up: false,
            },
            Node {
                instance: "node-3:9477",
                stop: Some(at(3.5)),
                down: None,
                never_up: false,
            },
            Node {
                instance: "node-4:9477",
                stop: None,
                down: None,
                never_up: true,
            },
        ];
        // Connections every `period` minutes from `from` to `to` days (window
        // relative), first one `offset` minutes in.
        let every = |from: f64, to: f64, period: i64, offset: i64| -> Vec<i64> {
            let (a, b) = (at(from) + offset * 60, at(to));
            (0..)
                .map(|k| a + k * period * 60)
                .take_while(|t| *t < b)
                .collect()
        };
        // node reporter source destination port observed expected verdict, and
        // the end times of the connections.
        let table: Vec<(&str, Vec<i64>)> = vec![
            // node-1: pay/checkout (STRICT), shop/frontend (PERMISSIVE), the
            // client side of external and cross-node connections.
            (
                "0 destination shop/web pay/checkout 8443 mutual_tls mutual_tls compliant",
                every(-0.25, 7.0, 10, 3),
            ),
            (
                "0 destination legacy/batch pay/checkout 8443 none mutual_tls rejected",
                every(1.0, 6.0, 60, 7),
            ),
            (
                "0 destination shop/cron pay/checkout 8443 tls mutual_tls rejected",
                every(0.5, 7.0, 360, 11),
            ),
            (
                "0 destination shop/web pay/checkout 8443 unknown mutual_tls unknown",
                every(3.0, 3.1, 25, 1),
            ),
            (
                "0 destination shop/web shop/frontend 8080 mutual_tls none compliant",
                every(-0.25, 7.0, 15, 2),
            ),
            (
                "0 destination legacy/batch shop/frontend 8080 none none permissive",
                every(0.2, 6.5, 30, 4),
            ),
            (
                "0 destination pay/checkout shop/frontend 8080 tls none compliant",
                every(1.0, 7.0, 120, 5),
            ),
            // Plaintext before the window only: not a client of this week.
            (
                "0 destination legacy/old shop/frontend 8080 none none permissive",
                every(-0.2, -0.1, 30, 0),
            ),
            (
                "0 source shop/web unknown/unknown 443 tls tls compliant",
                every(-0.25, 7.0, 60, 9),
            ),
            (
                "0 source shop/web unknown/unknown 80 none tls violation",
                every(0.3, 6.8, 240, 13),
            ),
            // Cross-node: the client side of shop/catalog's connections (counted at node-2).
            (
                "0 source shop/web shop/catalog 9090 mutual_tls none compliant",
                every(-0.25, 7.0, 20, 6),
            ),
            // A local server no workload owns, seen from both ends: counted once.
            (
                "0 destination shop/web unknown/unknown 7000 none none compliant",
                every(2.0, 5.0, 90, 8),
            ),
            (
                "0 source shop/web unknown/unknown 7000 none none compliant",
                every(2.0, 5.0, 90, 8),
            ),
            // node-2 (restarts on day 2): catalog, search, pay/ledger.
            (
                "1 destination shop/web shop/catalog 9090 mutual_tls none compliant",
                every(-0.25, 7.0, 20, 6),
            ),
            (
                "1 destination shop/web shop/search 9200 mutual_tls none compliant",
                every(-0.25, 7.0, 30, 10),
            ),
            (
                "1 destination legacy/once shop/search 9200 none none permissive",
                vec![at(4.3)],
            ),
            (
                "1 destination legacy/batch pay/ledger 5432 none mutual_tls violation",
                every(0.5, 6.5, 180, 14),
            ),
            (
                "1 destination pay/checkout pay/ledger 5432 mutual_tls mutual_tls compliant",
                every(-0.25, 7.0, 10, 4),
            ),
            // node-3 (stops reporting halfway): legacy/reports (DISABLE), shop/cart.
            (
                "2 destination shop/web legacy/reports 8080 none none compliant",
                every(-0.25, 7.0, 30, 12),
            ),
            (
                "2 destination shop/web shop/cart 7070 mutual_tls none compliant",
                every(-0.25, 7.0, 30, 15),
            ),
        ];
        let data_start = start - DAY / 4 - 600;
        let defs = table
            .into_iter()
            .map(|(spec, events)| {
                let f: Vec<&'static str> = spec.split(' ').collect();
                let end = |s: &'static str| s.split_once('/').expect("namespace/workload");
                let node: usize = f[0].parse().expect("node");
                // Connections while the agent was not running were never counted.
                let events = events
                    .into_iter()
                    .filter(|t| nodes[node].running(data_start, *t))
                    .collect();
                Def {
                    node,
                    reporter: f[1],
                    source: end(f[2]),
                    destination: end(f[3]),
                    port: f[4],
                    observed: f[5],
                    expected: f[6],
                    verdict: f[7],
                    events,
                }
            })
            .collect();
        Self {
            end,
            start,
            data_start,
            nodes,
            defs,
        }
    }

    /// Connections of `d` in the window: the truth.
    pub fn truth(&self, d: &Def) -> f64 {
        d.events
            .iter()
            .filter(|t| **t > self.start && **t <= self.end)
            .count() as f64
    }

    pub fn last(&self, d: &Def) -> Option<i64> {
        d.events
            .iter()
            .copied()
            .filter(|t| *t > self.start && *t <= self.end)
            .max()
    }

    /// The series counted under the count-once rule (its own model of it): server
    /// side, plus client side of destinations no agent saw.
    pub fn counted(&self) -> Vec<&Def> {
        self.defs
            .iter()
            .filter(|d| {
                d.reporter == "destination"
                    || (d.destination.0 == "unknown"
                        && !self.defs.iter().any(|o| {
                            o.reporter == "destination"
                                && o.source == d.source
                                && o.destination == d.destination
                                && o.port == d.port
                                && o.observed == d.observed
                                && o.verdict == d.verdict
                        }))
            })
            .collect()
    }

    pub fn openmetrics(&self) -> String {
        let mut out = String::from(
            "# HELP mtls_auditor_connections TCP connections seen.\n# TYPE mtls_auditor_connections counter\n",
        );
        let times: Vec<i64> = (0..)
            .map(|k| self.data_start + k * SCRAPE)
            .take_while(|t| *t <= self.end - 60)
            .collect();
        for d in &self.defs {
            let node = &self.nodes[d.node];
            let labels = format!(
                "reporter=\"{}\",source_workload=\"{}\",source_workload_namespace=\"{}\",destination_workload=\"{}\",destination_workload_namespace=\"{}\",destination_port=\"{}\",connection_security_policy=\"{}\",expected_security_policy=\"{}\",verdict=\"{}\",instance=\"{}\",job=\"mtls-auditor\"",
                d.reporter,
                d.source.1,
                d.source.0,
                d.destination.1,
                d.destination.0,
                d.port,
                d.observed,
                d.expected,
                d.verdict,
                node.instance
            );
            for &t in &times {
                if !node.running(self.data_start, t) {
                    continue;
                }
                let since = node.process_start(self.data_start, t);
                let v = d.events.iter().filter(|e| **e > since && **e <= t).count();
                // A series exists once its first connection is counted.
                if v > 0 {
                    let _ = writeln!(out, "mtls_auditor_connections_total{{{labels}}} {v} {t}");
                }
            }
        }
        out.push_str("# HELP mtls_auditor_build_info Build information; always 1.\n# TYPE mtls_auditor_build_info gauge\n");
        for node in &self.nodes {
            for &t in &times {
                if node.running(self.data_start, t) {
                    let _ = writeln!(
                        out,
                        "mtls_auditor_build_info{{version=\"0.1.0\",rustc=\"1.99.1\",instance=\"{}\",job=\"mtls-auditor\"}} 1 {t}",
                        node.instance
                    );
                }
            }
        }
        out.push_str("# HELP up Scrape target health.\n# TYPE up gauge\n");
        for node in &self.nodes {
            for &t in &times {
                // A stopped node is no longer a target; a restarting one is down.
                if node.stop.is_some_and(|s| t >= s) {
                    continue;
                }
                let up = u8::from(node.running(self.data_start, t));
                let _ = writeln!(
                    out,
                    "up{{instance=\"{}\",job=\"mtls-auditor\"}} {up} {t}",
                    node.instance
                );
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

pub fn prometheus(dir: &Path, listen: &str, scrape: Option<&str>) -> Child {
    let config = dir.join("prometheus.yml");
    let mut yml = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    if let Some(target) = scrape {
        let _ = write!(
            yml,
            "scrape_configs:\n  - job_name: mtls-auditor\n    static_configs:\n      - targets: ['{target}']\n"
        );
    }
    std::fs::write(&config, yml).expect("prometheus.yml");
    let child = Spawn::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--storage.tsdb.retention.time=30d")
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let ready = wait_for(Duration::from_secs(60), || {
        ureq::get(&format!("http://{listen}/-/ready"))
            .call()
            .ok()
            .map(|_| ())
    });
    assert!(
        ready.is_some(),
        "Prometheus did not become ready on {listen}"
    );
    child
}

pub fn query(listen: &str, q: &str, time: i64) -> Vec<Record> {
    let body = ureq::post(&format!("http://{listen}/api/v1/query"))
        .send_form([("query", q), ("time", &time.to_string())])
        .unwrap_or_else(|e| panic!("query {q}: {e}"))
        .into_body()
        .read_to_string()
        .expect("body");
    let v: Record = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "success", "query {q}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

pub fn value(r: &Record) -> f64 {
    r["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn report(args: &[&str]) -> std::process::Output {
    Spawn::new(agent_bin().to_str().expect("utf8"))
        .arg("report")
        .args(args)
        .env("MTLS_AUDITOR_LOG", "warn")
        .run(Duration::from_secs(180))
}

pub fn report_ok(args: &[&str]) -> String {
    let out = report(args);
    crate::stdout_of_success(&out, &format!("mtls-auditor report {args:?}"))
}

pub fn server<'a>(r: &'a Record, name: &str) -> &'a Record {
    r["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|x| format!("{}/{}:{}", s(x, "namespace"), s(x, "workload"), x["port"]) == name)
        .unwrap_or_else(|| panic!("no server {name} in {:#}", r["servers"]))
}

/// Client name -> the client object, of `list`.
pub fn clients(v: &Record) -> BTreeMap<String, Record> {
    v.as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            (
                format!("{}/{}", s(c, "namespace"), s(c, "workload")),
                c.clone(),
            )
        })
        .collect()
}

/// Checks one server of the report against the truth of its series.
pub fn synthetic(dir: &Path) -> (World, Child) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let world = World::new(now / 60 * 60 - 120);
    let om = dir.join("data.om");
    std::fs::write(&om, world.openmetrics()).expect("write OpenMetrics");
    Spawn::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&om)
        .arg(dir.join("tsdb"))
        .run_ok(Duration::from_secs(300));
    let prom = prometheus(dir, SYNTH_PROM, None);
    (world, prom)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}
