//! `mtls-auditor edges --agent ADDR` against listeners that are not a healthy
//! agent: one that accepts and never answers, and ones that drip their answer a
//! byte at a time. The command must give up at its deadline with a clear error,
//! never hang. Real sockets on loopback, the real binary.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// What the fake listener does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads the request, then says nothing.
    Silent,
    /// Sends the status line and headers one byte every 50 ms.
    DripHeaders,
    /// Sends the headers at once, then a long body one byte every 50 ms.
    DripBody,
    /// Answers 503 every time.
    Busy,
}

/// A listener on a free loopback port; each connection is served by `b` until the
/// client goes away or 30 s have passed (so the thread always ends).
fn listener(b: Behaviour) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(s) = stream else { return };
            thread::spawn(move || serve(s, b));
        }
    });
    addr
}

fn serve(mut s: TcpStream, b: Behaviour) {
    let end = Instant::now() + Duration::from_secs(30);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
    let drip = |s: &mut TcpStream, bytes: &[u8]| {
        for byte in bytes.iter().cycle() {
            if Instant::now() > end || s.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    match b {
        Behaviour::Silent => {
            while Instant::now() < end {
                // Returns 0 once the client closed.
                if matches!(s.read(&mut buf), Ok(0)) {
                    return;
                }
            }
        }
        Behaviour::DripHeaders => drip(&mut s, b"HTTP/1.1 200 OK\r\nX-Padding: aaaaaaaa"),
        Behaviour::DripBody => {
            if s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n[")
                .is_ok()
            {
                drip(&mut s, b" ");
            }
        }
        Behaviour::Busy => {
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n",
            );
        }
    }
}

/// Runs `edges --agent addr --timeout 1s`; returns (success, stderr, seconds taken).
fn edges(addr: &str) -> (bool, String, f64) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .args(["edges", "--agent", addr, "--timeout", "1s"])
        .env_remove("MTLS_AUDITOR_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mtls-auditor edges");
    // Far beyond the 1 s deadline: only a hang gets here.
    let limit = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`mtls-auditor edges --agent {addr} --timeout 1s` hung for 30 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (status.success(), err, start.elapsed().as_secs_f64())
}

fn gives_up(b: Behaviour) {
    let addr = listener(b);
    let (ok, err, secs) = edges(&addr);
    assert!(
        !ok,
        "succeeded against a listener that never answers in full"
    );
    assert_eq!(
        err.trim(),
        format!(
            "mtls-auditor: no complete answer from the agent at {addr} within 1s (--timeout): is `mtls-auditor run` listening there?"
        ),
        "after {secs:.1} s"
    );
}

#[test]
fn a_listener_that_never_answers_is_an_error_at_the_deadline() {
    gives_up(Behaviour::Silent);
}

#[test]
fn a_listener_that_drips_its_headers_is_an_error_at_the_deadline() {
    gives_up(Behaviour::DripHeaders);
}

#[test]
fn a_listener_that_drips_its_body_is_an_error_at_the_deadline() {
    let addr = listener(Behaviour::DripBody);
    let (ok, err, _) = edges(&addr);
    assert!(!ok);
    assert!(
        err.starts_with(&format!(
            "mtls-auditor: reading the agent's answer: no complete answer from the agent at {addr} within 1s"
        )),
        "{err}"
    );
}

#[test]
fn a_busy_agent_is_asked_again_until_the_deadline_then_named() {
    let addr = listener(Behaviour::Busy);
    let (ok, err, _) = edges(&addr);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("mtls-auditor: the agent at {addr} answered 503 Service Unavailable: busy")
    );
}

#[test]
fn nothing_listening_is_an_error_at_once() {
    // A port that was free a moment ago.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let (ok, err, _) = edges(&addr);
    assert!(!ok);
    assert!(
        err.starts_with(&format!(
            "mtls-auditor: asking the agent at {addr} (is `mtls-auditor run` listening there?):"
        )),
        "{err}"
    );
}
