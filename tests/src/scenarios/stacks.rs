//! Rows of other TLS stacks, each with mutual TLS, one-way TLS and a server that
//! asks for a certificate the client does not have, on TLS 1.3 and 1.2:
//!
//! - Java JSSE (OpenJDK 17): `tests/peers/java/TlsPeer.java`, compiled here; PKCS12
//!   key stores (`openssl pkcs12`) and a trust store made with `keytool`.
//! - Go `crypto/tls` (Go 1.21): `tests/peers/go/tlspeer`, built here.
//! - BoringSSL through grpcio (`tests/peers/python/grpc_peer.py` in the
//!   target/pytools-grpc environment): gRPC servers with and without
//!   `require_client_auth`, clients with and without certificates. grpcio cannot
//!   choose its TLS version or ask for an optional certificate, so the TLS 1.2 rows
//!   and the "asks, accepts none" row use the Go peer as a gRPC server (HTTP/2) for
//!   the grpcio client, whose flight is what the classifier reads.
//! - NSS: `selfserv` and `tstclnt` (libnss3-tools) with NSS databases made by
//!   `certutil` and `pk12util`. `selfserv` listens on every address: it runs in the
//!   matrix's server namespace like every server.
//! - TLS 1.3 post-handshake authentication with Python's ssl module
//!   (`tests/peers/python/pha_peer.py`): the client offers `post_handshake_auth`
//!   and the certificate, if any, is sent after application data.
//!
//! What each stack's client flight looks like (record padding, coalescing) is in
//! PLATFORM.md and in the "client records" column of docs/accuracy.md.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{Ctx, Expect, Scenario, p};
use crate::{Child, Spawn, peers::Pki, peers::wait_listening};

/// What the peers need, made once per matrix run.
pub struct Peers {
    /// Directory holding `TlsPeer.class`.
    java_classes: PathBuf,
    java_server_ks: PathBuf,
    java_client_ks: PathBuf,
    java_trust: PathBuf,
    go_peer: PathBuf,
    grpc_python: PathBuf,
    nss_server_db: String,
    nss_client_db: String,
    nss_empty_db: String,
    /// A request for `tstclnt -A`.
    nss_request: PathBuf,
}

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn project_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Go 1.21 or later: `MTLS_AUDITOR_GO`, Debian's golang-1.21-go, or `go` on PATH.
fn go_binary() -> PathBuf {
    if let Some(g) = std::env::var_os("MTLS_AUDITOR_GO") {
        return g.into();
    }
    let debian = PathBuf::from("/usr/lib/go-1.21/bin/go");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("go")
}

fn run(program: &str, args: &[&str], dir: &Path) {
    Spawn::new(program)
        .args(args)
        .current_dir(dir)
        .run_ok(Duration::from_secs(300));
}

impl Peers {
    /// Compiles the Java and Go peers, converts the PKI into PKCS12 key stores and
    /// NSS databases, and finds the grpcio environment. Panics with what is missing
    /// (`cargo xtask setup` installs all of it).
    pub fn prepare(dir: &Path, pki: &Pki) -> Self {
        let src = sources();
        let out = dir.join("peers");
        std::fs::create_dir_all(&out).expect("peers dir");

        // Java: the class, PKCS12 key stores of the EC certificates, a trust store.
        let java_classes = out.join("java");
        run(
            "javac",
            &["-d", p(&java_classes), p(&src.join("java/TlsPeer.java"))],
            dir,
        );
        let pkcs12 = |name: &str, cert: &Path, key: &Path| {
            let path = out.join(format!("{name}.p12"));
            run(
                "openssl",
                &[
                    "pkcs12",
                    "-export",
                    "-in",
                    p(cert),
                    "-inkey",
                    p(key),
                    "-name",
                    name,
                    "-passout",
                    "pass:changeit",
                    "-out",
                    p(&path),
                ],
                dir,
            );
            path
        };
        let java_server_ks = pkcs12("server", pki.server_cert(), pki.server_key());
        let java_client_ks = pkcs12("client", pki.client_cert(), pki.client_key());
        let java_trust = out.join("trust.p12");
        run(
            "keytool",
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "ca",
                "-file",
                p(pki.ca()),
                "-keystore",
                p(&java_trust),
                "-storetype",
                "PKCS12",
                "-storepass",
                "changeit",
            ],
            dir,
        );

        // Go: built with a cache under target/ so later runs take a second.
        let go_peer = out.join("tlspeer");
        let cache = project_target().join("go-cache");
        std::fs::create_dir_all(&cache).expect("go cache dir");
        Spawn::new(p(&go_binary()))
            .args(["build", "-o", p(&go_peer), "."])
            .current_dir(&src.join("go/tlspeer"))
            .env("GOCACHE", &cache)
            .env("GOPATH", project_target().join("go-path"))
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .run_ok(Duration::from_secs(600));

        // grpcio, installed by `cargo xtask setup`.
        let grpc_python = std::env::var_os("MTLS_AUDITOR_PYTOOLS_GRPC")
            .map_or_else(|| project_target().join("pytools-grpc"), PathBuf::from)
            .join("bin/python");
        assert!(
            grpc_python.exists(),
            "{} is missing: run `cargo xtask setup` (it installs grpcio for the gRPC peers)",
            grpc_python.display()
        );

        // NSS: the server's database (its key and the CA), a client's with its
        // certificate, and one with only the CA (tstclnt offers any certificate its
        // database holds, so a client without one needs its own).
        let p12_import = |db: &str, p12: &Path| {
            run("pk12util", &["-i", p(p12), "-d", db, "-W", "changeit"], dir)
        };
        let nss_db = |name: &str| {
            let path = out.join(name);
            std::fs::create_dir_all(&path).expect("nss db dir");
            let db = format!("sql:{}", p(&path));
            run("certutil", &["-N", "-d", &db, "--empty-password"], dir);
            run(
                "certutil",
                &[
                    "-A",
                    "-d",
                    &db,
                    "-n",
                    "ca",
                    "-t",
                    "CT,C,C",
                    "-i",
                    p(pki.ca()),
                ],
                dir,
            );
            db
        };
        let nss_server_db = nss_db("nss-server");
        p12_import(&nss_server_db, &java_server_ks);
        let nss_client_db = nss_db("nss-client");
        p12_import(&nss_client_db, &java_client_ks);
        let nss_empty_db = nss_db("nss-no-cert");
        let nss_request = out.join("request.txt");
        std::fs::write(&nss_request, "GET / HTTP/1.0\r\n\r\n").expect("request file");

        Self {
            java_classes,
            java_server_ks,
            java_client_ks,
            java_trust,
            go_peer,
            grpc_python,
            nss_server_db,
            nss_client_db,
            nss_empty_db,
            nss_request,
        }
    }
}

/// A server in the matrix's server namespace, its stderr kept in the test
/// directory (`server-PORT.log`) for when a row fails.
fn server(ctx: &Ctx, program: &str, args: &[&str], port: u16) -> Child {
    let log = File::create(ctx.dir.path().join(format!("server-{port}.log"))).expect("server log");
    let child = Spawn::new(program)
        .args(args)
        .netns(&ctx.pair.a)
        .cgroup(&ctx.cg_server)
        .current_dir(ctx.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn();
    wait_listening(Some(&ctx.pair.a), port);
    child
}

/// Runs a client; a failure the row does not expect is printed (the row's
/// expectation judges it).
fn client(ctx: &Ctx, program: &str, args: &[&str], port: u16) {
    let out = ctx.client(program, args);
    if !out.status.success() {
        eprintln!(
            "port {port}: client {program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// The expected class and outcome, protocol `tls`, with `high` confidence.
fn high(class: &'static str, outcome: &'static str) -> Expect {
    Expect {
        class,
        outcome: Some(outcome),
        protocol: "tls",
        mesh: None,
        resumed: None,
        confidence: Some("high"),
    }
}

/// The expected class and outcome, protocol `tls`; confidence not judged.
fn class(class: &'static str, outcome: &'static str) -> Expect {
    Expect {
        confidence: None,
        ..high(class, outcome)
    }
}

/// How the server treats client certificates, in each stack's words.
#[derive(Clone, Copy)]
enum Auth {
    /// Asks and requires one.
    Require,
    /// Does not ask.
    None,
    /// Asks, accepts none.
    Request,
}

fn java(ctx: &Ctx, port: u16, version: &str, auth: Auth, cert: bool) {
    let pe = &ctx.peers;
    let auth = match auth {
        Auth::Require => "need",
        Auth::None => "none",
        Auth::Request => "want",
    };
    let port_s = port.to_string();
    let _s = server(
        ctx,
        "java",
        &[
            "-cp",
            p(&pe.java_classes),
            "TlsPeer",
            "server",
            &port_s,
            p(&pe.java_server_ks),
            p(&pe.java_trust),
            auth,
            version,
        ],
        port,
    );
    let ip = ctx.server_ip();
    let mut args = vec![
        "-cp",
        p(&pe.java_classes),
        "TlsPeer",
        "client",
        &ip,
        &port_s,
        p(&pe.java_trust),
        version,
    ];
    if cert {
        args.push(p(&pe.java_client_ks));
    }
    client(ctx, "java", &args, port);
}

/// The Go peer as a server: HTTP/1.0, or gRPC over HTTP/2 with `grpc`.
fn go_server(ctx: &Ctx, port: u16, version: &str, auth: Auth, grpc: bool) -> Child {
    let auth = match auth {
        Auth::Require => "require",
        Auth::None => "none",
        Auth::Request => "request",
    };
    let listen = format!(":{port}");
    let mut args = vec![
        "server",
        "-listen",
        &listen,
        "-cert",
        p(ctx.pki.server_cert()),
        "-key",
        p(ctx.pki.server_key()),
        "-ca",
        p(ctx.pki.ca()),
        "-auth",
        auth,
        "-version",
        version,
    ];
    if grpc {
        args.push("-grpc");
    }
    server(ctx, p(&ctx.peers.go_peer), &args, port)
}

fn go(ctx: &Ctx, port: u16, version: &str, auth: Auth, cert: bool) {
    let _s = go_server(ctx, port, version, auth, false);
    let connect = format!("{}:{port}", ctx.server_ip());
    let mut args = vec![
        "client",
        "-connect",
        &connect,
        "-name",
        "server.test",
        "-ca",
        p(ctx.pki.ca()),
        "-version",
        version,
    ];
    if cert {
        args.extend_from_slice(&[
            "-cert",
            p(ctx.pki.client_cert()),
            "-key",
            p(ctx.pki.client_key()),
        ]);
    }
    client(ctx, p(&ctx.peers.go_peer), &args, port);
}

/// The grpcio (BoringSSL) server, requiring a client certificate or not.
fn grpcio_server(ctx: &Ctx, port: u16, require: bool) -> Child {
    let port_s = port.to_string();
    server(
        ctx,
        p(&ctx.peers.grpc_python),
        &[
            p(&sources().join("python/grpc_peer.py")),
            "server",
            &port_s,
            p(ctx.pki.server_cert()),
            p(ctx.pki.server_key()),
            p(ctx.pki.ca()),
            if require { "require" } else { "none" },
        ],
        port,
    )
}

/// One unary call from the grpcio (BoringSSL) client.
fn grpcio_client(ctx: &Ctx, port: u16, cert: bool) {
    let target = format!("{}:{port}", ctx.server_ip());
    let script = sources().join("python/grpc_peer.py");
    let mut args = vec![
        p(&script),
        "client",
        &target,
        "server.test",
        p(ctx.pki.ca()),
    ];
    if cert {
        args.extend_from_slice(&[p(ctx.pki.client_cert()), p(ctx.pki.client_key())]);
    }
    client(ctx, p(&ctx.peers.grpc_python), &args, port);
}

fn nss(ctx: &Ctx, port: u16, version: &str, auth: Auth, cert: bool) {
    let pe = &ctx.peers;
    let range = format!("tls{version}:tls{version}");
    let port_s = port.to_string();
    let mut args = vec![
        "-d",
        &pe.nss_server_db,
        "-e",
        "server",
        "-p",
        &port_s,
        "-V",
        &range,
    ];
    match auth {
        Auth::Require => args.extend_from_slice(&["-r", "-r"]),
        Auth::Request => args.push("-r"),
        Auth::None => {}
    }
    let _s = server(ctx, "selfserv", &args, port);
    let ip = ctx.server_ip();
    let db = if cert {
        &pe.nss_client_db
    } else {
        &pe.nss_empty_db
    };
    let mut args = vec![
        "-h",
        &ip,
        "-p",
        &port_s,
        "-d",
        db,
        "-V",
        &range,
        "-A",
        p(&pe.nss_request),
    ];
    if cert {
        args.extend_from_slice(&["-n", "client"]);
    }
    client(ctx, "tstclnt", &args, port);
}

/// Python post-handshake authentication: `mode` is the server's (`require`,
/// `optional`, `never`).
fn pha(ctx: &Ctx, port: u16, mode: &str, cert: bool) {
    let script = sources().join("python/pha_peer.py");
    let port_s = port.to_string();
    let _s = server(
        ctx,
        "/usr/bin/python3",
        &[
            p(&script),
            "server",
            &port_s,
            p(ctx.pki.server_cert()),
            p(ctx.pki.server_key()),
            p(ctx.pki.ca()),
            mode,
        ],
        port,
    );
    let ip = ctx.server_ip();
    let mut args = vec![
        p(&script),
        "client",
        &ip,
        &port_s,
        "server.test",
        p(ctx.pki.ca()),
    ];
    if cert {
        args.extend_from_slice(&[p(ctx.pki.client_cert()), p(ctx.pki.client_key())]);
    }
    client(ctx, "/usr/bin/python3", &args, port);
}

fn row(
    name: &'static str,
    what: &'static str,
    port: u16,
    expect: Expect,
    run: fn(&Ctx, u16),
) -> Scenario {
    Scenario {
        name,
        what,
        port,
        tls: true,
        expect: vec![expect],
        run,
    }
}

/// The rows. Ports 20040-20069.
pub fn rows() -> Vec<Scenario> {
    vec![
        // Java JSSE: every TLS 1.3 record carries 16 bytes of padding.
        row(
            "java-tls13-mtls",
            "Java JSSE client and server, TLS 1.3, certificate required and presented",
            20040,
            high("mutual_tls", "completed"),
            |ctx, port| java(ctx, port, "1.3", Auth::Require, true),
        ),
        row(
            "java-tls13-no-cert",
            "Java JSSE, TLS 1.3, the server does not ask",
            20041,
            high("tls", "completed"),
            |ctx, port| java(ctx, port, "1.3", Auth::None, false),
        ),
        row(
            "java-tls13-empty-cert",
            "Java JSSE, TLS 1.3, the server asks (want), the client has none",
            20042,
            high("tls", "completed"),
            |ctx, port| java(ctx, port, "1.3", Auth::Request, false),
        ),
        row(
            "java-tls12-mtls",
            "Java JSSE, TLS 1.2, certificate required and presented",
            20043,
            high("mutual_tls", "completed"),
            |ctx, port| java(ctx, port, "1.2", Auth::Require, true),
        ),
        row(
            "java-tls12-no-cert",
            "Java JSSE, TLS 1.2, the server does not ask",
            20044,
            high("tls", "completed"),
            |ctx, port| java(ctx, port, "1.2", Auth::None, false),
        ),
        row(
            "java-tls12-empty-cert",
            "Java JSSE, TLS 1.2, the server asks (want), the client has none",
            20045,
            high("tls", "completed"),
            |ctx, port| java(ctx, port, "1.2", Auth::Request, false),
        ),
        // Go crypto/tls: one record per message; an empty Certificate is its own
        // record.
        row(
            "go-tls13-mtls",
            "Go crypto/tls client and server, TLS 1.3, certificate required and presented",
            20046,
            high("mutual_tls", "completed"),
            |ctx, port| go(ctx, port, "1.3", Auth::Require, true),
        ),
        row(
            "go-tls13-no-cert",
            "Go crypto/tls, TLS 1.3, the server does not ask",
            20047,
            high("tls", "completed"),
            |ctx, port| go(ctx, port, "1.3", Auth::None, false),
        ),
        row(
            "go-tls13-empty-cert",
            "Go crypto/tls, TLS 1.3, the server asks (VerifyClientCertIfGiven), the client has none",
            20048,
            high("tls", "completed"),
            |ctx, port| go(ctx, port, "1.3", Auth::Request, false),
        ),
        row(
            "go-tls12-mtls",
            "Go crypto/tls, TLS 1.2, certificate required and presented",
            20049,
            high("mutual_tls", "completed"),
            |ctx, port| go(ctx, port, "1.2", Auth::Require, true),
        ),
        row(
            "go-tls12-no-cert",
            "Go crypto/tls, TLS 1.2, the server does not ask",
            20050,
            high("tls", "completed"),
            |ctx, port| go(ctx, port, "1.2", Auth::None, false),
        ),
        row(
            "go-tls12-empty-cert",
            "Go crypto/tls, TLS 1.2, the server asks, the client has none",
            20051,
            high("tls", "completed"),
            |ctx, port| go(ctx, port, "1.2", Auth::Request, false),
        ),
        // BoringSSL (grpcio): Certificate, CertificateVerify and Finished in one
        // record.
        row(
            "grpc-tls13-mtls",
            "gRPC (grpcio, BoringSSL) client and server with require_client_auth, TLS 1.3, certificate presented",
            20052,
            high("mutual_tls", "completed"),
            |ctx, port| {
                let _s = grpcio_server(ctx, port, true);
                grpcio_client(ctx, port, true);
            },
        ),
        row(
            "grpc-tls13-no-cert",
            "gRPC (grpcio, BoringSSL) without require_client_auth, TLS 1.3, client without a certificate",
            20053,
            high("tls", "completed"),
            |ctx, port| {
                let _s = grpcio_server(ctx, port, false);
                grpcio_client(ctx, port, false);
            },
        ),
        row(
            "grpc-tls13-empty-cert",
            "grpcio (BoringSSL) client without a certificate, TLS 1.3, to a gRPC server (Go) that asks and accepts none",
            20054,
            high("tls", "completed"),
            |ctx, port| {
                let _s = go_server(ctx, port, "1.3", Auth::Request, true);
                grpcio_client(ctx, port, false);
            },
        ),
        row(
            "grpc-tls13-refused",
            "gRPC (grpcio, BoringSSL) server with require_client_auth, TLS 1.3, client without a certificate: refused, no alert",
            20055,
            high("tls", "server_refused"),
            |ctx, port| {
                let _s = grpcio_server(ctx, port, true);
                grpcio_client(ctx, port, false);
            },
        ),
        row(
            "grpc-tls12-mtls",
            "grpcio (BoringSSL) client with a certificate, TLS 1.2, to a gRPC server (Go) that requires one",
            20056,
            high("mutual_tls", "completed"),
            |ctx, port| {
                let _s = go_server(ctx, port, "1.2", Auth::Require, true);
                grpcio_client(ctx, port, true);
            },
        ),
        row(
            "grpc-tls12-no-cert",
            "grpcio (BoringSSL) client, TLS 1.2, to a gRPC server (Go) that does not ask",
            20057,
            high("tls", "completed"),
            |ctx, port| {
                let _s = go_server(ctx, port, "1.2", Auth::None, true);
                grpcio_client(ctx, port, false);
            },
        ),
        row(
            "grpc-tls12-empty-cert",
            "grpcio (BoringSSL) client without a certificate, TLS 1.2, to a gRPC server (Go) that asks and accepts none",
            20058,
            high("tls", "completed"),
            |ctx, port| {
                let _s = go_server(ctx, port, "1.2", Auth::Request, true);
                grpcio_client(ctx, port, false);
            },
        ),
        // NSS: coalesced like BoringSSL, no compatibility ChangeCipherSpec.
        row(
            "nss-tls13-mtls",
            "NSS tstclnt and selfserv, TLS 1.3, certificate required (-r -r) and presented",
            20060,
            high("mutual_tls", "completed"),
            |ctx, port| nss(ctx, port, "1.3", Auth::Require, true),
        ),
        row(
            "nss-tls13-no-cert",
            "NSS tstclnt and selfserv, TLS 1.3, the server does not ask",
            20061,
            high("tls", "completed"),
            |ctx, port| nss(ctx, port, "1.3", Auth::None, false),
        ),
        row(
            "nss-tls13-empty-cert",
            "NSS tstclnt and selfserv, TLS 1.3, the server asks (-r), the client has none",
            20062,
            high("tls", "completed"),
            |ctx, port| nss(ctx, port, "1.3", Auth::Request, false),
        ),
        row(
            "nss-tls12-mtls",
            "NSS tstclnt and selfserv, TLS 1.2, certificate required and presented",
            20063,
            high("mutual_tls", "completed"),
            |ctx, port| nss(ctx, port, "1.2", Auth::Require, true),
        ),
        row(
            "nss-tls12-no-cert",
            "NSS tstclnt and selfserv, TLS 1.2, the server does not ask",
            20064,
            high("tls", "completed"),
            |ctx, port| nss(ctx, port, "1.2", Auth::None, false),
        ),
        row(
            "nss-tls12-empty-cert",
            "NSS tstclnt and selfserv, TLS 1.2, the server asks (-r), the client has none",
            20065,
            high("tls", "completed"),
            |ctx, port| nss(ctx, port, "1.2", Auth::Request, false),
        ),
        // Post-handshake authentication: the handshake asks for nothing; what the
        // client sends later decides.
        row(
            "pha-tls13-mtls",
            "Python ssl, TLS 1.3 post-handshake authentication: the server asks after the first request, the client sends its certificate",
            20066,
            class("mutual_tls", "completed"),
            |ctx, port| pha(ctx, port, "require", true),
        ),
        row(
            "pha-tls13-empty-cert",
            "Python ssl, TLS 1.3 post-handshake authentication: the server asks after the first request (optional), the client has none",
            20067,
            class("tls", "completed"),
            |ctx, port| pha(ctx, port, "optional", false),
        ),
        row(
            "pha-tls13-not-asked",
            "Python ssl, TLS 1.3: the client offers post-handshake authentication with a certificate loaded, the server never asks",
            20068,
            class("tls", "completed"),
            |ctx, port| pha(ctx, port, "never", true),
        ),
    ]
}
