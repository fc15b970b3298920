//! The agent under test: started with a free `--listen` port, read through its
//! /metrics, /proc and its final stats line.
//!
//! A phase's cost is the difference of two snapshots, one right before its load
//! and one after the load ended and the agent caught up (no new ring events, the
//! connections it tracks back to where they were): agent CPU time, ring events,
//! payload bytes sent up by the kernel, events lost, the connections it reported
//! per observed class, and (with kernel statistics on) each program's run time.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    bpf::{self, Prog},
    sys::{self, Guard},
};

/// The metric families the bench reads.
const FAMILIES: &[&str] = &[
    "mtls_auditor_events_received_total",
    "mtls_auditor_captured_bytes_total",
    "mtls_auditor_events_lost_total",
    "mtls_auditor_flows_tracked",
];

/// `GET path` over HTTP/1.0 (the answer ends at the close, never chunked): the
/// status line and the body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent's listener {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("http://{addr}{path}: no end of the header"))?;
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, body.to_owned()))
}

/// Ring events between two scrapes 300 ms apart that count as quiet: the scrape's
/// own connection makes some.
const QUIET_EVENTS: f64 = 20.0;

pub struct Agent {
    guard: Guard,
    pub pid: u32,
    log: PathBuf,
    addr: SocketAddr,
    /// Whole program names by id (from /proc/kallsyms, read once).
    names: RefCell<BTreeMap<u32, String>>,
}

/// What the agent's final stats line (logged at exit) says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub events: u64,
    pub ringbuf_full: u64,
    pub peak_rss_kib: u64,
}

impl Agent {
    /// Starts `mtls-auditor run` with its log in `dir/<name>.log` and waits until
    /// its /readyz answers 200. A listen port taken between choosing and binding
    /// it is retried with another one.
    pub fn start(bin: &Path, dir: &Path, name: &str) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let mut last = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], sys::free_port()?).into();
            let file =
                fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            // As the DaemonSet runs it (`--output=off`: metrics and events, no
            // JSON line per connection).
            let child = Command::new(bin)
                .args(["run", "--output", "off", "--stats-interval-s", "0"])
                .args(["--listen", &addr.to_string()])
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let pid = child.id();
            let mut guard = Guard(Some(child));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = fs::read_to_string(&log).unwrap_or_default();
                let ready = get(addr, "/readyz").is_ok_and(|(status, _)| status.contains(" 200"));
                if ready {
                    return Ok(Self {
                        guard,
                        pid,
                        log,
                        addr,
                        names: RefCell::default(),
                    });
                }
                let exited = guard.check_alive("the agent").is_err();
                if exited || Instant::now() > deadline {
                    if exited && text.contains("Address already in use") {
                        last = text;
                        break;
                    }
                    bail!("the agent did not start (log {}):\n{text}", log.display());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("the agent found no free listen port in 3 tries:\n{last}")
    }

    /// Where the agent listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The status line and body of `GET path` on the agent's listener.
    fn get(&self, path: &str) -> Result<(String, String)> {
        get(self.addr, path)
    }

    /// The agent's /metrics, parsed. Fails when a family the bench reads is
    /// missing (renamed?), rather than counting it as zero.
    pub fn metrics(&self) -> Result<Vec<Sample>> {
        let (status, body) = self.get("/metrics")?;
        if !status.contains(" 200") {
            bail!("http://{}/metrics: {status}", self.addr);
        }
        let m = parse_metrics(&body);
        for family in FAMILIES {
            if !m.iter().any(|s| s.name == *family) {
                bail!("http://{}/metrics has no {family}", self.addr);
            }
        }
        Ok(m)
    }

    /// The counters a phase is the difference of; `port`: the phase's server port,
    /// whose connections are counted per observed class.
    pub fn snapshot(&self, port: u16, progs: bool) -> Result<Snapshot> {
        let cpu_s = sys::cpu_seconds(self.pid)?;
        let m = self.metrics()?;
        let mut progs = if progs {
            bpf::programs_of(self.pid)?
        } else {
            BTreeMap::new()
        };
        let mut names = self.names.borrow_mut();
        if progs.keys().any(|id| !names.contains_key(id)) {
            let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
            for (id, p) in &progs {
                let name =
                    bpf::full_name(&kallsyms, &p.tag, &p.name).unwrap_or_else(|| p.name.clone());
                names.entry(*id).or_insert(name);
            }
        }
        for (id, p) in &mut progs {
            if let Some(n) = names.get(id) {
                p.name.clone_from(n);
            }
        }
        let port = port.to_string();
        let mut classes = BTreeMap::new();
        for s in m
            .iter()
            .filter(|s| s.name == "mtls_auditor_connections_total")
            .filter(|s| s.label("destination_port") == Some(&port))
        {
            let class = s.label("connection_security_policy").unwrap_or("?");
            *classes.entry(class.to_owned()).or_default() += s.value as u64;
        }
        Ok(Snapshot {
            cpu_s,
            events: sum(&m, "mtls_auditor_events_received_total") as u64,
            captured_bytes: sum(&m, "mtls_auditor_captured_bytes_total") as u64,
            lost: sum(&m, "mtls_auditor_events_lost_total") as u64,
            flows: sum(&m, "mtls_auditor_flows_tracked") as u64,
            classes,
            progs,
        })
    }

    /// Waits (up to `limit`) until the agent has caught up after a load: hardly
    /// any new ring events between two readings 300 ms apart and no more connections
    /// tracked than `flows_before` (plus 1 %). Returns whether it did.
    pub fn settle(&self, flows_before: u64, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        let mut last_events = None;
        loop {
            thread::sleep(Duration::from_millis(300));
            let m = self.metrics()?;
            let events = sum(&m, "mtls_auditor_events_received_total");
            let flows = sum(&m, "mtls_auditor_flows_tracked") as u64;
            // Each scrape is a connection too (about 6 events): a little slack.
            let quiet = last_events.is_some_and(|l: f64| events - l <= QUIET_EVENTS);
            let caught_up = quiet && flows <= flows_before + flows_before / 100 + 4;
            if caught_up {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            last_events = Some(events);
        }
    }

    pub fn rss_kib(&self) -> Result<u64> {
        sys::status_kib(self.pid, "VmRSS")
    }

    /// The agent's own heap and stacks (RSS without file and shared mappings).
    pub fn anon_kib(&self) -> Result<u64> {
        sys::status_kib(self.pid, "RssAnon")
    }

    /// What the BPF maps mapped into the agent (the ring buffer) add to its RSS.
    pub fn bpf_mapped_kib(&self) -> Result<u64> {
        sys::mapped_kib(self.pid, "anon_inode:bpf-map")
    }

    /// Stops the agent (SIGTERM) and reads its final stats line.
    pub fn stop(self) -> Result<Final> {
        let peak_rss_kib = sys::status_kib(self.pid, "VmHWM")?;
        drop(self.guard);
        let log = fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        let mut f = parse_final(&log).ok_or_else(|| {
            anyhow!(
                "no `final_=true` stats line in {} (did the agent exit cleanly?)",
                self.log.display()
            )
        })?;
        f.peak_rss_kib = peak_rss_kib;
        Ok(f)
    }
}

/// Agent counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cpu_s: f64,
    pub events: u64,
    pub captured_bytes: u64,
    pub lost: u64,
    pub flows: u64,
    /// The phase port's reported connections by observed class.
    pub classes: BTreeMap<String, u64>,
    pub progs: BTreeMap<u32, Prog>,
}

/// What one phase cost the agent.
#[derive(Debug, Clone, Default)]
pub struct PhaseCost {
    pub conns: u64,
    pub cpu_s: f64,
    pub events: u64,
    pub captured_bytes: u64,
    pub lost: u64,
    pub classes: BTreeMap<String, u64>,
    /// (program name, runs, nanoseconds).
    pub progs: Vec<(String, u64, u64)>,
    pub settled: bool,
}

impl PhaseCost {
    pub fn between(a: &Snapshot, b: &Snapshot, conns: u64, settled: bool) -> Self {
        let classes = b
            .classes
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(a.classes.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        Self {
            conns,
            cpu_s: (b.cpu_s - a.cpu_s).max(0.0),
            events: b.events.saturating_sub(a.events),
            captured_bytes: b.captured_bytes.saturating_sub(a.captured_bytes),
            lost: b.lost.saturating_sub(a.lost),
            classes,
            progs: bpf::delta(&a.progs, &b.progs),
            settled,
        }
    }

    pub fn kernel_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.2).sum()
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The sum of every sample of a family.
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Samples of Prometheus text exposition (`name{l="v",...} value [timestamp]`);
/// comments and lines that do not parse are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        };
        rest = &r[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `events_received` and `ringbuf_full` of the last `final_=true` stats line.
pub fn parse_final(log: &str) -> Option<Final> {
    let line = log.lines().rev().find(|l| l.contains("final_=true"))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.trim_matches('"').parse().ok())
    };
    Some(Final {
        events: field("events_received")?,
        ringbuf_full: field("ringbuf_full")?,
        peak_rss_kib: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_with_labels_escapes_and_without() {
        let text = "# HELP mtls_auditor_events_received_total Ring-buffer events read from the kernel.\n\
                    # TYPE mtls_auditor_events_received_total counter\n\
                    mtls_auditor_events_received_total 123456\n\
                    mtls_auditor_connections_total{reporter=\"source\",destination_port=\"18480\",connection_security_policy=\"none\",source_workload=\"a \\\"b\\\", c\"} 17\n\
                    mtls_auditor_connections_total{reporter=\"destination\",destination_port=\"18480\",connection_security_policy=\"none\",source_workload=\"~other\"} 16 1700000000000\n\
                    mtls_auditor_flows_tracked 3\n\
                    broken{a=\"b} 1\n";
        let m = parse_metrics(text);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(sum(&m, "mtls_auditor_events_received_total"), 123456.0);
        assert_eq!(sum(&m, "mtls_auditor_connections_total"), 33.0);
        assert_eq!(m[1].label("source_workload"), Some("a \"b\", c"));
        assert_eq!(m[1].label("destination_port"), Some("18480"));
        assert_eq!(m[2].label("reporter"), Some("destination"));
        assert_eq!(sum(&m, "mtls_auditor_flows_tracked"), 3.0);
    }

    #[test]
    fn final_stats_line_gives_events_and_ring_full_count() {
        // The agent's text log at exit (tracing's default format).
        let log = "2026-12-02T06:50:01.1Z  INFO mtls_auditor::run: ready: reporting connections\n\
                   2026-12-02T06:50:11.2Z  INFO mtls_auditor::run: stats final_=true events_received=372711 decode_errors=0 connections_tracked=12 connections_reported=61000 orphan_events=0 records_written=61000 records_dropped=0 kernel=data_events=122000 captured_bytes=80000000 ringbuf_full=7 truncated_packets=0\n";
        assert_eq!(
            parse_final(log),
            Some(Final {
                events: 372711,
                ringbuf_full: 7,
                peak_rss_kib: 0
            })
        );
        assert_eq!(parse_final("stats final_=false events_received=1\n"), None);
    }
}
