//! The servers and load generators of the workloads, and their output parsers.
//!
//! - short connections: nginx serving a 612-byte page, `wrk -H 'Connection: close'`
//!   (one TCP connection per request);
//! - short mutual-TLS connections: the same nginx on a TLS port with
//!   `ssl_verify_client on`, two `openssl s_time -new -cert` (one full TLS 1.3
//!   handshake with a client certificate and one GET per connection, in one
//!   process each, so the rate is bound by the handshakes, not by process starts);
//! - bulk throughput: one `iperf3` stream.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    sys::{self, Guard, wait_listening},
    tls::Certs,
};

/// Parallel `s_time` clients: one per core of the build machines.
const S_TIME_CLIENTS: usize = 2;

pub struct Nginx {
    pub _guard: Guard,
    pub http_port: u16,
    pub tls_port: u16,
}

/// nginx with a plaintext and a mutual-TLS server (TLS 1.2 and 1.3, no session
/// resumption: every connection is a full handshake; a request without a valid
/// client certificate is answered 403).
pub fn nginx(dir: &Path, certs: &Certs, http_port: u16, tls_port: u16) -> Result<Nginx> {
    fs::create_dir_all(dir.join("logs"))?;
    fs::write(dir.join("index.html"), "x".repeat(612))?;
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{ listen 127.0.0.1:{http_port} reuseport backlog=4096; root {d}; }}\n\
         server {{\n  listen 127.0.0.1:{tls_port} ssl backlog=4096;\n  root {d};\n\
         \x20 ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_certificate {sc};\n  ssl_certificate_key {sk};\n\
         \x20 ssl_client_certificate {ca};\n  ssl_verify_client on;\n\
         \x20 ssl_session_cache off;\n  ssl_session_tickets off;\n\
         \x20 location / {{ if ($ssl_client_verify != SUCCESS) {{ return 403; }} }}\n }}\n}}\n",
        d = dir.display(),
        sc = certs.server_cert.display(),
        sk = certs.server_key.display(),
        ca = certs.ca.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .args(["-p", &dir.display().to_string()])
        .args(["-c", &conf_path.display().to_string()])
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt package nginx-light)")?;
    let mut guard = Guard(Some(child));
    let log = dir.join("logs/error.log");
    for port in [http_port, tls_port] {
        wait_listening(&mut guard, "nginx", port).with_context(|| {
            format!(
                "nginx (its log: {})",
                fs::read_to_string(&log).unwrap_or_default().trim()
            )
        })?;
    }
    Ok(Nginx {
        _guard: guard,
        http_port,
        tls_port,
    })
}

pub fn iperf_server(port: u16) -> Result<Guard> {
    let child = Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3")?;
    let mut guard = Guard(Some(child));
    wait_listening(&mut guard, "iperf3 -s", port)?;
    Ok(guard)
}

/// One run of a connection-per-request load generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnRun {
    /// Connections per second.
    pub rate: f64,
    /// Connections completed (one request each).
    pub conns: u64,
    /// Connections that failed (wrk's socket errors; s_time's missing ones are
    /// not counted by s_time).
    pub errors: u64,
    /// Busy CPU seconds of the whole machine while it ran: load generator,
    /// server, agent, kernel (see [`sys::machine_busy_seconds`]).
    pub busy_s: f64,
}

/// `wrk -t2 -c32 -H 'Connection: close'` for `seconds`.
pub fn wrk(port: u16, seconds: u64) -> Result<ConnRun> {
    let busy0 = sys::machine_busy_seconds()?;
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s")])
        .args(["-H", "Connection: close"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let busy_s = sys::machine_busy_seconds()? - busy0;
    Ok(ConnRun {
        busy_s,
        ..parse_wrk(&text)?
    })
}

/// Requests per second, requests completed and socket errors from wrk's report.
/// Fails on non-2xx answers (the page must be served for the run to count).
pub fn parse_wrk(text: &str) -> Result<ConnRun> {
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no `Requests/sec:` line in wrk's output:\n{text}"))?;
    // "  23538 requests in 2.02s, 5.19MB read"
    let conns = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in ")
                .then(|| n.parse::<u64>().ok())?
        })
        .ok_or_else(|| anyhow!("no `N requests in` line in wrk's output:\n{text}"))?;
    if let Some(n) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
    {
        bail!("wrk: {} answers were not 2xx/3xx:\n{text}", n.trim());
    }
    // "  Socket errors: connect 0, read 12, write 0, timeout 0"
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(ConnRun {
        rate,
        conns,
        errors,
        busy_s: 0.0,
    })
}

/// Two `openssl s_time -new` clients with the client certificate for `seconds`;
/// the rate is their connections over the wall time of the longer one.
pub fn s_time(port: u16, certs: &Certs, seconds: u64) -> Result<ConnRun> {
    let busy0 = sys::machine_busy_seconds()?;
    let started = Instant::now();
    let children = (0..S_TIME_CLIENTS)
        .map(|_| {
            Command::new("openssl")
                .args(["s_time", "-new", "-connect", &format!("127.0.0.1:{port}")])
                .args(["-cert", &certs.client_cert.display().to_string()])
                .args(["-key", &certs.client_key.display().to_string()])
                .args(["-time", &seconds.to_string(), "-www", "/index.html"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running openssl s_time")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut conns = 0;
    for c in children {
        let out = c.wait_with_output().context("waiting for openssl s_time")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "openssl s_time failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        conns += parse_s_time(&text)?;
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(ConnRun {
        rate: conns as f64 / wall,
        conns,
        errors: 0,
        busy_s: sys::machine_busy_seconds()? - busy0,
    })
}

/// Connections made, from s_time's `N connections in T real seconds, B bytes read
/// per connection`. Fails when fewer bytes than the 612-byte page came back per
/// connection: nginx's refusals (400, 403) are smaller, so the page was not served.
pub fn parse_s_time(text: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.contains(" real seconds, "))
        .ok_or_else(|| {
            anyhow!("no `connections in N real seconds` line in s_time's output:\n{text}")
        })?;
    let conns = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("s_time: no connection count in `{line}`"))?;
    let per_conn = line
        .split_once("seconds, ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("s_time: no bytes per connection in `{line}`"))?;
    if conns == 0 {
        bail!("s_time made no connection:\n{text}");
    }
    if per_conn < 612 {
        bail!(
            "s_time read {per_conn} bytes per connection, less than the 612-byte page: the server did not serve it (client certificate refused?):\n{text}"
        );
    }
    Ok(conns)
}

/// Bits per second of one iperf3 stream.
pub fn iperf(port: u16, seconds: u64) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", &seconds.to_string(), "-J"])
        .output()
        .context("running iperf3")?;
    parse_iperf(&String::from_utf8_lossy(&out.stdout))
}

/// `end.sum_received.bits_per_second` of iperf3's JSON report.
pub fn parse_iperf(text: &str) -> Result<f64> {
    let at = text
        .find("\"sum_received\"")
        .ok_or_else(|| anyhow!("no sum_received in iperf3's output:\n{text}"))?;
    let rest = &text[at..];
    let k = rest
        .find("\"bits_per_second\"")
        .ok_or_else(|| anyhow!("no sum_received.bits_per_second in iperf3's output"))?;
    let num: String = rest[k + "\"bits_per_second\"".len()..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    num.parse::<f64>()
        .with_context(|| format!("iperf3: bits_per_second `{num}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // wrk 4.1.0 (Debian), against nginx on loopback.
    const WRK: &str = "Running 2s test @ http://127.0.0.1:28480/index.html
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.44ms  14.20ms   74.31%
    Req/Sec     5.88k     1.59k   12.03k    87.50%
  23538 requests in 2.02s, 5.19MB read
Requests/sec:  11635.44
Transfer/sec:      2.56MB
";

    #[test]
    fn wrk_report_gives_rate_and_completed_connections() {
        assert_eq!(
            parse_wrk(WRK).expect("parses"),
            ConnRun {
                rate: 11635.44,
                conns: 23538,
                errors: 0,
                busy_s: 0.0,
            }
        );
    }

    #[test]
    fn wrk_socket_errors_are_summed_and_non_2xx_answers_refused() {
        let with_errors = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 3, read 12, write 0, timeout 1\nRequests/sec",
        );
        assert_eq!(parse_wrk(&with_errors).expect("parses").errors, 16);
        let refused = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 11964\nRequests/sec",
        );
        let err = parse_wrk(&refused).expect_err("non-2xx").to_string();
        assert!(err.contains("11964 answers were not 2xx/3xx"), "{err}");
        let err = parse_wrk("Running 2s test\n")
            .expect_err("empty")
            .to_string();
        assert!(err.contains("Requests/sec"), "{err}");
    }

    #[test]
    fn s_time_report_gives_connections_and_refusals_are_errors() {
        // openssl 3.0.19 s_time -new -www /index.html, client certificate accepted
        // (612-byte page plus headers).
        let ok = "Collecting connection statistics for 2 seconds\n****\n\n\
                  958 connections in 0.96s; 997.92 connections/user sec, bytes read 810000\n\
                  958 connections in 3 real seconds, 845 bytes read per connection\n";
        assert_eq!(parse_s_time(ok).expect("parses"), 958);
        // The 403 page nginx answers without a valid certificate is smaller.
        let refused = ok.replace("845 bytes", "389 bytes");
        let err = parse_s_time(&refused).expect_err("refused").to_string();
        assert!(err.contains("389 bytes per connection"), "{err}");
        assert!(parse_s_time("ERROR\n").is_err());
    }

    #[test]
    fn iperf_json_gives_received_bits_per_second() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 1.0},
            "sum_received": {"start": 0, "end": 1.000132, "seconds": 1.000132,
            "bytes": 1823604736, "bits_per_second": 14586912415.561146, "sender": true}}}"#;
        assert_eq!(parse_iperf(json).expect("parses"), 14586912415.561146);
        assert_eq!(
            parse_iperf(r#""sum_received": {"bits_per_second": 2.5e+10}"#).expect("exp"),
            2.5e10
        );
        assert!(parse_iperf("{}").is_err());
    }
}
