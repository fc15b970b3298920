//! The listener under hostile load, on real loopback sockets: the real router and
//! connection handling on a one-thread runtime (as in the agent), with real metrics
//! and a real edges view; clients are plain blocking sockets on their own threads.
//! Assertions are about correctness (a scrape is answered, bounds hold, the right
//! status comes back); no assertion is about time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier, Mutex, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use super::{Limits, Shared, serve_on};
use crate::export::{
    edges::{Edge, Edges, Seen},
    metrics::Metrics,
};

/// A shared state whose edges view holds `n` edges (about 300 bytes of JSON each).
fn shared(n: usize) -> Arc<Shared> {
    let mut edges = Edges::new(n.max(1));
    for i in 0..n {
        let source = format!("team-{}/client-workload-{i}", i % 50);
        edges.count(&Seen {
            source: &source,
            destination: "payments/ledger-service",
            source_namespace: "team",
            destination_namespace: "payments",
            port: 8443,
            observed: "none",
            expected: "mutual_tls",
            verdict: "violation",
            end: "2026-11-28T15:52:10.412Z",
        });
    }
    Arc::new(Shared {
        metrics: Metrics::new(100).expect("metrics"),
        edges: Mutex::new(edges),
        ready: AtomicBool::new(true),
        policy_synced: AtomicBool::new(true),
        cluster: None,
    })
}

fn limits() -> Limits {
    Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(60),
        evict_after: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(60),
        max_request_head: 16 * 1024,
        max_request_body: 1024,
        max_edges_requests: 4,
        edges_refresh: Duration::from_secs(1),
    }
}

/// The listener on a free loopback port, served by a one-worker runtime that
/// lives as long as the returned value.
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _rt: tokio::runtime::Runtime,
}

fn start(shared: Arc<Shared>, limits: Limits) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(serve_on(listener, Arc::clone(&shared), limits));
    Server {
        addr,
        shared,
        _rt: rt,
    }
}

/// The start of a long body, for messages.
fn short(s: &str) -> &str {
    s.get(..200).unwrap_or(s)
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Answer, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&format!("http://{addr}{path}")).call()?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// A scrape must be answered in full; the timeout is generous (this is not a
/// latency test).
fn scrape(addr: SocketAddr) -> String {
    let a = get(addr, "/metrics", Duration::from_secs(60)).expect("the scrape is answered");
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("mtls_auditor_build_info"),
        "{}",
        short(&a.body)
    );
    a.body
}

fn shed(s: &Shared, reason: &str) -> u64 {
    s.metrics.http_shed.with_label_values(&[reason]).get()
}

/// Waits (up to 20 s) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "never happened: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `head` and returns the first line of the answer (empty if the server
/// closed without answering).
fn raw(addr: SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_slowloris_crowd_cannot_lock_a_scrape_out() {
    let cap = 32;
    let server = start(
        shared(10),
        Limits {
            max_connections: cap,
            ..limits()
        },
    );
    // 400 sockets that never finish a request: half say nothing, half start a
    // request and stop in the middle of its headers. The timeouts are 60 s, so
    // only the eviction of idle connections can let the scrape in.
    let mut crowd = Vec::new();
    for i in 0..400 {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        if i % 2 == 1 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("write");
        }
        crowd.push(s);
    }
    eventually("the crowd is accepted and evicted", || {
        shed(&server.shared, "idle_evicted") >= 400 - cap as u64
    });
    for _ in 0..3 {
        scrape(server.addr);
    }
    assert!(
        server.shared.metrics.http_connections.get() <= cap as i64,
        "{} connections open, cap {cap}",
        server.shared.metrics.http_connections.get()
    );
    // Most of the crowd was closed by the server (EOF on read).
    let closed = crowd
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            // EOF, or a reset where the server had not read what was sent.
            match s.read(&mut [0u8; 16]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .filter(|closed| *closed)
        .count();
    assert!(
        closed >= 400 - cap,
        "only {closed} of 400 idle sockets closed"
    );
}

#[test]
fn two_hundred_edges_fetches_do_not_starve_a_scrape() {
    // 10,000 edges: about 3 MB of JSON.
    let server = start(shared(10_000), limits());
    let addr = server.addr;
    let clients = 200;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let fetchers: Vec<_> = (0..clients)
        .map(|_| {
            let b = Arc::clone(&barrier);
            thread::spawn(move || {
                b.wait();
                get(addr, "/api/v1/edges", Duration::from_secs(120))
            })
        })
        .collect();
    barrier.wait();
    for _ in 0..5 {
        scrape(addr);
    }
    let mut ok = 0;
    let mut busy = 0;
    for f in fetchers {
        let a = f
            .join()
            .expect("fetcher thread")
            .expect("every edges request is answered");
        match a.status {
            200 => {
                let edges: Vec<Edge> = serde_json::from_str(&a.body).expect("edges JSON");
                assert_eq!(edges.len(), 10_000);
                ok += 1;
            }
            503 => {
                assert_eq!(a.retry_after.as_deref(), Some("1"));
                assert!(
                    a.body.starts_with("busy: 4 edges requests"),
                    "{}",
                    short(&a.body)
                );
                busy += 1;
            }
            s => panic!("edges answered {s}: {}", short(&a.body)),
        }
    }
    assert!(ok > 0, "no edges request was served");
    assert_eq!(ok + busy, clients);
    assert_eq!(shed(&server.shared, "edges_busy"), busy as u64);
}

/// Edges whose JSON (about 30 MB) is more than loopback socket buffers take, so a
/// client that stops reading keeps its request unfinished.
const STALL_EDGES: usize = 100_000;

/// A client that asks for the edges and stops reading holds one edges slot (and
/// its connection is busy, so it is not evicted).
fn stalled_edges_reader(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /api/v1/edges HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).expect("the answer starts");
    assert_eq!(&first, b"HTTP/1.1 200");
    s
}

#[test]
fn edges_requests_past_the_limit_get_503_until_a_slot_frees() {
    let server = start(
        shared(STALL_EDGES),
        Limits {
            max_edges_requests: 1,
            ..limits()
        },
    );
    let stalled = stalled_edges_reader(server.addr);
    let a = get(server.addr, "/api/v1/edges", Duration::from_secs(60)).expect("answered");
    assert_eq!(a.status, 503, "{}", short(&a.body));
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    scrape(server.addr);
    drop(stalled);
    eventually("the slot frees once the stalled reader is gone", || {
        get(
            server.addr,
            "/api/v1/edges?verdict=violation",
            Duration::from_secs(60),
        )
        .is_ok_and(|a| a.status == 200)
    });
}

#[test]
fn at_the_cap_with_every_slot_busy_a_new_connection_waits_then_is_closed() {
    let server = start(
        shared(STALL_EDGES),
        Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        },
    );
    let _stalled = stalled_edges_reader(server.addr);
    assert_eq!(
        raw(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ""
    );
    assert_eq!(shed(&server.shared, "refused"), 1);
}

#[test]
fn headers_sent_too_slowly_close_the_connection() {
    let server = start(
        shared(1),
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        },
    );
    // Never finishes its headers: closed by the server, without an answer.
    assert_eq!(raw(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n"), "");
    eventually("the timeout is counted", || {
        shed(&server.shared, "header_timeout") == 1
    });
    scrape(server.addr);
}

#[test]
fn a_client_that_stops_reading_is_cut_at_the_idle_timeout() {
    let server = start(
        shared(STALL_EDGES),
        Limits {
            idle_timeout: Duration::from_millis(300),
            ..limits()
        },
    );
    let _stalled = stalled_edges_reader(server.addr);
    eventually("the stalled connection is cut", || {
        shed(&server.shared, "idle_timeout") >= 1
    });
    eventually("and its edges slot is free", || {
        server.shared.metrics.http_connections.get() == 0
    });
}

#[test]
fn request_bodies_are_refused() {
    let server = start(shared(1), limits());
    assert_eq!(
        raw(
            server.addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
        ),
        "HTTP/1.1 413 Payload Too Large"
    );
    assert_eq!(
        raw(
            server.addr,
            "GET /api/v1/edges HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        "HTTP/1.1 413 Payload Too Large"
    );
    assert_eq!(shed(&server.shared, "body_too_large"), 2);
    // A head larger than the buffer is refused too, not buffered.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(
        raw(server.addr, &huge),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

fn add_edge(s: &Shared, source: &str) {
    s.edges.lock().expect("edges").count(&Seen {
        source,
        destination: "default/db",
        source_namespace: "default",
        destination_namespace: "default",
        port: 5432,
        observed: "tls",
        expected: "mutual_tls",
        verdict: "violation",
        end: "2026-11-28T16:00:00.000Z",
    });
}

fn edge_count(addr: SocketAddr, path: &str) -> usize {
    let a = get(addr, path, Duration::from_secs(60)).expect("answered");
    assert_eq!(a.status, 200, "{}", short(&a.body));
    serde_json::from_str::<Vec<Edge>>(&a.body)
        .expect("edges JSON")
        .len()
}

#[test]
fn the_edges_answer_is_a_snapshot_rebuilt_at_most_every_refresh() {
    let cached = start(
        shared(3),
        Limits {
            edges_refresh: Duration::from_secs(3600),
            ..limits()
        },
    );
    assert_eq!(edge_count(cached.addr, "/api/v1/edges"), 3);
    add_edge(&cached.shared, "default/new");
    // Within the refresh interval: the same snapshot, filtered or not.
    assert_eq!(edge_count(cached.addr, "/api/v1/edges"), 3);
    assert_eq!(
        edge_count(cached.addr, "/api/v1/edges?namespace=default"),
        0
    );

    let fresh = start(
        shared(3),
        Limits {
            edges_refresh: Duration::ZERO,
            ..limits()
        },
    );
    assert_eq!(edge_count(fresh.addr, "/api/v1/edges"), 3);
    add_edge(&fresh.shared, "default/new");
    assert_eq!(edge_count(fresh.addr, "/api/v1/edges"), 4);
    assert_eq!(edge_count(fresh.addr, "/api/v1/edges?namespace=default"), 1);
    assert_eq!(edge_count(fresh.addr, "/api/v1/edges?verdict=compliant"), 0);
}

/// In a cluster, the first complete lists are not enough: readiness also waits
/// for the pipeline to judge with a policy built from them.
#[test]
fn in_a_cluster_ready_waits_for_the_policy_built_from_the_first_lists() {
    use std::sync::{RwLock, atomic::Ordering};

    use crate::kube::{ClusterState, POLICY_KINDS};
    let cluster = Arc::new(RwLock::new(ClusterState::new("node-a")));
    let s = Shared {
        metrics: Metrics::new(10).expect("metrics"),
        edges: Mutex::new(Edges::new(1)),
        ready: AtomicBool::new(true),
        policy_synced: AtomicBool::new(false),
        cluster: Some(Arc::clone(&cluster)),
    };
    assert!(!s.is_ready(), "nothing listed yet");
    {
        let mut c = cluster.write().expect("lock");
        c.pods_synced = true;
        c.policy_kinds_synced = POLICY_KINDS;
    }
    assert!(
        !s.is_ready(),
        "listed, but the policy in force predates the lists"
    );
    s.policy_synced.store(true, Ordering::Relaxed);
    assert!(s.is_ready());
    s.ready.store(false, Ordering::Relaxed);
    assert!(!s.is_ready(), "stopping");
}
