//! What `./x bench` prints: a line per round while it runs (stderr), then the
//! workload table, the cost per connection, the peer, memory and the targets
//! (stdout).

use std::collections::BTreeMap;

use super::{
    AFTER_CLOSE_S, BenchOptions, Memory, Round, agent::PhaseCost, load::ConnRun, stats::Series,
    stats::per,
};

const MIB: f64 = 1024.0;

/// A phase of the agent rounds, by its column title.
type Phase = (&'static str, fn(&Round) -> &PhaseCost);

fn classes(c: &PhaseCost) -> String {
    if c.classes.is_empty() {
        return "none reported".into();
    }
    c.classes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn round_line(n: usize, r: &Round) {
    let us = |c: &PhaseCost| per(c.cpu_s * 1e6, c.conns as f64);
    let kus = |c: &PhaseCost| per(c.kernel_ns() as f64 / 1e3, c.conns as f64);
    let unsettled = [&r.short_on.cost, &r.mtls_on.cost, &r.bulk_on.cost]
        .iter()
        .any(|c| !c.settled);
    eprintln!(
        "  round {n}: conn/s {:.0} -> {:.0} ({:.3}), mTLS conn/s {:.0} -> {:.0} ({:.3}), Gbit/s {:.2} -> {:.2} ({:.3}), \
         tshark conn/s {:.0}; per conn: agent {:.1} us + kernel {:.1} us (mTLS {:.1} + {:.1}), tshark {:.1} us; \
         events lost {}, peak RSS {:.1} MiB{}",
        r.short_off.rate,
        r.short_on.load.rate,
        r.short_on.load.rate / r.short_off.rate,
        r.mtls_off.rate,
        r.mtls_on.load.rate,
        r.mtls_on.load.rate / r.mtls_off.rate,
        r.bulk_off / 1e9,
        r.bulk_on.load / 1e9,
        r.bulk_on.load / r.bulk_off,
        r.peer.load.rate,
        us(&r.short_on.cost),
        kus(&r.short_on.cost),
        us(&r.mtls_on.cost),
        kus(&r.mtls_on.cost),
        per(r.peer.cpu_s * 1e6, r.peer.load.conns as f64),
        r.agent.ringbuf_full,
        r.agent.peak_rss_kib as f64 / MIB,
        if unsettled {
            " (the agent had not caught up 10 s after a load)"
        } else {
            ""
        },
    );
}

/// A workload row: rates without and with, the rounds' ratios.
fn row(name: &str, prec: usize, off: &Series, on: &Series) {
    let ratios = Series(off.0.iter().zip(&on.0).map(|(a, b)| b / a).collect());
    println!(
        "{name:<44} {:>11.prec$} {:>11.prec$} {:>6.3}  {:.3}-{:.3}  {}",
        off.median(),
        on.median(),
        ratios.median(),
        ratios.min(),
        ratios.max(),
        ratios.each(3),
    );
}

fn series<T>(rounds: &[Round], f: impl Fn(&Round) -> T) -> Series
where
    T: Into<f64>,
{
    Series(rounds.iter().map(|r| f(r).into()).collect())
}

/// The cost-per-connection lines of the short and mTLS phases, side by side.
fn per_connection(rounds: &[Round]) {
    let phases: [Phase; 2] = [
        ("short (wrk)", |r| &r.short_on.cost),
        ("short mTLS (s_time)", |r| &r.mtls_on.cost),
    ];
    let cell = |f: &dyn Fn(&PhaseCost) -> f64, prec: usize| -> Vec<String> {
        phases
            .iter()
            .map(|(_, get)| series(rounds, |r| f(get(r))).spread(prec))
            .collect()
    };
    let line = |name: &str, cells: Vec<String>| {
        println!("  {name:<40} {:<30} {}", cells[0], cells[1]);
    };
    println!(
        "per connection, with the agent (median of the rounds, min-max)\n  {:<40} {:<30} {}",
        "", phases[0].0, phases[1].0
    );
    line("connections per round", cell(&|c| c.conns as f64, 0));
    line(
        "kernel programs, us (BPF run time)",
        cell(&|c| per(c.kernel_ns() as f64 / 1e3, c.conns as f64), 2),
    );
    // Per program: runs per connection and ns per run, from the rounds' sums.
    let mut names: Vec<String> = Vec::new();
    for r in rounds {
        for (_, get) in &phases {
            for (name, _, _) in &get(r).progs {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
    }
    names.sort();
    if !names.is_empty() {
        println!("    per program, us = runs x ns per run (sums of the rounds)");
    }
    for name in &names {
        let cells = phases
            .iter()
            .map(|(_, get)| {
                let (mut runs, mut ns, mut conns) = (0u64, 0u64, 0u64);
                for r in rounds {
                    let c = get(r);
                    conns += c.conns;
                    for (n, k, t) in &c.progs {
                        if n == name {
                            runs += k;
                            ns += t;
                        }
                    }
                }
                if runs == 0 {
                    return "0 runs".to_owned();
                }
                format!(
                    "{:.2} = {:.1} x {:.0} ns",
                    per(ns as f64 / 1e3, conns as f64),
                    per(runs as f64, conns as f64),
                    per(ns as f64, runs as f64)
                )
            })
            .collect();
        line(&format!("  {name}"), cells);
    }
    line(
        "agent CPU, us",
        cell(&|c| per(c.cpu_s * 1e6, c.conns as f64), 2),
    );
    line(
        "ours = agent CPU + kernel programs, us",
        cell(&|c| ours_us(c), 2),
    );
    line(
        "ring events",
        cell(&|c| per(c.events as f64, c.conns as f64), 2),
    );
    line(
        "payload bytes sent up to the agent",
        cell(&|c| per(c.captured_bytes as f64, c.conns as f64), 0),
    );
    let lost: Vec<String> = phases
        .iter()
        .map(|(_, get)| format!("{}", rounds.iter().map(|r| get(r).lost).sum::<u64>()))
        .collect();
    line("events lost, all rounds (ring full)", lost);
    let classified: Vec<String> = phases
        .iter()
        .map(|(_, get)| {
            let mut sum: BTreeMap<String, u64> = BTreeMap::new();
            let mut conns = 0;
            for r in rounds {
                let c = get(r);
                conns += c.conns;
                for (k, v) in &c.classes {
                    *sum.entry(k.clone()).or_default() += v;
                }
            }
            let c = PhaseCost {
                classes: sum,
                ..PhaseCost::default()
            };
            format!("{} of {conns}", classes(&c))
        })
        .collect();
    line("reported as (connections_total, 2 ends)", classified);
}

/// A workload's runs without and with the agent, out of a round.
type RunsOf = fn(&Round) -> (ConnRun, ConnRun);

/// The whole machine's busy CPU per connection, without and with the agent: what
/// the agent costs in all (its threads, its programs, the kernel's work for them
/// such as socket storage), also where the load does not keep every CPU busy and
/// the rate alone would not show it.
fn machine_cpu(rounds: &[Round]) {
    println!(
        "machine CPU per connection (/proc/stat: every process and the kernel; medians, min-max; ratio without/with, 1 = no cost)"
    );
    let phases: [(&str, RunsOf); 2] = [
        ("short (wrk)", |r| (r.short_off, r.short_on.load)),
        ("short mTLS (s_time)", |r| (r.mtls_off, r.mtls_on.load)),
    ];
    for (name, get) in phases {
        let us = |c: ConnRun| per(c.busy_s * 1e6, c.conns as f64);
        let off = series(rounds, |r| us(get(r).0));
        let on = series(rounds, |r| us(get(r).1));
        let ratio = Series(off.0.iter().zip(&on.0).map(|(a, b)| a / b).collect());
        println!(
            "  {name:<21} without {} us, with {} us, +{:.1} us; ratio {}  rounds {}",
            off.spread(1),
            on.spread(1),
            on.median() - off.median(),
            ratio.spread(3),
            ratio.each(3),
        );
    }
}

fn ours_us(c: &PhaseCost) -> f64 {
    per(c.cpu_s * 1e6 + c.kernel_ns() as f64 / 1e3, c.conns as f64)
}

pub fn summary(opts: &BenchOptions, rounds: &[Round], memory: Option<&Memory>) {
    if rounds.is_empty() {
        println!("no rounds");
        return;
    }
    println!();
    println!(
        "mtls-auditor bench: {} rounds of {} s per workload (medians; ratio = median of the rounds' with/without, then min-max and each round's)",
        opts.rounds, opts.seconds
    );
    println!(
        "{:<44} {:>11} {:>11} {:>6}  {:<11}  rounds",
        "workload", "without", "with agent", "ratio", "spread"
    );
    let short_off = series(rounds, |r| r.short_off.rate);
    let short_on = series(rounds, |r| r.short_on.load.rate);
    let mtls_off = series(rounds, |r| r.mtls_off.rate);
    let mtls_on = series(rounds, |r| r.mtls_on.load.rate);
    let bulk_off = series(rounds, |r| r.bulk_off / 1e9);
    let bulk_on = series(rounds, |r| r.bulk_on.load / 1e9);
    let peer_on = series(rounds, |r| r.peer.load.rate);
    row(
        "short connections (conn/s, nginx + wrk)",
        0,
        &short_off,
        &short_on,
    );
    row(
        "short mTLS connections (conn/s, s_time)",
        0,
        &mtls_off,
        &mtls_on,
    );
    row("bulk throughput (Gbit/s, iperf3)", 2, &bulk_off, &bulk_on);
    row(
        "short connections, tshark instead of agent",
        0,
        &short_off,
        &peer_on,
    );
    println!();
    machine_cpu(rounds);
    println!();
    per_connection(rounds);
    println!();
    let theirs = series(rounds, |r| {
        per(r.peer.cpu_s * 1e6, r.peer.load.conns as f64)
    });
    let ours = series(rounds, |r| ours_us(&r.short_on.cost));
    let ratio = Series(ours.0.iter().zip(&theirs.0).map(|(o, t)| o / t).collect());
    let (packets, requests, conns, dropped) = rounds.iter().fold((0, 0, 0, 0), |a, r| {
        (
            a.0 + r.peer.packets,
            a.1 + r.peer.http_requests,
            a.2 + r.peer.load.conns,
            a.3 + r.peer.dropped,
        )
    });
    println!(
        "peer: tshark (+dumpcap) CPU per short connection {} us; ours {} us; ours/theirs {}",
        theirs.spread(1),
        ours.spread(2),
        ratio.spread(3)
    );
    println!(
        "  tshark dissected {packets} packets, {requests} HTTP requests of {conns} wrk connections, {dropped} dropped"
    );
    println!();
    let hwm = rounds
        .iter()
        .map(|r| r.agent.peak_rss_kib)
        .max()
        .unwrap_or(0);
    let lost_total: u64 = rounds.iter().map(|r| r.agent.ringbuf_full).sum();
    let lost = |f: fn(&Round) -> &PhaseCost| rounds.iter().map(|r| f(r).lost).sum::<u64>();
    println!(
        "agent: peak RSS in the workload rounds {:.1} MiB (VmHWM); events lost (ring full): short {}, mTLS {}, bulk {}, whole runs {lost_total}",
        hwm as f64 / MIB,
        lost(|r| &r.short_on.cost),
        lost(|r| &r.mtls_on.cost),
        lost(|r| &r.bulk_on.cost),
    );
    if let Some(m) = memory {
        println!(
            "memory: {} of {} connections held on loopback (both ends local), opened at {:.0} conn/s in {:.1} s, closed in {:.1} s",
            m.opened,
            m.target,
            per(m.opened as f64, m.open_s),
            m.open_s,
            m.close_s
        );
        println!(
            "  agent RSS: baseline {:.1} MiB; peak {:.1} MiB while opening and holding (flows tracked by the agent {}, \
             quiet sockets held in kernel socket storage until they speak or close {}); \
             peak {:.1} MiB while closing and {AFTER_CLOSE_S} s after, {:.1} MiB at the end (flows tracked {}); VmHWM {:.1} MiB",
            m.baseline_kib as f64 / MIB,
            m.peak_kib as f64 / MIB,
            m.flows_held,
            m.quiet_held,
            m.closing_peak_kib as f64 / MIB,
            m.after_close_kib as f64 / MIB,
            m.flows_after,
            m.hwm_kib as f64 / MIB
        );
        println!(
            "  of which the agent's heap (RssAnon) {:.1} MiB at the baseline, {:.1} MiB holding ({:.0} bytes per held connection); \
             the ring buffer's mappings {:.1} MiB (its data pages are mapped twice, for records that wrap around: RSS counts them twice, the kernel holds them once)",
            m.baseline_anon_kib as f64 / MIB,
            m.peak_anon_kib as f64 / MIB,
            (m.peak_anon_kib.saturating_sub(m.baseline_anon_kib) * 1024) as f64
                / m.opened.max(1) as f64,
            m.ring_kib as f64 / MIB
        );
        println!(
            "  events lost (ring full): {} while opening and holding, {} while closing",
            m.lost_open, m.lost_close
        );
        if let (Some(first), Some(last)) = (m.scrape_ms.first(), m.scrape_ms.last()) {
            println!(
                "  /metrics while holding, {} clients fetching the edges view ({} answers): \
                 {} scrapes, median {:.1} ms, min-max {:.1}-{:.1} ms",
                super::EDGE_CLIENTS,
                m.edge_fetches,
                m.scrape_ms.len(),
                m.scrape_ms[m.scrape_ms.len() / 2],
                first,
                last
            );
        }
    }
    println!();
    let mark = |ok: bool| if ok { "met" } else { "not met" };
    let (sr, mr, br) = (
        ratio_median(&short_off, &short_on),
        ratio_median(&mtls_off, &mtls_on),
        ratio_median(&bulk_off, &bulk_on),
    );
    let mut targets = vec![
        format!(
            "short connections >= 0.97, stretch 0.99 ({sr:.3}, {})",
            mark(sr >= 0.97)
        ),
        format!("short mTLS >= 0.99 ({mr:.3}, {})", mark(mr >= 0.99)),
        format!("throughput >= 0.99 ({br:.3}, {})", mark(br >= 0.99)),
        format!(
            "ours/tshark <= 0.1 ({:.3}, {})",
            ratio.median(),
            mark(ratio.median() <= 0.1)
        ),
    ];
    if let Some(m) = memory {
        let peak = m.peak_kib as f64 / MIB;
        targets.push(format!(
            "RSS with {} held <= 64 MiB ({peak:.1}, {})",
            m.opened,
            mark(peak <= 64.0)
        ));
    }
    let lost_all = lost_total + memory.map_or(0, |m| m.lost_open + m.lost_close);
    targets.push(format!(
        "events lost 0 ({lost_all}, {})",
        mark(lost_all == 0)
    ));
    println!("targets (medians): {}", targets.join("; "));
}

fn ratio_median(off: &Series, on: &Series) -> f64 {
    Series(off.0.iter().zip(&on.0).map(|(a, b)| b / a).collect()).median()
}
