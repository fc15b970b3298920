//! The report as one self-contained HTML page: inline CSS, inline SVG charts, no
//! scripts, no fonts, nothing fetched (a Content-Security-Policy forbids it).
//! Per namespace, a chart of the mutual-TLS share over the window and its
//! servers' readiness; then the clients, violations and coverage.

use std::fmt::Write as _;

use super::{
    model::{Namespace, Report, Server},
    render::{self, Grid, percent, server_name},
};

/// Colours the headless-browser test looks for in the screenshot.
pub const LINE_COLOUR: &str = "#1565c0";
pub const READY_COLOUR: &str = "#2e7d32";
pub const NOT_READY_COLOUR: &str = "#c62828";
const HEADER_COLOUR: &str = "#37474f";

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn style() -> String {
    format!(
        "body{{font-family:sans-serif;margin:24px;color:#212121;max-width:1200px}}\
         h1{{font-size:22px;margin:0 0 8px}}h2{{font-size:18px;margin:28px 0 8px}}\
         .meta{{color:#555;font-size:13px;margin:2px 0}}\
         .tiles{{display:flex;gap:12px;margin:16px 0}}\
         .tile{{border:1px solid #ccc;border-radius:6px;padding:8px 14px;min-width:110px}}\
         .tile b{{display:block;font-size:22px}}\
         table{{border-collapse:collapse;margin:8px 0;font-size:13px}}\
         th{{background:{HEADER_COLOUR};color:#fff;text-align:left;padding:4px 8px}}\
         td{{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top}}\
         .badge{{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-weight:bold}}\
         .ready{{background:{READY_COLOUR}}}.not-ready{{background:{NOT_READY_COLOUR}}}\
         .caveat{{color:#6d4c41;font-size:12px}}\
         svg text{{font-size:11px;fill:#555}}"
    )
}

fn grid(g: &Grid) -> String {
    let mut out = String::from("<table><tr>");
    for h in &g.headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for r in &g.rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// The mutual-TLS share of a namespace over the window, as an SVG line chart.
pub fn chart(ns: &Namespace, start: f64, end: f64) -> String {
    let (w, h) = (720.0, 180.0);
    let (left, right, top, bottom) = (44.0, 12.0, 10.0, 24.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x = |t: f64| left + pw * ((t - start) / (end - start).max(1.0)).clamp(0.0, 1.0);
    let y = |share: f64| top + ph * (1.0 - share.clamp(0.0, 1.0));
    let mut s = format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"mutual-TLS share of namespace {}\">",
        escape(&ns.namespace)
    );
    for pct in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let yy = y(pct);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e0e0e0\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            w - right,
            left - 6.0,
            yy + 4.0,
            pct * 100.0
        );
    }
    for i in 0..=4 {
        let t = start + (end - start) * f64::from(i) / 4.0;
        let label = super::model::rfc3339(t);
        let label = label.get(..16).unwrap_or(&label).replace('T', " ");
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x(t),
            h - 6.0,
            escape(&label)
        );
    }
    let pts = &ns.share_over_time;
    if pts.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no connections to chart</text>",
            left + pw / 2.0,
            top + ph / 2.0
        );
    } else {
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.unix), y(p.mutual_tls_share)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{LINE_COLOUR}\" stroke-width=\"3\" points=\"{}\"/>",
            line.join(" ")
        );
        for p in pts.iter().take(if pts.len() <= 60 { pts.len() } else { 0 }) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{LINE_COLOUR}\"><title>{}: {} of {} connections</title></circle>",
                x(p.unix),
                y(p.mutual_tls_share),
                escape(&p.time),
                percent(p.mutual_tls_share),
                p.connections
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn server_table(servers: &[&Server]) -> String {
    let mut out = String::from(
        "<table class=\"readiness\"><tr><th>Server</th><th>Mode</th><th>Ready for STRICT</th><th>Mutual TLS</th><th>Connections</th><th>Plaintext / one-way TLS clients</th><th>Refused clients</th></tr>",
    );
    for s in servers {
        let badge = if s.ready_for_strict {
            "<span class=\"badge ready\">ready</span>"
        } else {
            "<span class=\"badge not-ready\">not ready</span>"
        };
        let clients = |v: &[super::model::Client]| {
            v.iter()
                .map(|c| {
                    escape(&format!(
                        "{}/{} ({})",
                        c.namespace, c.workload, c.connections
                    ))
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let caveats: String = s
            .caveats
            .iter()
            .map(|c| format!("<div class=\"caveat\">{}</div>", escape(c)))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}{caveats}</td><td title=\"{}\">{}</td><td>{badge}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&server_name(s)),
            escape(&s.mode_source),
            escape(&s.mode),
            percent(s.mutual_tls_share),
            s.connections,
            clients(&s.plaintext_clients),
            clients(&s.refused_clients)
        );
    }
    out.push_str("</table>");
    out
}

/// The page.
pub fn page(r: &Report) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>STRICT readiness {}</title><style>{}</style></head><body>\
         <h1>STRICT readiness</h1>",
        escape(&r.window.end),
        style()
    );
    for l in render::header_lines(r) {
        let _ = write!(out, "<p class=\"meta\">{}</p>", escape(&l));
    }
    let ready = r.servers.iter().filter(|s| s.ready_for_strict).count();
    let _ = write!(
        out,
        "<div class=\"tiles\"><div class=\"tile\"><b>{}</b>servers</div><div class=\"tile\"><b>{ready}</b>ready for STRICT</div><div class=\"tile\"><b>{}</b>not ready</div><div class=\"tile\"><b>{}</b>violations</div><div class=\"tile\"><b>{}</b>agents reporting</div><div class=\"tile\"><b>{}</b>unknown class</div></div>",
        r.servers.len(),
        r.servers.len() - ready,
        r.violations.len(),
        r.coverage.agents_reporting,
        r.coverage.unknown_share.map_or_else(|| "-".into(), percent)
    );
    for ns in &r.namespaces {
        let servers: Vec<&Server> = r
            .servers
            .iter()
            .filter(|s| s.namespace == ns.namespace)
            .collect();
        let _ = write!(
            out,
            "<section class=\"namespace\"><h2>Namespace {}: {} of {} servers ready, {} mutual TLS</h2>{}{}</section>",
            escape(&ns.namespace),
            ns.ready_for_strict,
            ns.servers,
            ns.mutual_tls_share.map_or_else(|| "-".into(), percent),
            chart(ns, r.window.start_unix, r.window.end_unix),
            server_table(&servers)
        );
    }
    for s in render::sections(r).into_iter().skip(1) {
        let _ = write!(out, "<h2>{}</h2>", escape(&s.title));
        if let Some(g) = &s.grid {
            out.push_str(&grid(g));
        }
        if !s.lines.is_empty() {
            out.push_str("<ul>");
            for l in &s.lines {
                let _ = write!(out, "<li>{}</li>", escape(l.trim_start()));
            }
            out.push_str("</ul>");
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
