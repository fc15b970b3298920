//! Issue 15 (reliability), with real agents: a second agent on the node is
//! refused and names the first one's PID (and a lock file left behind, even by
//! `kill -9`, never stops the next agent); the real listener keeps answering
//! Prometheus under a slowloris crowd and under 200 concurrent edges fetches.
//! Assertions are about correctness only; latency figures belong to the bench.
//!
//! A port scan (connects to closed ports, and to a port whose SYNs are dropped)
//! is counted as failed connection attempts, by reason, with the port label capped.
//!
//! Listen ports 19130-19135; namespaces on 10.213.91.0/24 (the port scan).

use std::{
    io::Write as _,
    net::TcpStream,
    path::Path,
    process::Stdio,
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use integration_tests::{
    Agent, AgentOptions, NetnsPair, Spawn, TempDir, agent::our_loaded_programs, agent_bin,
    mesh::metric_sum, require_root, wait_for,
};

fn agent_with(args: &[&str]) -> Agent {
    let mut opts = AgentOptions::default().arg("--output").arg("off");
    for a in args {
        opts = opts.arg(*a);
    }
    Agent::start(opts)
}

/// `mtls-auditor run` that must fail at once; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .arg("run")
        .args(["--output", "off", "--stats-interval-s", "0"])
        .args(args)
        .stdout(Stdio::null())
        .run(Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the second agent started:\n{err}");
    err
}

fn held_message(pid: u32, lock: &Path) -> String {
    format!(
        "mtls-auditor: another mtls-auditor agent (PID {pid}) holds {}: two agents on one node would both attach their probes and count every connection twice; stop it first",
        lock.display()
    )
}

#[test]
fn a_second_agent_is_refused_and_names_the_first() {
    require_root();
    let dir = TempDir::new();
    let lock = dir.path().join("agent.lock");
    let lock_s = lock.to_str().expect("utf8");
    let first = agent_with(&["--instance-lock", lock_s, "--listen", "127.0.0.1:19130"]);
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        format!("{}\n", first.pid())
    );
    let programs = our_loaded_programs().len();
    let err = refused(&["--instance-lock", lock_s, "--listen", "127.0.0.1:19131"]);
    assert_eq!(err.trim(), held_message(first.pid(), &lock));
    // It attached nothing on its way out.
    assert_eq!(our_loaded_programs().len(), programs);
    first.stop_cleanly();

    // The lock file stays behind; the lock does not.
    assert!(lock.exists());
    let second = agent_with(&["--instance-lock", lock_s, "--listen", "127.0.0.1:19131"]);
    // Killed without a chance to clean up: the kernel releases the lock.
    let exit = second.stop_with(libc::SIGKILL);
    assert!(!exit.status.success());
    let third = agent_with(&["--instance-lock", lock_s, "--listen", "127.0.0.1:19130"]);
    third.stop_cleanly();
}

#[test]
fn the_default_lock_is_under_run() {
    require_root();
    let first = agent_with(&["--listen", "127.0.0.1:19132"]);
    let lock = Path::new("/run/mtls-auditor/agent.lock");
    assert_eq!(
        std::fs::read_to_string(lock).expect("the default lock file"),
        format!("{}\n", first.pid())
    );
    let err = refused(&["--listen", "127.0.0.1:19131"]);
    assert_eq!(err.trim(), held_message(first.pid(), lock));
    first.stop_cleanly();
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    (status, body)
}

/// A scrape is answered in full (the timeout is generous: not a latency test).
fn scrape(listen: &str) -> String {
    let (status, body) = get(&format!("http://{listen}/metrics"));
    assert_eq!(status, 200);
    assert!(body.contains("mtls_auditor_build_info"));
    body
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

#[test]
fn a_slowloris_crowd_does_not_lock_out_the_scrape() {
    require_root();
    let listen = "127.0.0.1:19133";
    let agent = agent_with(&["--listen", listen, "--http-max-connections", "32"]);
    let mut crowd = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(listen).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .expect("write");
        }
        crowd.push(s);
    }
    let m = wait_for(Duration::from_secs(30), || {
        let m = scrape(listen);
        (sample(&m, "mtls_auditor_http_shed_total{reason=\"idle_evicted\"}") >= 268.0).then_some(m)
    })
    .expect("the crowd is evicted to make room");
    assert!(sample(&m, "mtls_auditor_http_connections") <= 32.0);
    assert_eq!(get(&format!("http://{listen}/readyz")).0, 200);
    drop(crowd);
    agent.stop_cleanly();
}

/// Connections from `n` distinct loopback addresses to a local server: `n` edges.
fn make_edges(n: usize) {
    let script = format!(
        r#"
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(512); port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept(); c.recv(100); c.sendall(b"HTTP/1.0 200 OK\r\n\r\n"); c.close()
threading.Thread(target=serve, daemon=True).start()
for i in range({n}):
    s = socket.socket(); s.bind(("127.1.%d.%d" % (i // 250, 1 + i % 250), 0))
    s.connect(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.0\r\n\r\n"); s.recv(100); s.close()
"#
    );
    Spawn::new("python3")
        .arg("-c")
        .arg(script)
        .run_ok(Duration::from_secs(120));
}

#[test]
fn two_hundred_edges_fetches_do_not_starve_the_scrape() {
    require_root();
    let listen = "127.0.0.1:19134";
    let agent = agent_with(&["--listen", listen]);
    make_edges(2000);
    let url = format!("http://{listen}/api/v1/edges");
    wait_for(Duration::from_secs(30), || {
        let (status, body) = get(&url);
        let edges: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        let ours = edges
            .iter()
            .filter(|e| {
                e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("127.1."))
            })
            .count();
        (status == 200 && ours >= 2000).then_some(())
    })
    .expect("2000 edges in the view");
    let barrier = Arc::new(Barrier::new(201));
    let fetchers: Vec<_> = (0..200)
        .map(|_| {
            let (b, url) = (Arc::clone(&barrier), url.clone());
            thread::spawn(move || {
                b.wait();
                get(&url)
            })
        })
        .collect();
    barrier.wait();
    for _ in 0..3 {
        scrape(listen);
    }
    let mut served = 0;
    for f in fetchers {
        let (status, body) = f.join().expect("fetcher");
        match status {
            200 => {
                let edges: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON");
                assert!(edges.len() >= 2000);
                served += 1;
            }
            503 => assert!(body.starts_with("busy: "), "{body}"),
            s => panic!("edges answered {s}"),
        }
    }
    assert!(served > 0);
    // The command line reads the same view (and asks again when told busy).
    let out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["edges", "--agent", listen, "--json"])
        .run_ok(Duration::from_secs(60));
    let edges: Vec<serde_json::Value> = serde_json::from_str(&out).expect("edges --json");
    assert!(edges.len() >= 2000);
    agent.stop_cleanly();
}

/// `tries` connects to `dropped`, abandoned after 0.3 s each; then connects to
/// every port in [lo, hi), counting the refusals.
const SCANNER: &str = r#"
import socket, sys
host, lo, hi, dropped, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
unanswered = 0
for _ in range(tries):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect((host, dropped))
    except (socket.timeout, TimeoutError):
        unanswered += 1
    finally:
        s.close()
refused = 0
for port in range(lo, hi):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
    except ConnectionRefusedError:
        refused += 1
    finally:
        s.close()
print(refused, unanswered)
"#;

#[test]
fn a_port_scan_is_counted_as_failed_attempts_by_reason() {
    require_root();
    let pair = NetnsPair::new("scan", 91);
    // SYNs to 9999 vanish (a firewall that drops): those attempts go unanswered.
    Spawn::new("iptables")
        .args([
            "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP",
        ])
        .netns(&pair.a)
        .run_ok(Duration::from_secs(30));
    let listen = "127.0.0.1:19135";
    let agent = agent_with(&["--listen", listen, "--max-label-values", "50"]);
    let out = Spawn::new("/usr/bin/python3")
        .args([
            "-c",
            SCANNER,
            &pair.a_v4().to_string(),
            "20000",
            "22000",
            "9999",
            "5",
        ])
        .netns(&pair.b)
        .run_ok(Duration::from_secs(120));
    assert_eq!(out.trim(), "2000 5", "what the scanner saw");
    let name = "mtls_auditor_connection_attempts_failed_total";
    let mut text = String::new();
    let seen = wait_for(Duration::from_secs(10), || {
        text = scrape(listen);
        (metric_sum(&text, name, &[("reason", "refused")]) >= 2000.0
            && metric_sum(&text, name, &[("reason", "unanswered")]) >= 5.0)
            .then_some(())
    });
    assert!(seen.is_some(), "every failed attempt counted:\n{text}");
    // Nothing else on this host is refused 2000 times in these seconds: the scan's
    // own attempts are all there is, give or take the host's own traffic.
    let refused = metric_sum(&text, name, &[("reason", "refused")]);
    assert!(
        refused < 2100.0,
        "{refused} refused attempts counted for 2000"
    );
    // 2000 ports under a cap of 50 values: the rest are folded, and that is counted.
    assert!(
        metric_sum(&text, name, &[("destination_port", "~other")]) >= 1900.0,
        "ports past the cap folded into ~other:\n{text}"
    );
    assert!(
        sample(
            &text,
            "mtls_auditor_label_overflow_total{label=\"destination_port\"}"
        ) >= 1900.0
    );
    assert!(
        metric_sum(
            &text,
            name,
            &[("destination_port", "9999"), ("reason", "unanswered")]
        ) >= 5.0,
        "the dropped port's attempts are unanswered:\n{text}"
    );
    agent.stop();
}
