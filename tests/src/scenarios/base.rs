//! The first rows of the matrix: OpenSSL (curl, s_client, s_server), rustls, nginx
//! and the cleartext protocols, on TLS 1.2 and 1.3, with and without client
//! certificates.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{Ctx, Expect, Scenario, curl_tls, e, p, strs, with_cert};
use crate::{Child, Spawn, peers::wait_listening};

/// An RSA hierarchy: root -> intermediate -> leaves; the client presents a chain
/// of three certificates.
pub struct RsaChain {
    pub root: PathBuf,
    pub server_chain: PathBuf,
    pub server_key: PathBuf,
    pub client_chain: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    Spawn::new("openssl")
        .args(args)
        .current_dir(dir)
        .run_ok(Duration::from_secs(60));
}

impl RsaChain {
    pub fn generate(dir: &Path) -> Self {
        let key = |name: &str| openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
        key("rsa-root");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "rsa-root.key",
                "-days",
                "30",
                "-subj",
                "/CN=mtls-auditor RSA root",
                "-out",
                "rsa-root.pem",
            ],
        );
        std::fs::write(
            dir.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .expect("write ext");
        key("rsa-int");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "rsa-int.key",
                "-subj",
                "/CN=mtls-auditor RSA intermediate",
                "-out",
                "rsa-int.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "rsa-int.csr",
                "-CA",
                "rsa-root.pem",
                "-CAkey",
                "rsa-root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "ca.ext",
                "-out",
                "rsa-int.pem",
            ],
        );
        for (name, ext) in [
            (
                "rsa-server",
                "subjectAltName=DNS:server.test,IP:10.213.40.1\n",
            ),
            (
                "rsa-client",
                "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/rsa-client\n",
            ),
        ] {
            key(name);
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/CN={name}.test"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "rsa-int.pem",
                    "-CAkey",
                    "rsa-int.key",
                    "-CAcreateserial",
                    "-days",
                    "30",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        let cat = |out: &str, parts: &[&str]| {
            let mut s = String::new();
            for p in parts {
                s.push_str(&std::fs::read_to_string(dir.join(p)).expect("read pem"));
            }
            std::fs::write(dir.join(out), s).expect("write chain");
        };
        cat("rsa-server-chain.pem", &["rsa-server.pem", "rsa-int.pem"]);
        cat(
            "rsa-client-chain.pem",
            &["rsa-client.pem", "rsa-int.pem", "rsa-root.pem"],
        );
        Self {
            root: dir.join("rsa-root.pem"),
            server_chain: dir.join("rsa-server-chain.pem"),
            server_key: dir.join("rsa-server.key"),
            client_chain: dir.join("rsa-client-chain.pem"),
            client_key: dir.join("rsa-client.key"),
        }
    }
}

/// The rows.
pub fn rows() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "tls13-mtls-ecdsa",
            what: "TLS 1.3, ECDSA P-256, client certificate required and presented (curl --cert)",
            port: 20001,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1"]);
                curl_tls(ctx, port, &strs(&with_cert(ctx, &["--tlsv1.3"])));
            },
        },
        Scenario {
            name: "tls13-no-client-cert",
            what: "TLS 1.3, server does not ask for a certificate",
            port: 20002,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3"]);
                curl_tls(ctx, port, &["--tlsv1.3"]);
            },
        },
        Scenario {
            name: "tls13-empty-cert",
            what: "TLS 1.3, server asks (optional), client has none: empty Certificate",
            port: 20003,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-verify", "1"]);
                curl_tls(ctx, port, &["--tlsv1.3"]);
            },
        },
        Scenario {
            name: "tls13-refused-without-cert",
            what: "TLS 1.3, STRICT-style server requires a certificate, client has none: refused",
            port: 20004,
            tls: true,
            expect: vec![e("tls", "server_refused", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1"]);
                curl_tls(ctx, port, &["--tlsv1.3"]);
            },
        },
        Scenario {
            name: "tls12-mtls-ecdsa",
            what: "TLS 1.2, client certificate required and presented",
            port: 20005,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_2", "-Verify", "1"]);
                curl_tls(ctx, port, &strs(&with_cert(ctx, &["--tls-max", "1.2"])));
            },
        },
        Scenario {
            name: "tls12-no-client-cert",
            what: "TLS 1.2, server does not ask for a certificate",
            port: 20006,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_2"]);
                curl_tls(ctx, port, &["--tls-max", "1.2"]);
            },
        },
        Scenario {
            name: "tls12-empty-cert",
            what: "TLS 1.2, server asks (optional), client answers with an empty Certificate",
            port: 20007,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_2", "-verify", "1"]);
                curl_tls(ctx, port, &["--tls-max", "1.2"]);
            },
        },
        Scenario {
            name: "tls12-refused-without-cert",
            what: "TLS 1.2, server requires a certificate, client has none: handshake failure alert",
            port: 20008,
            tls: true,
            expect: vec![e("tls", "server_refused", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_2", "-Verify", "1"]);
                curl_tls(ctx, port, &["--tls-max", "1.2"]);
            },
        },
        Scenario {
            name: "tls13-sha384-mtls",
            what: "TLS 1.3 with TLS_AES_256_GCM_SHA384 (48-byte Finished), client certificate",
            port: 20009,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &[
                        "-tls1_3",
                        "-Verify",
                        "1",
                        "-ciphersuites",
                        "TLS_AES_256_GCM_SHA384",
                    ],
                );
                curl_tls(
                    ctx,
                    port,
                    &strs(&with_cert(
                        ctx,
                        &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_256_GCM_SHA384"],
                    )),
                );
            },
        },
        Scenario {
            name: "tls13-sha256-mtls",
            what: "TLS 1.3 with TLS_AES_128_GCM_SHA256 (36-byte Finished), client certificate",
            port: 20029,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &[
                        "-tls1_3",
                        "-Verify",
                        "1",
                        "-ciphersuites",
                        "TLS_AES_128_GCM_SHA256",
                    ],
                );
                curl_tls(
                    ctx,
                    port,
                    &strs(&with_cert(
                        ctx,
                        &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
                    )),
                );
            },
        },
        Scenario {
            name: "tls13-sha256-no-cert",
            what: "TLS 1.3 with TLS_AES_128_GCM_SHA256, no client certificate",
            port: 20030,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
                );
                curl_tls(
                    ctx,
                    port,
                    &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
                );
            },
        },
        Scenario {
            name: "tls13-chacha20-empty-cert",
            what: "TLS 1.3 with TLS_CHACHA20_POLY1305_SHA256, server asks, client has none",
            port: 20031,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &[
                        "-tls1_3",
                        "-verify",
                        "1",
                        "-ciphersuites",
                        "TLS_CHACHA20_POLY1305_SHA256",
                    ],
                );
                curl_tls(
                    ctx,
                    port,
                    &[
                        "--tlsv1.3",
                        "--tls13-ciphers",
                        "TLS_CHACHA20_POLY1305_SHA256",
                    ],
                );
            },
        },
        Scenario {
            name: "tls13-sha384-no-cert",
            what: "TLS 1.3 with TLS_AES_256_GCM_SHA384, no client certificate",
            port: 20010,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
                );
                curl_tls(
                    ctx,
                    port,
                    &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_256_GCM_SHA384"],
                );
            },
        },
        Scenario {
            name: "tls12-sha384-mtls",
            what: "TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384, client certificate",
            port: 20011,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(
                    port,
                    &[
                        "-tls1_2",
                        "-Verify",
                        "1",
                        "-cipher",
                        "ECDHE-ECDSA-AES256-GCM-SHA384",
                    ],
                );
                curl_tls(
                    ctx,
                    port,
                    &strs(&with_cert(
                        ctx,
                        &[
                            "--tls-max",
                            "1.2",
                            "--ciphers",
                            "ECDHE-ECDSA-AES256-GCM-SHA384",
                        ],
                    )),
                );
            },
        },
        Scenario {
            name: "tls13-rsa-chain3-mtls",
            what: "TLS 1.3, RSA-2048 keys, the client sends a chain of three certificates",
            port: 20012,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.server(
                    "openssl",
                    &[
                        "s_server",
                        "-quiet",
                        "-www",
                        "-accept",
                        &port.to_string(),
                        "-tls1_3",
                        "-Verify",
                        "3",
                        "-cert",
                        p(&ctx.rsa.server_chain),
                        "-key",
                        p(&ctx.rsa.server_key),
                        "-CAfile",
                        p(&ctx.rsa.root),
                    ],
                    port,
                );
                let _ = ctx.curl(
                    &ctx.https(port),
                    &[
                        "--tlsv1.3",
                        "--cacert",
                        p(&ctx.rsa.root),
                        "--cert",
                        p(&ctx.rsa.client_chain),
                        "--key",
                        p(&ctx.rsa.client_key),
                        "-k",
                    ],
                );
            },
        },
        Scenario {
            name: "tls12-rsa-chain3-mtls",
            what: "TLS 1.2, RSA-2048 keys, the client sends a chain of three certificates",
            port: 20013,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.server(
                    "openssl",
                    &[
                        "s_server",
                        "-quiet",
                        "-www",
                        "-accept",
                        &port.to_string(),
                        "-tls1_2",
                        "-Verify",
                        "3",
                        "-cert",
                        p(&ctx.rsa.server_chain),
                        "-key",
                        p(&ctx.rsa.server_key),
                        "-CAfile",
                        p(&ctx.rsa.root),
                    ],
                    port,
                );
                let _ = ctx.curl(
                    &ctx.https(port),
                    &[
                        "--tls-max",
                        "1.2",
                        "--cacert",
                        p(&ctx.rsa.root),
                        "--cert",
                        p(&ctx.rsa.client_chain),
                        "--key",
                        p(&ctx.rsa.client_key),
                        "-k",
                    ],
                );
            },
        },
        Scenario {
            name: "tls13-hello-retry-mtls",
            what: "TLS 1.3 HelloRetryRequest (client key share X25519, server only P-384), client certificate",
            port: 20014,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1", "-groups", "P-384"]);
                curl_tls(
                    ctx,
                    port,
                    &strs(&with_cert(ctx, &["--tlsv1.3", "--curves", "X25519:P-384"])),
                );
            },
        },
        Scenario {
            name: "tls13-resumption",
            what: "TLS 1.3: a full mutual-TLS handshake, then a resumed session (PSK) that inherits its class",
            port: 20015,
            tls: true,
            expect: vec![
                Expect {
                    resumed: Some(false),
                    ..e("mutual_tls", "completed", "tls")
                },
                Expect {
                    resumed: Some(true),
                    ..e("mutual_tls", "completed", "tls")
                },
            ],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1"]);
                let sess = ctx.dir.path().join("session.pem");
                let connect = format!("{}:{port}", ctx.server_ip());
                for flag in ["-sess_out", "-sess_in"] {
                    let script = format!(
                        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -ign_eof -tls1_3 -connect {connect} \
                         -CAfile {} -cert {} -key {} {flag} {}",
                        p(ctx.pki.ca()),
                        p(ctx.pki.client_cert()),
                        p(ctx.pki.client_key()),
                        p(&sess)
                    );
                    let _ = ctx.client("sh", &["-c", &script]);
                }
            },
        },
        Scenario {
            name: "istio-alpn-mtls",
            what: "Istio sidecar ALPN (istio-peer-exchange, istio) with a client certificate",
            port: 20016,
            tls: true,
            expect: vec![Expect {
                mesh: Some("istio_sidecar"),
                ..e("mutual_tls", "completed", "tls")
            }],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1"]);
                let script = format!(
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -ign_eof -connect {}:{port} -servername \
                     outbound_.{port}_._.example-service-a.default.svc.cluster.local -alpn istio-peer-exchange,istio \
                     -CAfile {} -cert {} -key {}",
                    ctx.server_ip(),
                    p(ctx.pki.ca()),
                    p(ctx.pki.client_cert()),
                    p(ctx.pki.client_key())
                );
                let _ = ctx.client("sh", &["-c", &script]);
            },
        },
        Scenario {
            name: "h2-over-tls-mtls",
            what: "HTTP/2 over TLS (ALPN h2) to nginx with ssl_verify_client on, client certificate",
            port: 20017,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _n = nginx(ctx, port, true);
                curl_tls(ctx, port, &strs(&with_cert(ctx, &["--http2"])));
            },
        },
        Scenario {
            name: "rustls-mtls",
            what: "rustls client (TLS 1.3) with a client certificate",
            port: 20018,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-Verify", "1"]);
                rustls(ctx, port, true, false);
            },
        },
        Scenario {
            name: "rustls-no-cert",
            what: "rustls client (TLS 1.3), server does not ask",
            port: 20019,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3"]);
                rustls(ctx, port, false, false);
            },
        },
        Scenario {
            name: "rustls-empty-cert",
            what: "rustls client (TLS 1.3), server asks, client has none",
            port: 20020,
            tls: true,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_3", "-verify", "1"]);
                rustls(ctx, port, false, false);
            },
        },
        Scenario {
            name: "rustls-tls12-mtls",
            what: "rustls client (TLS 1.2) with a client certificate",
            port: 20021,
            tls: true,
            expect: vec![e("mutual_tls", "completed", "tls")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-tls1_2", "-Verify", "1"]);
                rustls(ctx, port, true, true);
            },
        },
        Scenario {
            name: "http1-plaintext",
            what: "HTTP/1.1 in plaintext (python http.server, curl)",
            port: 20022,
            tls: false,
            expect: vec![e("none", "completed", "http1")],
            run: |ctx, port| {
                let _s = ctx.server(
                    "/usr/bin/python3",
                    &[
                        "-m",
                        "http.server",
                        "--bind",
                        &ctx.server_ip(),
                        &port.to_string(),
                    ],
                    port,
                );
                let _ = ctx.curl(&format!("http://{}:{port}/", ctx.server_ip()), &[]);
            },
        },
        Scenario {
            name: "h2c-plaintext",
            what: "HTTP/2 prior knowledge (h2c) in plaintext to nginx",
            port: 20023,
            tls: false,
            expect: vec![e("none", "completed", "h2c")],
            run: |ctx, port| {
                let _n = nginx(ctx, port, false);
                let _ = ctx.curl(
                    &format!("http://{}:{port}/", ctx.server_ip()),
                    &["--http2-prior-knowledge"],
                );
            },
        },
        Scenario {
            name: "postgres-plaintext",
            what: "PostgreSQL 15, psql sslmode=disable: StartupMessage in plaintext",
            port: 20024,
            tls: false,
            expect: vec![e("none", "completed", "postgres")],
            run: |ctx, port| {
                let _pg = postgres(ctx, port);
                psql(ctx, port, "disable");
            },
        },
        Scenario {
            name: "postgres-sslrequest",
            what: "PostgreSQL 15, psql sslmode=require: SSLRequest, 'S', then TLS",
            port: 20025,
            tls: false,
            expect: vec![e("tls", "completed", "tls")],
            run: |ctx, port| {
                let _pg = postgres(ctx, port);
                psql(ctx, port, "require");
            },
        },
        Scenario {
            name: "redis-plaintext",
            what: "Redis RESP (redis-server, redis-cli PING)",
            port: 20026,
            tls: false,
            expect: vec![e("none", "completed", "redis")],
            run: |ctx, port| {
                let _r = ctx.server(
                    "redis-server",
                    &[
                        "--port",
                        &port.to_string(),
                        "--bind",
                        &ctx.server_ip(),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                    port,
                );
                let _ = ctx.client(
                    "redis-cli",
                    &["-h", &ctx.server_ip(), "-p", &port.to_string(), "PING"],
                );
            },
        },
        Scenario {
            name: "ssh",
            what: "SSH (OpenSSH client and sshd): encrypted, not TLS",
            port: 20027,
            tls: false,
            expect: vec![Expect {
                class: "unknown",
                outcome: None,
                protocol: "ssh",
                mesh: None,
                resumed: None,
                confidence: None,
            }],
            run: |ctx, port| {
                let _s = sshd(ctx, port);
                let _ = ctx.client(
                    "ssh",
                    &[
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "StrictHostKeyChecking=no",
                        "-o",
                        "UserKnownHostsFile=/dev/null",
                        "-o",
                        "ConnectTimeout=5",
                        "-p",
                        &port.to_string(),
                        &format!("nobody@{}", ctx.server_ip()),
                        "true",
                    ],
                );
            },
        },
        Scenario {
            name: "strict-refuses-plaintext",
            what: "plaintext HTTP to a TLS server that requires client certificates: refused",
            port: 20028,
            tls: false,
            expect: vec![e("none", "server_refused", "http1")],
            run: |ctx, port| {
                let _s = ctx.s_server(port, &["-Verify", "1"]);
                let _ = ctx.curl(&format!("http://{}:{port}/", ctx.server_ip()), &[]);
            },
        },
    ]
}

fn rustls(ctx: &Ctx, port: u16, cert: bool, tls12: bool) {
    let addr = format!("{}:{port}", ctx.server_ip());
    let mut args = vec![addr.as_str(), "server.test", p(ctx.pki.ca())];
    if cert {
        args.extend_from_slice(&[
            "--cert",
            p(ctx.pki.client_cert()),
            "--key",
            p(ctx.pki.client_key()),
        ]);
    }
    if tls12 {
        args.push("--tls12");
    }
    let _ = ctx.client(p(&ctx.rustls_client), &args);
}

fn nginx(ctx: &Ctx, port: u16, tls: bool) -> Child {
    let d = ctx.dir.path().join(format!("nginx-{port}"));
    std::fs::create_dir_all(d.join("logs")).expect("nginx dir");
    std::fs::write(d.join("index.html"), "hello from nginx\n").expect("index");
    let listen = if tls {
        format!(
            "listen {ip}:{port} ssl http2;\n ssl_certificate {cert};\n ssl_certificate_key {key};\n \
             ssl_client_certificate {ca};\n ssl_verify_client on;",
            ip = ctx.server_ip(),
            cert = p(ctx.pki.server_cert()),
            key = p(ctx.pki.server_key()),
            ca = p(ctx.pki.ca())
        )
    } else {
        format!("listen {}:{port} http2;", ctx.server_ip())
    };
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{}}\nhttp {{\n access_log off;\n \
         client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n \
         scgi_temp_path {d}/scgi;\n server {{\n {listen}\n root {d};\n }}\n}}\n",
        d = d.display()
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    ctx.server(
        "nginx",
        &["-p", p(&d), "-c", p(&conf_path), "-g", "daemon off;"],
        port,
    )
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn chown_postgres(path: &Path) {
    crate::sh("chown", &["-R", "postgres:postgres", p(path)]);
}

fn postgres(ctx: &Ctx, port: u16) -> Child {
    let data = ctx.dir.path().join(format!("pg-{port}"));
    std::fs::create_dir_all(&data).expect("pg dir");
    // The test directory is private to root; postgres needs to reach its files.
    crate::sh("chmod", &["755", p(ctx.dir.path())]);
    chown_postgres(&data);
    Spawn::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(format!("{PG_BIN}/initdb"))
        .args(["-D", p(&data), "-A", "trust", "-U", "postgres", "--no-sync"])
        .run_ok(Duration::from_secs(120));
    let key = data.join("server.key");
    std::fs::copy(ctx.pki.server_key(), &key).expect("copy key");
    std::fs::copy(ctx.pki.server_cert(), data.join("server.crt")).expect("copy cert");
    crate::sh("chmod", &["600", p(&key)]);
    chown_postgres(&data);
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 0.0.0.0/0 trust\nhostnossl all all 0.0.0.0/0 trust\n",
    )
    .expect("pg_hba");
    let child = Spawn::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(format!("{PG_BIN}/postgres"))
        .args(["-D", p(&data), "-p", &port.to_string(), "-k", p(&data)])
        .args([
            "-c",
            &format!("listen_addresses={}", ctx.server_ip()),
            "-c",
            "ssl=on",
        ])
        .netns(&ctx.pair.a)
        .cgroup(&ctx.cg_server)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    wait_listening(Some(&ctx.pair.a), port);
    child
}

fn psql(ctx: &Ctx, port: u16, sslmode: &str) {
    let conninfo = format!(
        "host={} port={port} user=postgres dbname=postgres sslmode={sslmode}",
        ctx.server_ip()
    );
    let _ = ctx.client("psql", &[&conninfo, "-c", "select 1"]);
}

fn sshd(ctx: &Ctx, port: u16) -> Child {
    let key = ctx.dir.path().join(format!("ssh_host_{port}"));
    if !key.exists() {
        crate::sh(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", p(&key)],
        );
    }
    // sshd's privilege-separation directory; created if this machine has none.
    let _ = std::fs::create_dir_all("/run/sshd");
    ctx.server(
        "/usr/sbin/sshd",
        &[
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-p",
            &port.to_string(),
            "-h",
            p(&key),
            "-o",
            &format!("ListenAddress={}", ctx.server_ip()),
            "-o",
            "PidFile=none",
        ],
        port,
    )
}
