//! A small rustls TLS client: the second TLS implementation of the classifier's
//! scenario matrix. Connects, optionally presents a client certificate, sends an
//! HTTP/1.0 request and prints how many response bytes came back.
//!
//! usage: rustls-client HOST:PORT SNI CA.pem [--cert CERT.pem --key KEY.pem] [--tls12]

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

fn main() {
    if let Err(e) = run() {
        eprintln!("rustls-client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: rustls-client HOST:PORT SNI CA.pem [--cert C --key K] [--tls12]".into(),
        );
    }
    let (addr, sni, ca) = (&args[1], args[2].clone(), &args[3]);
    let mut cert = None;
    let mut key = None;
    let mut tls12 = false;
    let mut i = 4;
    while i < args.len() {
        match args[i].as_str() {
            "--cert" => {
                cert = args.get(i + 1).cloned();
                i += 1;
            }
            "--key" => {
                key = args.get(i + 1).cloned();
                i += 1;
            }
            "--tls12" => tls12 = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 1;
    }
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from(sni)?)?;
    let sock = TcpStream::connect(addr)?;
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) => {}
        // Servers often close without close_notify after an HTTP/1.0 response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    println!("{} bytes", buf.len());
    Ok(())
}
