//! The report as text for people: an aligned table for the terminal, or markdown.

use std::fmt::Write as _;

use super::model::{Client, Report, Server};

/// A table: headers and rows of cells.
pub struct Grid {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Grid {
    fn aligned(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, c) in cells.iter().enumerate() {
                if i == last {
                    s.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count();
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = line(self.headers.clone());
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }

    fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        out.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| " --- |").collect::<String>()
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }
}

pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

pub fn server_name(s: &Server) -> String {
    format!("{}/{}:{}", s.namespace, s.workload, s.port)
}

fn seen(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// The sections of the report, each a title and a grid (or lines).
pub struct Section {
    pub title: String,
    pub grid: Option<Grid>,
    pub lines: Vec<String>,
}

fn client_rows(report: &Report, pick: fn(&Server) -> &Vec<Client>) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for s in &report.servers {
        for c in pick(s) {
            rows.push(vec![
                server_name(s),
                format!("{}/{}", c.namespace, c.workload),
                c.plaintext_connections.to_string(),
                c.one_way_tls_connections.to_string(),
                seen(&c.first_seen),
                seen(&c.last_seen),
            ]);
        }
    }
    rows
}

const CLIENT_HEADERS: [&str; 6] = [
    "SERVER",
    "CLIENT",
    "PLAINTEXT",
    "ONE-WAY TLS",
    "FIRST SEEN",
    "LAST SEEN",
];

pub fn header_lines(r: &Report) -> Vec<String> {
    vec![
        format!(
            "from {}{}",
            r.prometheus.url,
            r.prometheus
                .version
                .as_ref()
                .map(|v| format!(" (Prometheus {v})"))
                .unwrap_or_default()
        ),
        format!(
            "window {} .. {} ({}); times to within {}",
            r.window.start,
            r.window.end,
            humantime::format_duration(std::time::Duration::from_secs(r.window.seconds)),
            humantime::format_duration(std::time::Duration::from_secs(r.window.step_seconds))
        ),
        match &r.namespace {
            Some(ns) => format!("servers in namespace {ns}"),
            None => "servers in every namespace".into(),
        },
        format!("modes from {}", r.modes_from),
    ]
}

pub fn sections(r: &Report) -> Vec<Section> {
    let mut out = Vec::new();
    let ready = r.servers.iter().filter(|s| s.ready_for_strict).count();
    out.push(Section {
        title: format!(
            "Servers: {} seen, {ready} ready for STRICT, {} not",
            r.servers.len(),
            r.servers.len() - ready
        ),
        grid: (!r.servers.is_empty()).then(|| Grid {
            headers: vec![
                "SERVER",
                "MODE",
                "READY",
                "MTLS",
                "CONNS",
                "PLAINTEXT CLIENTS",
                "REFUSED CLIENTS",
                "CAVEATS",
            ],
            rows: r
                .servers
                .iter()
                .map(|s| {
                    vec![
                        server_name(s),
                        s.mode.clone(),
                        if s.ready_for_strict { "yes" } else { "no" }.into(),
                        percent(s.mutual_tls_share),
                        s.connections.to_string(),
                        s.plaintext_clients.len().to_string(),
                        s.refused_clients.len().to_string(),
                        s.caveats.len().to_string(),
                    ]
                })
                .collect(),
        }),
        lines: if r.servers.is_empty() {
            vec!["no server had connections in the window".into()]
        } else {
            Vec::new()
        },
    });
    let weak = client_rows(r, |s| &s.plaintext_clients);
    out.push(Section {
        title: "Clients sending plaintext or one-way TLS (STRICT would refuse them)".into(),
        lines: if weak.is_empty() {
            vec!["none".into()]
        } else {
            Vec::new()
        },
        grid: (!weak.is_empty()).then(|| Grid {
            headers: CLIENT_HEADERS.to_vec(),
            rows: weak,
        }),
    });
    let refused = client_rows(r, |s| &s.refused_clients);
    out.push(Section {
        title: "Refused clients (failing now)".into(),
        lines: if refused.is_empty() {
            vec!["none".into()]
        } else {
            Vec::new()
        },
        grid: (!refused.is_empty()).then(|| Grid {
            headers: CLIENT_HEADERS.to_vec(),
            rows: refused,
        }),
    });
    out.push(Section {
        title: format!("Violations: {}", r.violations.len()),
        lines: if r.violations.is_empty() {
            vec!["none".into()]
        } else {
            Vec::new()
        },
        grid: (!r.violations.is_empty()).then(|| Grid {
            headers: vec![
                "SOURCE",
                "DESTINATION",
                "PORT",
                "OBSERVED",
                "EXPECTED",
                "CONNS",
                "FIRST SEEN",
                "LAST SEEN",
            ],
            rows: r
                .violations
                .iter()
                .map(|v| {
                    vec![
                        v.source.clone(),
                        v.destination.clone(),
                        v.port.to_string(),
                        v.observed.clone(),
                        v.expected.clone(),
                        v.connections.to_string(),
                        seen(&v.first_seen),
                        seen(&v.last_seen),
                    ]
                })
                .collect(),
        }),
    });
    out.push(coverage(r));
    let caveats: Vec<String> = r
        .servers
        .iter()
        .flat_map(|s| {
            s.caveats
                .iter()
                .map(move |c| format!("{}: {c}", server_name(s)))
        })
        .collect();
    if !caveats.is_empty() {
        out.push(Section {
            title: "Caveats".into(),
            grid: None,
            lines: caveats,
        });
    }
    out
}

fn coverage(r: &Report) -> Section {
    let c = &r.coverage;
    let mut lines = vec![format!(
        "agents reporting: {}, {} with gaps{}",
        c.agents_reporting,
        c.agents_with_gaps,
        if c.targets_never_up.is_empty() {
            String::new()
        } else {
            format!("; {} scrape target(s) never up", c.targets_never_up.len())
        }
    )];
    for a in &c.agents {
        let mut l = format!(
            "  {}: reported {} of the window",
            a.instance,
            percent(a.reported_share)
        );
        if a.stopped_reporting
            && let Some(g) = a.gaps.last()
        {
            let _ = write!(l, "; stopped reporting at {}", g.from);
        }
        for g in a.gaps.iter().take(if a.stopped_reporting {
            a.gaps.len().saturating_sub(1)
        } else {
            a.gaps.len()
        }) {
            let _ = write!(l, "; nothing from {} to {}", g.from, g.to);
        }
        lines.push(l);
    }
    for t in &c.targets_never_up {
        lines.push(format!("  {} (job {}): never up", t.instance, t.job));
    }
    lines.push(format!(
        "connections: {}; of unknown class: {} ({})",
        c.connections,
        c.unknown_connections,
        c.unknown_share.map_or_else(|| "-".into(), percent)
    ));
    lines.extend(c.notes.iter().cloned());
    Section {
        title: "Coverage".into(),
        grid: None,
        lines,
    }
}

pub fn table(r: &Report) -> String {
    let mut out = String::from("STRICT readiness\n");
    for l in header_lines(r) {
        let _ = writeln!(out, "{l}");
    }
    for s in sections(r) {
        let _ = writeln!(out, "\n{}", s.title);
        if let Some(g) = &s.grid {
            out.push_str(&g.aligned());
        }
        for l in &s.lines {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::from("# STRICT readiness\n\n");
    for l in header_lines(r) {
        let _ = writeln!(out, "- {l}");
    }
    for s in sections(r) {
        let _ = writeln!(out, "\n## {}\n", s.title);
        if let Some(g) = &s.grid {
            out.push_str(&g.markdown());
        }
        if !s.lines.is_empty() {
            if s.grid.is_some() {
                out.push('\n');
            }
            for l in &s.lines {
                let _ = writeln!(out, "- {}", l.trim_start());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_align_and_escape() {
        let g = Grid {
            headers: vec!["A", "B"],
            rows: vec![vec!["long value".into(), "x|y".into()]],
        };
        assert_eq!(g.aligned(), "A           B\nlong value  x|y\n");
        assert_eq!(
            g.markdown(),
            "| A | B |\n| --- | --- |\n| long value | x\\|y |\n"
        );
    }
}
