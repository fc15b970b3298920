//! Issue 2: every TCP connection on the node captured end to end, with the real
//! probes and real peers in network namespaces.

use std::{process::Stdio, time::Duration};

use integration_tests::{
    Agent, AgentOptions, Cgroup, NetnsPair, Record, Spawn, TempDir,
    agent::our_loaded_programs,
    peers::{self, Pki, hostport},
    require_root,
};

const WAIT: Duration = Duration::from_secs(20);

fn port_of(r: &Record, side: &str) -> u64 {
    r[side]["port"].as_u64().unwrap_or(0)
}

fn addr_of(r: &Record, side: &str) -> String {
    r[side]["addr"].as_str().unwrap_or("").to_owned()
}

fn to_server(ip: std::net::IpAddr, port: u16) -> impl Fn(&Record) -> bool {
    move |r| addr_of(r, "server") == ip.to_string() && port_of(r, "server") == u64::from(port)
}

/// Runs curl in `ns`/`cg` and returns (pid, comm, body). The pid is read while the
/// process runs, so it is the one the kernel saw.
fn curl_with_pid(
    ns: &integration_tests::Netns,
    cg: &Cgroup,
    url: &str,
    extra: &[&str],
) -> (u32, String) {
    let mut child = Spawn::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
        ])
        .args(extra)
        .arg(url)
        .netns(ns)
        .cgroup(cg)
        .stderr(Stdio::piped())
        .spawn();
    let pid = child.pid();
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("curl finished");
    assert!(status.success(), "curl {url} failed: {status}");
    (pid, "curl".to_owned())
}

#[test]
fn plaintext_http_between_namespaces_has_tuple_bytes_and_processes() {
    require_root();
    let pair = NetnsPair::new("http", 21);
    let srv_cg = Cgroup::new("http-server");
    let cli_cg = Cgroup::new("http-client");
    let dir = TempDir::new();
    let body = "x".repeat(1000);
    std::fs::write(dir.path().join("index.html"), &body).expect("write index");

    let agent = Agent::start(AgentOptions::default());
    let server = peers::http_server(Some(&pair.a), Some(&srv_cg), pair.a_v4(), 8080, dir.path());
    let url = format!("http://{}/index.html", hostport(pair.a_v4(), 8080));
    let (curl_pid, curl_comm) = curl_with_pid(&pair.b, &cli_cg, &url, &[]);

    let recs = agent.wait_records(1, WAIT, to_server(pair.a_v4(), 8080));
    assert_eq!(recs.len(), 1, "one connection, one record: {recs:?}");
    let r = &recs[0];
    assert_eq!(r["schema"], "mtls-auditor.connection/v1");
    assert_eq!(r["direction"], "local", "both ends are on this node: {r}");
    assert_eq!(addr_of(r, "client"), pair.b_v4().to_string());
    assert!(
        port_of(r, "client") >= 1024,
        "client port is ephemeral: {r}"
    );
    assert_eq!(r["connection_security_policy"], "none", "{r}");
    assert_eq!(r["predates_agent"], false);

    let client = &r["client"]["local"];
    assert_eq!(
        client["pid"].as_u64(),
        Some(u64::from(curl_pid)),
        "client pid: {r}"
    );
    assert_eq!(client["comm"], curl_comm.as_str());
    assert_eq!(client["cgroup"], cli_cg.rel(), "client cgroup: {r}");
    assert_eq!(client["cgroup_id"].as_u64(), Some(cli_cg.id()));
    let srv = &r["server"]["local"];
    assert_eq!(
        srv["pid"].as_u64(),
        Some(u64::from(server.pid())),
        "server pid: {r}"
    );
    assert_eq!(srv["comm"], server.comm().as_str(), "server comm: {r}");
    assert_eq!(srv["cgroup"], srv_cg.rel(), "server cgroup: {r}");
    assert_ne!(
        client["netns_cookie"], srv["netns_cookie"],
        "two namespaces: {r}"
    );

    // Everything fit in the capture budget, so the counters and the capture agree
    // (unless the agent settled the class mid-connection and stopped capturing,
    // which the next test shows on purpose).
    let c2s = r["bytes_client_to_server"].as_u64().expect("bytes c2s");
    let s2c = r["bytes_server_to_client"].as_u64().expect("bytes s2c");
    assert!(c2s > 40, "a GET request: {r}");
    assert!(
        s2c > body.len() as u64,
        "headers plus the 1000-byte body: {r}"
    );
    // The request is whole either way: settling needs the answer to have started.
    assert_eq!(r["capture"]["client_to_server"].as_u64(), Some(c2s), "{r}");
    let captured_s2c = r["capture"]["server_to_client"].as_u64().unwrap_or(0);
    if r["capture"]["settled"] == false {
        assert_eq!(captured_s2c, s2c, "{r}");
    } else {
        assert!(captured_s2c > 0 && captured_s2c <= s2c, "{r}");
    }
    assert_eq!(r["capture"]["lost"], false);
    drop(server);
    agent.stop();
}

#[test]
fn tls_connection_is_reported_as_tls() {
    require_root();
    let pair = NetnsPair::new("tls", 22);
    let cg = Cgroup::new("tls");
    let dir = TempDir::new();
    let pki = Pki::generate(dir.path());
    let agent = Agent::start(AgentOptions::default());
    let _server = peers::openssl_server(Some(&pair.a), Some(&cg), &pki, 8443, &["-www"]);
    let url = format!("https://{}/", hostport(pair.a_v4(), 8443));
    let ca = pki.ca();
    let (_pid, _) = curl_with_pid(
        &pair.b,
        &cg,
        &url,
        &["-k", "--cacert", ca.to_str().expect("utf8")],
    );
    let recs = agent.wait_records(1, WAIT, to_server(pair.a_v4(), 8443));
    let r = &recs[0];
    assert_eq!(r["connection_security_policy"], "tls", "{r}");
    assert_eq!(r["protocol"], "tls", "{r}");
    assert!(
        r["bytes_client_to_server"].as_u64().unwrap_or(0) > 200,
        "{r}"
    );
    agent.stop();
}

/// A long mutual TLS session of small messages: once the agent has seen the
/// handshake and data both ways it settles the class and marks both sockets
/// decided, and the kernel stops sending the connection's bytes up although the
/// capture budget is far from used.
#[test]
fn settled_connection_stops_being_captured() {
    require_root();
    let pair = NetnsPair::new("settle", 27);
    let cg = Cgroup::new("settle");
    let dir = TempDir::new();
    let pki = Pki::generate(dir.path());
    let agent = Agent::start(AgentOptions::default());
    let _server = peers::openssl_server(Some(&pair.a), Some(&cg), &pki, 8443, &["-Verify", "1"]);
    // 15 lines, one every 200 ms: about 3 s of a connection that stays far below
    // the 8 KiB budget.
    let script = format!(
        "for i in $(seq 15); do echo message-$i; sleep 0.2; done | \
         openssl s_client -quiet -no_ign_eof -connect {} -cert {} -key {} -CAfile {}",
        hostport(pair.a_v4(), 8443),
        pki.client_cert().display(),
        pki.client_key().display(),
        pki.ca().display()
    );
    let status = Spawn::new("sh")
        .args(["-c", &script])
        .netns(&pair.b)
        .cgroup(&cg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .wait_timeout(Duration::from_secs(20))
        .expect("s_client finished");
    assert!(status.success(), "s_client failed: {status}");

    let recs = agent.wait_records(1, WAIT, to_server(pair.a_v4(), 8443));
    let r = &recs[0];
    assert_eq!(r["connection_security_policy"], "mutual_tls", "{r}");
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["capture"]["settled"], true, "{r}");
    let sent = r["bytes_client_to_server"].as_u64().expect("bytes c2s");
    let captured = r["capture"]["client_to_server"].as_u64().expect("captured");
    assert!(
        sent < 8192,
        "the whole session fits in the budget, so only the decided mark can stop the capture: {r}"
    );
    assert!(
        captured + 10 * 30 <= sent,
        "most of the 15 messages (a TLS record of about 30 bytes each) were not captured: {captured} of {sent} bytes: {r}"
    );
    let exit = agent.stop();
    let decided = exit
        .stderr
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("decided="))
        .filter_map(|n| {
            n.trim_matches(|c: char| !c.is_ascii_digit())
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        decided >= 1,
        "the kernel counted sockets marked decided; the agent said:\n{}",
        exit.stderr
    );
}

#[test]
fn loopback_connection_is_one_record_with_both_ends() {
    require_root();
    let pair = NetnsPair::new("lo", 23);
    let srv_cg = Cgroup::new("lo-server");
    let cli_cg = Cgroup::new("lo-client");
    let dir = TempDir::new();
    std::fs::write(dir.path().join("index.html"), "hello").expect("write");
    let agent = Agent::start(AgentOptions::default());
    let lo = "127.0.0.1".parse().expect("ip");
    let server = peers::http_server(Some(&pair.a), Some(&srv_cg), lo, 8081, dir.path());
    let (curl_pid, _) = curl_with_pid(&pair.a, &cli_cg, "http://127.0.0.1:8081/index.html", &[]);
    // Wait a little longer than the linger so a duplicate would have been emitted.
    std::thread::sleep(Duration::from_millis(1500));
    let recs = agent.wait_records(1, WAIT, |r| {
        port_of(r, "server") == 8081
            && r["client"]["local"]["pid"].as_u64() == Some(u64::from(curl_pid))
    });
    assert_eq!(recs.len(), 1, "reported once: {recs:?}");
    let r = &recs[0];
    assert_eq!(r["direction"], "local");
    assert_eq!(
        r["client"]["local"]["netns_cookie"],
        r["server"]["local"]["netns_cookie"]
    );
    assert_eq!(
        r["server"]["local"]["pid"].as_u64(),
        Some(u64::from(server.pid()))
    );
    assert_eq!(r["connection_security_policy"], "none");
    agent.stop();
}

#[test]
fn ipv6_connection_is_reported() {
    require_root();
    let pair = NetnsPair::new("v6", 24);
    let cg = Cgroup::new("v6");
    let dir = TempDir::new();
    std::fs::write(dir.path().join("index.html"), "six").expect("write");
    let agent = Agent::start(AgentOptions::default());
    let _server = peers::http_server(Some(&pair.a), Some(&cg), pair.a_v6(), 8082, dir.path());
    let url = format!("http://{}/index.html", hostport(pair.a_v6(), 8082));
    curl_with_pid(&pair.b, &cg, &url, &["-g"]);
    let recs = agent.wait_records(1, WAIT, to_server(pair.a_v6(), 8082));
    let r = &recs[0];
    assert_eq!(addr_of(r, "client"), pair.b_v6().to_string(), "{r}");
    assert_eq!(r["connection_security_policy"], "none");
    assert!(r["bytes_server_to_client"].as_u64().unwrap_or(0) > 3);
    agent.stop();
}

/// An echo server and a client that talk once, wait for a line on stdin, then talk
/// again and close.
const ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
while True:
    c, _ = s.accept()
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
"#;

const PAUSED_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"before the agent\n"); c.recv(100)
print("connected", flush=True)
sys.stdin.readline()
c.sendall(b"after the agent\n"); c.recv(100)
c.close()
"#;

#[test]
fn connection_older_than_the_agent_is_reported_as_predating_it() {
    require_root();
    let pair = NetnsPair::new("old", 25);
    let cg = Cgroup::new("old");
    let _server = Spawn::new("/usr/bin/python3")
        .args(["-c", ECHO_SERVER, &pair.a_v4().to_string(), "9000"])
        .netns(&pair.a)
        .cgroup(&cg)
        .spawn();
    peers::wait_listening(Some(&pair.a), 9000);
    let mut client = Spawn::new("/usr/bin/python3")
        .args(["-c", PAUSED_CLIENT, &pair.a_v4().to_string(), "9000"])
        .netns(&pair.b)
        .cgroup(&cg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    {
        use std::io::BufRead as _;
        let out = client.inner().stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("client output");
        assert_eq!(line.trim(), "connected");
    }
    let agent = Agent::start(AgentOptions::default());
    {
        use std::io::Write as _;
        let mut stdin = client.inner().stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("resume client");
    }
    assert!(
        client
            .wait_timeout(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let recs = agent.wait_records(1, WAIT, to_server(pair.a_v4(), 9000));
    let r = &recs[0];
    assert_eq!(r["predates_agent"], true, "{r}");
    assert_eq!(
        r["connection_security_policy"], "unknown",
        "mid-stream bytes are not classified: {r}"
    );
    assert_eq!(r["outcome"], "incomplete", "{r}");
    assert_eq!(r["direction"], "local", "{r}");
    assert_eq!(
        addr_of(r, "client"),
        pair.b_v4().to_string(),
        "roles recovered: {r}"
    );
    agent.stop();
}

const BURST_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1024)
def serve(c):
    d = c.recv(100)
    c.sendall(b"pong:" + d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const BURST_CLIENT: &str = r#"
import socket, sys
from concurrent.futures import ThreadPoolExecutor
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def one(i):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(b"ping %06d" % i)
    got = b""
    while True:
        d = c.recv(100)
        if not d: break
        got += d
    c.close()
    assert got == b"pong:ping %06d" % i, got
with ThreadPoolExecutor(16) as ex:
    list(ex.map(one, range(n)))
print("done", n)
"#;

#[test]
fn burst_of_1000_connections_is_fully_accounted_for() {
    require_root();
    let pair = NetnsPair::new("burst", 26);
    let cg = Cgroup::new("burst");
    let agent = Agent::start(AgentOptions::default());
    let _server = Spawn::new("/usr/bin/python3")
        .args(["-c", BURST_SERVER, &pair.a_v4().to_string(), "9100"])
        .netns(&pair.a)
        .cgroup(&cg)
        .spawn();
    peers::wait_listening(Some(&pair.a), 9100);
    let out = Spawn::new("/usr/bin/python3")
        .args(["-c", BURST_CLIENT, &pair.a_v4().to_string(), "9100", "1000"])
        .netns(&pair.b)
        .cgroup(&cg)
        .run_ok(Duration::from_secs(120));
    assert_eq!(out.trim(), "done 1000");
    std::thread::sleep(Duration::from_secs(2));
    let exit = agent.stop();
    let recs: Vec<&Record> = exit
        .records
        .iter()
        .filter(|r| to_server(pair.a_v4(), 9100)(r))
        .collect();
    let stats = exit
        .stderr
        .lines()
        .rev()
        .find(|l| l.contains("final_=true"))
        .unwrap_or("")
        .to_owned();
    if recs.len() != 1000 {
        // Loss is allowed only if it was counted and logged.
        assert!(
            stats.contains("ringbuf_full=") && !stats.contains("ringbuf_full=0 "),
            "only {} of 1000 connections reported and no loss was counted:\n{stats}",
            recs.len()
        );
    }
    assert_eq!(
        recs.len(),
        1000,
        "every connection reported (final stats: {stats})"
    );
    for r in &recs {
        assert_eq!(r["direction"], "local", "{r}");
        assert_eq!(r["connection_security_policy"], "none", "{r}");
        assert_eq!(r["bytes_client_to_server"].as_u64(), Some(11), "{r}");
        assert_eq!(r["bytes_server_to_client"].as_u64(), Some(16), "{r}");
        assert_eq!(r["open"], false);
    }
    let mut ports: Vec<u64> = recs.iter().map(|r| port_of(r, "client")).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 1000, "1000 distinct client ports");
}

#[test]
fn nothing_of_ours_stays_attached_after_exit() {
    require_root();
    // A SIGKILL leaves no cleanup code running: the kernel still drops every link
    // with the process's file descriptors, because nothing is pinned.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let agent = Agent::start(AgentOptions::default());
        let loaded = our_loaded_programs();
        assert!(
            loaded.len() >= 4,
            "the four programs are loaded while running: {loaded:?}"
        );
        let exit = agent.stop_with(signal);
        if signal != libc::SIGKILL {
            assert!(
                exit.status.success(),
                "clean exit on signal {signal}: {}",
                exit.stderr
            );
        }
        // Links go at exit; the kernel frees the program objects after an RCU grace
        // period (tracing programs a little later), so give it a moment.
        let gone = integration_tests::wait_for(Duration::from_secs(10), || {
            our_loaded_programs().is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "programs still loaded 10 s after exit: {:?}",
            our_loaded_programs()
        );
    }
}

#[test]
fn missing_privilege_is_one_clear_line_and_a_failure() {
    let bin = integration_tests::agent_bin();
    let out = Spawn::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&bin)
        .args(["run"])
        .run(Duration::from_secs(20));
    assert!(!out.status.success(), "must fail without privileges");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("mtls-auditor: missing capability CAP_BPF"),
        "one line naming what is missing, got:\n{stderr}"
    );
    assert!(out.stdout.is_empty());
}

fn quiet_sockets(listen: &str) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let body = agent
        .get(format!("http://{listen}/metrics"))
        .call()
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
        .body_mut()
        .read_to_string()
        .expect("metrics body");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("mtls_auditor_quiet_sockets ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no mtls_auditor_quiet_sockets in the scrape:\n{body}"))
}

/// Issue 12: an established connection that has carried nothing is held in the
/// kernel's socket storage, not by the agent; it is announced when it first
/// speaks or closes, and its record still starts when it was established.
#[test]
fn idle_connections_are_announced_when_they_speak_or_close() {
    use std::io::{Read as _, Write as _};
    require_root();
    let listen = "127.0.0.1:19136";
    let agent = Agent::start(AgentOptions::default().arg("--listen").arg(listen));
    let before = quiet_sockets(listen);
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    let mut pairs = Vec::new();
    for _ in 0..10 {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = server.accept().expect("accept");
        pairs.push((c, s));
    }
    let held = Duration::from_millis(1500);
    std::thread::sleep(held);
    let quiet = quiet_sockets(listen);
    assert!(
        quiet >= before + 20,
        "both ends of 10 idle connections are quiet sockets: {before} before, {quiet} now"
    );
    // Half of them speak: a request one way, an answer the other.
    for (c, s) in pairs.iter_mut().take(5) {
        c.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0);
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("write");
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let spoke = quiet_sockets(listen);
    assert!(
        spoke + 10 <= quiet,
        "the 10 ends that spoke were announced: {quiet} quiet before, {spoke} after"
    );
    drop(pairs);
    let recs = agent.wait_records(10, WAIT, |r| port_of(r, "server") == u64::from(port));
    assert_eq!(recs.len(), 10, "every connection reported once: {recs:?}");
    let me = u64::from(std::process::id());
    let mut http = 0;
    for r in &recs {
        assert_eq!(r["client"]["local"]["pid"].as_u64(), Some(me), "{r}");
        assert!(
            r["server"]["local"]["socket_cookie"].as_u64().is_some(),
            "both ends: {r}"
        );
        let ms = r["duration_ms"].as_f64().unwrap_or(0.0);
        assert!(
            ms >= held.as_millis() as f64,
            "starts when it was established, not when it was announced: {r}"
        );
        if r["protocol"] == "http1" {
            http += 1;
            assert_eq!(r["bytes_client_to_server"].as_u64(), Some(30), "{r}");
        } else {
            assert_eq!(r["bytes_client_to_server"].as_u64(), Some(0), "{r}");
            assert_eq!(r["bytes_server_to_client"].as_u64(), Some(0), "{r}");
        }
    }
    assert_eq!(http, 5, "the five that spoke were classified: {recs:?}");
    let after = quiet_sockets(listen);
    assert!(
        after <= before,
        "no quiet socket is left once they closed: {before} before, {after} after"
    );
    agent.stop();
}
