//! Real peers: Python HTTP servers, OpenSSL and curl, and the certificates they use.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    net::{Cgroup, Netns},
    proc::{Child, Spawn},
    wait_for,
};

/// `host:port` with IPv6 brackets, for URLs and OpenSSL.
pub fn hostport(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Waits until something in `ns` listens on TCP `port`.
pub fn wait_listening(ns: Option<&Netns>, port: u16) {
    let filter = format!("sport = :{port}");
    let ok = wait_for(Duration::from_secs(10), || {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns.name(), "ss"]);
                c
            }
            None => std::process::Command::new("ss"),
        };
        let out = cmd.args(["-H", "-ltn", &filter]).output().ok()?;
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    assert!(ok.is_some(), "nothing listens on port {port} after 10 s");
}

/// `python3 -m http.server` bound to `ip:port` in `ns`/`cg`.
pub fn http_server(
    ns: Option<&Netns>,
    cg: Option<&Cgroup>,
    ip: IpAddr,
    port: u16,
    dir: &Path,
) -> Child {
    let mut s = Spawn::new("/usr/bin/python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            &ip.to_string(),
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ns) = ns {
        s = s.netns(ns);
    }
    if let Some(cg) = cg {
        s = s.cgroup(cg);
    }
    let child = s.spawn();
    wait_listening(ns, port);
    child
}

/// `curl` with the given extra arguments, in `ns`/`cg`; returns the body.
pub fn curl(ns: Option<&Netns>, cg: Option<&Cgroup>, url: &str, extra: &[&str]) -> String {
    let mut s = Spawn::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(extra)
        .arg(url);
    if let Some(ns) = ns {
        s = s.netns(ns);
    }
    if let Some(cg) = cg {
        s = s.cgroup(cg);
    }
    s.run_ok(Duration::from_secs(20))
}

/// A CA, a server certificate for the test addresses and a client certificate with
/// a SPIFFE URI SAN, made with the openssl command line.
pub struct Pki {
    pub dir: PathBuf,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    pub fn ca(&self) -> &Path {
        &self.ca
    }
    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }
    pub fn server_key(&self) -> &Path {
        &self.server_key
    }
    pub fn client_cert(&self) -> &Path {
        &self.client_cert
    }
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// Generates the material (EC P-256 keys) into `dir`.
    pub fn generate(dir: &Path) -> Self {
        let run = |args: &[&str]| {
            Spawn::new("openssl")
                .args(args)
                .current_dir(dir)
                .run_ok(Duration::from_secs(30));
        };
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "30",
            "-subj",
            "/CN=mtls-auditor test CA",
            "-out",
            "ca.pem",
        ]);
        // The server certificate names every test address (10.213.N.1, fd13:213::N:1)
        // so that clients verify it for real.
        let mut server_sans = String::from("subjectAltName=DNS:server.test,IP:127.0.0.1,IP:::1");
        for n in 1..=64u16 {
            server_sans.push_str(&format!(",IP:10.213.{n}.1,IP:fd13:213::{n:x}:1"));
        }
        server_sans.push_str(",URI:spiffe://cluster.local/ns/default/sa/server");
        for (name, subj, ext) in [
            ("server", "/CN=server.test", server_sans.as_str()),
            (
                "client",
                "/CN=client.test",
                "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/client",
            ),
        ] {
            run(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &format!("{name}.key"),
            ]);
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subj,
                "-out",
                &format!("{name}.csr"),
            ]);
            std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n")).expect("write ext");
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Self {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// `openssl s_server` on `port` in `ns`/`cg` with the PKI's server certificate,
/// plus `extra` (`-www` to answer HTTP, `-Verify 1` to require a client certificate).
pub fn openssl_server(
    ns: Option<&Netns>,
    cg: Option<&Cgroup>,
    pki: &Pki,
    port: u16,
    extra: &[&str],
) -> Child {
    let mut s = Spawn::new("openssl")
        .args(["s_server", "-quiet", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(pki.server_cert())
        .arg("-key")
        .arg(pki.server_key())
        .arg("-CAfile")
        .arg(pki.ca())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ns) = ns {
        s = s.netns(ns);
    }
    if let Some(cg) = cg {
        s = s.cgroup(cg);
    }
    let child = s.spawn();
    wait_listening(ns, port);
    child
}
