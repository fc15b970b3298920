//! The two exposition formats of `/metrics`: Prometheus text 0.0.4 and OpenMetrics
//! 1.0.0 (chosen by the request's `Accept` header).

use std::fmt::Write as _;

use prometheus::{Registry, proto::MetricType};

/// The Prometheus text format (version 0.0.4).
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out);
    out
}

/// The OpenMetrics text format (1.0.0): counters are typed without their
/// `_total` suffix, samples keep it, and the exposition ends with `# EOF`.
pub fn openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    for fam in registry.gather() {
        let name = fam.name();
        let (kind, base) = match fam.get_field_type() {
            MetricType::COUNTER => ("counter", name.strip_suffix("_total").unwrap_or(name)),
            _ => ("gauge", name),
        };
        let _ = writeln!(out, "# TYPE {base} {kind}");
        let _ = writeln!(out, "# HELP {base} {}", escape(fam.help()));
        for m in fam.get_metric() {
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| format!("{}=\"{}\"", l.name(), escape(l.value())))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let (sample, value) = match fam.get_field_type() {
                MetricType::COUNTER => (format!("{base}_total"), m.get_counter().get_value()),
                _ => (base.to_owned(), m.get_gauge().get_value()),
            };
            let _ = writeln!(out, "{sample}{labels} {value}");
        }
    }
    out.push_str("# EOF\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
