//! The classifier's scenario matrix: real handshakes and real cleartext protocols
//! between two network namespaces, each on its own server port, while the agent
//! runs and `dumpcap` records the same traffic.
//!
//! Every scenario names the class it must produce. The integration test runs the
//! matrix, compares the live agent's records and the offline classification of
//! the capture with that expectation and with the oracles (tshark, Suricata), and
//! can write the result as `docs/accuracy.md`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    Cgroup, Child, NetnsPair, Spawn, TempDir,
    peers::{Pki, wait_listening},
};

mod base;
mod stacks;

pub use base::RsaChain;
pub use stacks::Peers;

/// What a scenario must produce.
#[derive(Debug, Clone)]
pub struct Expect {
    pub class: &'static str,
    pub outcome: Option<&'static str>,
    pub protocol: &'static str,
    pub mesh: Option<&'static str>,
    /// `tls.resumed` must be this, when given.
    pub resumed: Option<bool>,
    /// `confidence` must be this, when given (`high` where the wire leaves no
    /// doubt).
    pub confidence: Option<&'static str>,
}

/// One row of the matrix.
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub port: u16,
    pub tls: bool,
    /// Connections the scenario makes to `port` (in order).
    pub expect: Vec<Expect>,
    pub run: fn(&Ctx, u16),
}

/// Shared set-up: the namespaces, certificates and binaries.
pub struct Ctx {
    pub pair: NetnsPair,
    pub cg_server: Cgroup,
    pub cg_client: Cgroup,
    pub dir: TempDir,
    pub pki: Pki,
    pub rsa: RsaChain,
    pub rustls_client: PathBuf,
    /// The other TLS stacks' peers (Java, Go, gRPC, NSS, Python), built or
    /// prepared once.
    pub peers: Peers,
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

impl Ctx {
    pub fn new(rustls_client: PathBuf) -> Self {
        let pair = NetnsPair::new("matrix", 40);
        let dir = TempDir::new();
        let pki = Pki::generate(dir.path());
        let rsa = RsaChain::generate(dir.path());
        let peers = Peers::prepare(dir.path(), &pki);
        Self {
            pair,
            cg_server: Cgroup::new("matrix-server"),
            cg_client: Cgroup::new("matrix-client"),
            dir,
            pki,
            rsa,
            rustls_client,
            peers,
        }
    }

    pub fn server_ip(&self) -> String {
        self.pair.a_v4().to_string()
    }

    /// A server in namespace a, waited for until it listens on `port`.
    pub fn server(&self, program: &str, args: &[&str], port: u16) -> Child {
        let child = Spawn::new(program)
            .args(args)
            .netns(&self.pair.a)
            .cgroup(&self.cg_server)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        wait_listening(Some(&self.pair.a), port);
        child
    }

    /// `openssl s_server -www` with the EC server certificate plus `extra`.
    pub fn s_server(&self, port: u16, extra: &[&str]) -> Child {
        let mut args = vec![
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            "",
            "-cert",
            p(self.pki.server_cert()),
            "-key",
            p(self.pki.server_key()),
            "-CAfile",
            p(self.pki.ca()),
        ];
        let port_s = port.to_string();
        args[4] = &port_s;
        args.extend_from_slice(extra);
        self.server("openssl", &args, port)
    }

    /// A client in namespace b; runs to completion (its exit status is not judged:
    /// refused connections fail on purpose).
    pub fn client(&self, program: &str, args: &[&str]) -> std::process::Output {
        Spawn::new(program)
            .args(args)
            .netns(&self.pair.b)
            .cgroup(&self.cg_client)
            .current_dir(self.dir.path())
            .run(Duration::from_secs(30))
    }

    pub fn curl(&self, url: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "--cacert",
            p(self.pki.ca()),
        ];
        args.extend_from_slice(extra);
        args.push(url);
        self.client("curl", &args)
    }

    pub fn https(&self, port: u16) -> String {
        format!("https://{}:{port}/", self.server_ip())
    }

    pub fn client_cert_args(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            p(self.pki.client_cert()).into(),
            "--key".into(),
            p(self.pki.client_key()).into(),
        ]
    }
}

fn curl_tls(ctx: &Ctx, port: u16, extra: &[&str]) {
    let out = ctx.curl(&ctx.https(port), extra);
    let _ = out;
}

fn with_cert<'a>(ctx: &'a Ctx, extra: &[&'a str]) -> Vec<String> {
    let mut v = ctx.client_cert_args();
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn e(class: &'static str, outcome: &'static str, protocol: &'static str) -> Expect {
    Expect {
        class,
        outcome: Some(outcome),
        protocol,
        mesh: None,
        resumed: None,
        confidence: None,
    }
}

/// The matrix: OpenSSL, rustls and cleartext rows, then the other TLS stacks.
pub fn matrix() -> Vec<Scenario> {
    let mut m = base::rows();
    m.extend(stacks::rows());
    m
}

/// A rendered row of docs/accuracy.md.
pub struct Row {
    pub scenario: String,
    pub what: String,
    pub expected: String,
    pub agent: String,
    pub pcap: String,
    /// The TLS records the client sent, as tshark dissects them.
    pub client_records: String,
    pub evidence: String,
    pub ok: bool,
}

/// The lines that delimit the generated section of docs/accuracy.md.
pub const BEGIN: &str = "<!-- live scenario matrix: generated by `cargo xtask accuracy`, edit tests/src/scenarios/ instead -->";
pub const END: &str = "<!-- end of the live scenario matrix -->";

/// Renders the live matrix's section of docs/accuracy.md, markers included.
pub fn render(rows: &[Row], oracle_notes: &[String]) -> String {
    let mut s = String::new();
    let ok = rows.iter().filter(|r| r.ok).count();
    let _ = writeln!(s, "{BEGIN}\n");
    let _ = writeln!(s, "## Live scenario matrix\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask accuracy` (the `classifier_matrix` integration test): every scenario is real \
         traffic between two network namespaces, classified by the live agent and, from a `dumpcap` capture of the \
         same traffic, by `mtls-auditor classify --pcap`. {ok} of {} connections are right in both. Each cell shows \
         class (outcome, confidence); a confidence in the expected column is required, otherwise it is not judged. \
         The client's records are tshark's dissection of the same capture, with their lengths in \
         bytes: `CH` ClientHello, `CCS` ChangeCipherSpec, `hs` a cleartext handshake record, `app` TLS 1.2 \
         application data, `alert`, and a bare length for a TLS 1.3 encrypted record (the client's Certificate, \
         CertificateVerify and Finished travel in these, then its application data).\n",
        rows.len()
    );
    let _ = writeln!(
        s,
        "| scenario | traffic | expected | live agent | pcap | client records (tshark) | evidence (live agent) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.what,
            r.expected,
            r.agent,
            r.pcap,
            r.client_records,
            r.evidence.replace('|', "\\|")
        );
    }
    if !oracle_notes.is_empty() {
        let _ = writeln!(s, "\n### Independent oracles\n");
        for n in oracle_notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(s, "\n{END}");
    s
}

/// `existing` (docs/accuracy.md as it is) with its live matrix section replaced by
/// `section`. Everything outside the markers is kept. A file from before the
/// markers existed was all generated up to its first heading other than the
/// title and "Independent oracles": that part is replaced, the rest kept.
pub fn splice(existing: &str, section: &str) -> String {
    const TITLE: &str = "# Classifier accuracy";
    if let (Some(b), Some(e)) = (existing.find(BEGIN), existing.find(END))
        && b < e
    {
        let after = &existing[e + END.len()..];
        return format!("{}{}{}", &existing[..b], section.trim_end(), after);
    }
    let mut kept = String::new();
    let mut keeping = false;
    for line in existing.lines() {
        if line.starts_with('#') && line != TITLE && line != "## Independent oracles" {
            keeping = true;
        }
        if keeping {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let mut out = format!("{TITLE}\n\n{section}");
    if !kept.is_empty() {
        out.push('\n');
        out.push_str(&kept);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_generated_section() {
        let section = format!("{BEGIN}\nnew table\n{END}\n");
        // A file from before the markers: the table and its oracles are replaced,
        // a section someone added after them is kept.
        let old = "# Classifier accuracy\n\nGenerated ...\n| a |\n\n## Independent oracles\n\n- tshark\n\n## Corpus\n\nscore 99 %\n";
        let once = splice(old, &section);
        assert!(once.starts_with("# Classifier accuracy\n\n<!--"), "{once}");
        assert!(
            once.contains("new table") && !once.contains("| a |") && !once.contains("- tshark")
        );
        assert!(once.ends_with("## Corpus\n\nscore 99 %\n"), "{once}");
        // With markers: text before and after them stays as it is.
        let again = splice(&once, &format!("{BEGIN}\nnewer table\n{END}\n"));
        assert!(again.contains("newer table") && !again.contains("new table\n"));
        assert!(again.ends_with("## Corpus\n\nscore 99 %\n"), "{again}");
        assert_eq!(again.matches(BEGIN).count(), 1);
    }
}
