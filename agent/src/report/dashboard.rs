//! dashboards/strict-readiness.json is built from the report's own queries: this
//! test builds the dashboard and compares it with the file, so the two cannot
//! drift. `MTLS_AUDITOR_WRITE_DASHBOARD=1 cargo test ... dashboard` rewrites the
//! file after a change here.

use serde_json::{Value, json};

use super::queries::{self, Scope, m};

const RANGE: &str = "$__range";
const RATE: &str = "$__rate_interval";

fn scope() -> Scope {
    Scope {
        namespace: Some(("=~", "$namespace".into())),
    }
}

fn target(expr: String, instant: bool, legend: Option<&str>) -> Value {
    let mut t = json!({
        "refId": "A",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
    });
    if instant {
        t["instant"] = json!(true);
        t["range"] = json!(false);
        t["format"] = json!("table");
    }
    if let Some(l) = legend {
        t["legendFormat"] = json!(l);
    }
    t
}

struct Panel {
    kind: &'static str,
    title: &'static str,
    description: &'static str,
    pos: (u32, u32, u32, u32),
    expr: String,
    unit: Option<&'static str>,
    legend: Option<&'static str>,
}

fn panel(id: usize, p: Panel) -> Value {
    let (x, y, w, h) = p.pos;
    let table = p.kind == "table";
    let mut defaults = json!({});
    if let Some(u) = p.unit {
        defaults["unit"] = json!(u);
    }
    let mut v = json!({
        "id": id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(p.expr, table, p.legend)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
    });
    if table {
        v["transformations"] =
            json!([{"id": "organize", "options": {"excludeByName": {"Time": true}}}]);
    }
    v
}

const SERVER: &str = "destination_workload_namespace, destination_workload, destination_port";
const CLIENT: &str = "source_workload_namespace, source_workload";

pub fn build() -> Value {
    let s = scope();
    let weak = queries::weak_accepted();
    let counted = |extra: &[queries::Matcher], w: &str| queries::counted(extra, &s, w);
    let dest = |extra: &[queries::Matcher], w: &str| queries::at_servers(extra, &s, w);
    let mtls = [m("connection_security_policy", "=", "mutual_tls")];
    let unknown = [m("connection_security_policy", "=", "unknown")];
    let build_info = queries::build_info_metric();
    let panels = vec![
        Panel {
            kind: "stat",
            title: "Servers not ready for STRICT",
            description: "Servers (namespace, workload, port) that accepted plaintext or one-way TLS in the time range: switching them to STRICT would refuse those clients.",
            pos: (0, 0, 6, 5),
            expr: format!(
                "count(sum by ({SERVER}) ({}) > 0) or vector(0)",
                dest(&weak, RANGE)
            ),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "stat",
            title: "Clients STRICT would refuse",
            description: "Source workloads that sent accepted plaintext or one-way TLS in the time range.",
            pos: (6, 0, 6, 5),
            expr: format!(
                "count(sum by ({CLIENT}) ({}) > 0) or vector(0)",
                dest(&weak, RANGE)
            ),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "stat",
            title: "Connections that are mutual TLS",
            description: "Share of the connections (each counted once) whose client presented a certificate.",
            pos: (12, 0, 6, 5),
            expr: format!(
                "sum({}) / sum({})",
                counted(&mtls, RANGE),
                counted(&[], RANGE)
            ),
            unit: Some("percentunit"),
            legend: None,
        },
        Panel {
            kind: "stat",
            title: "Connections of unknown class",
            description: "Share of connections whose bytes did not tell what they were: readiness cannot be proven for them.",
            pos: (18, 0, 6, 5),
            expr: format!(
                "(sum({}) or vector(0)) / sum({})",
                counted(&unknown, RANGE),
                counted(&[], RANGE)
            ),
            unit: Some("percentunit"),
            legend: None,
        },
        Panel {
            kind: "table",
            title: "Clients sending plaintext or one-way TLS, by server",
            description: "What STRICT would refuse: accepted connections that were plaintext (none) or TLS without a client certificate, in the time range.",
            pos: (0, 5, 24, 8),
            expr: format!(
                "sum by ({SERVER}, {CLIENT}, connection_security_policy) ({}) > 0",
                dest(&weak, RANGE)
            ),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "table",
            title: "Refused clients, by server",
            description: "Clients whose attempts the server refused: for a STRICT server, the clients failing now.",
            pos: (0, 13, 24, 6),
            expr: format!(
                "sum by ({SERVER}, {CLIENT}, connection_security_policy) ({}) > 0",
                dest(&[m("verdict", "=", "rejected")], RANGE)
            ),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "table",
            title: "Violations",
            description: "Every edge that broke policy in the time range: weaker than required, and accepted.",
            pos: (0, 19, 24, 6),
            expr: format!(
                "sum by ({CLIENT}, {SERVER}, connection_security_policy, expected_security_policy) ({}) > 0",
                counted(&[m("verdict", "=", "violation")], RANGE)
            ),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "table",
            title: "Mutual-TLS share by server",
            description: "Share of each server's connections that were mutual TLS in the time range.",
            pos: (0, 25, 12, 8),
            expr: format!(
                "sum by ({SERVER}) ({}) / sum by ({SERVER}) ({})",
                dest(&mtls, RANGE),
                dest(&[], RANGE)
            ),
            unit: Some("percentunit"),
            legend: None,
        },
        Panel {
            kind: "timeseries",
            title: "Mutual-TLS share by namespace",
            description: "Share of the connections to each namespace's servers that were mutual TLS, interval by interval.",
            pos: (12, 25, 12, 8),
            expr: format!(
                "{} / {}",
                queries::namespace_connections(&s, true, RATE),
                queries::namespace_connections(&s, false, RATE)
            ),
            unit: Some("percentunit"),
            legend: Some("{{destination_workload_namespace}}"),
        },
        Panel {
            kind: "timeseries",
            title: "Accepted plaintext and one-way TLS, by server",
            description: "When the clients STRICT would refuse connected.",
            pos: (0, 33, 24, 8),
            expr: format!("sum by ({SERVER}) ({})", dest(&weak, RATE)),
            unit: None,
            legend: Some(
                "{{destination_workload_namespace}}/{{destination_workload}}:{{destination_port}}",
            ),
        },
        Panel {
            kind: "stat",
            title: "Agents reporting",
            description: "Agents with samples in the time range. Compare with the number of nodes: a node without an agent is a blind spot.",
            pos: (0, 41, 6, 6),
            expr: format!("count(count by (instance) (last_over_time({build_info}[{RANGE}])))"),
            unit: None,
            legend: None,
        },
        Panel {
            kind: "timeseries",
            title: "Agents reporting over time",
            description: "A drop is an agent that stopped reporting: readiness in that interval rests on missing data.",
            pos: (6, 41, 9, 6),
            expr: format!("count({})", queries::presence(RATE)),
            unit: None,
            legend: Some("agents"),
        },
        Panel {
            kind: "table",
            title: "Scrape targets of the agents' jobs: share of scrapes up",
            description: "Average of `up` over the time range: 1 when every scrape succeeded, 0 when none did; below 1, the counts have gaps.",
            pos: (15, 41, 9, 6),
            expr: queries::up_share(RANGE),
            unit: Some("percentunit"),
            legend: None,
        },
    ];
    json!({
        "uid": "mtls-auditor-strict-readiness",
        "title": "mTLS auditor: STRICT readiness",
        "description": "Before switching a workload to STRICT: which clients still send it plaintext or one-way TLS, which are refused, violations, and which agents reported. The same queries as `mtls-auditor report`; each connection is counted once.",
        "tags": ["mtls-auditor", "security"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "hide": 0, "refresh": 1},
            {
                "name": "namespace",
                "label": "Namespace",
                "type": "query",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {
                    "query": format!("label_values({}{{reporter=\"destination\"}}, destination_workload_namespace)", queries::connections_metric()),
                    "refId": "PrometheusVariableQueryEditor-VariableQuery"
                },
                "refresh": 2,
                "sort": 1,
                "includeAll": true,
                "allValue": ".*",
                "multi": false,
                "hide": 0
            }
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels.into_iter().enumerate().map(|(i, p)| panel(i + 1, p)).collect::<Vec<_>>(),
    })
}

#[test]
fn the_dashboard_runs_the_reports_queries() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards/strict-readiness.json");
    let want = build();
    if std::env::var_os("MTLS_AUDITOR_WRITE_DASHBOARD").is_some() {
        let mut text = serde_json::to_string_pretty(&want).expect("JSON");
        text.push('\n');
        std::fs::write(&path, text).expect("write the dashboard");
    }
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
        .expect("the dashboard is JSON");
    assert!(
        got == want,
        "{} differs from what the report's queries build; rewrite it with MTLS_AUDITOR_WRITE_DASHBOARD=1",
        path.display()
    );
}
