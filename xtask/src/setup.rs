//! `cargo xtask setup`: installs what is missing and nothing else.
//!
//! - the eBPF nightly named in `agent-ebpf/rust-toolchain.toml`, with `rust-src`
//!   (the userspace toolchain is installed by `./x` before cargo runs);
//! - the Debian packages the build and the tests use;
//! - bpf-linker built against LLVM 22 (what the pinned nightly uses);
//! - cargo-fuzz; the dashboards' type checker (npm); the deploy checks' Python tools
//!   (kubernetes-validate, helm-python-sdk) in a virtual environment, target/pytools;
//!   the scenario matrix's gRPC peers (grpcio, which links BoringSSL) in another,
//!   target/pytools-grpc.
//!
//! Idempotent and fast when everything is present. On a machine it cannot set up
//! (not Debian/Ubuntu, not root) it prints the exact steps instead.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, project_root, toolchain_channel};

/// Debian packages: what needs them.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links LLVM's Polly"),
    ("build-essential", "C toolchain for -sys crates"),
    ("pkg-config", "locating C libraries"),
    ("iproute2", "tests: network namespaces, veth, ss"),
    (
        "iptables",
        "tests and the seed scenario: the nat rules istio-iptables writes in a pod",
    ),
    ("openssl", "tests: TLS peers and certificates"),
    ("curl", "tests: HTTP and TLS clients"),
    ("python3", "tests: HTTP servers and scripted peers"),
    ("wrk", "bench: loopback connection rate"),
    ("iperf3", "bench: bulk throughput"),
    (
        "nginx-light",
        "bench and tests: HTTP/1.1, HTTP/2 and h2c server",
    ),
    (
        "tshark",
        "tests: capture (dumpcap) and the SNI/ALPN/version oracle",
    ),
    (
        "postgresql",
        "tests: PostgreSQL with and without SSLRequest",
    ),
    ("redis-server", "tests: Redis RESP peer"),
    ("redis-tools", "tests: redis-cli"),
    ("openssh-server", "tests: SSH peer (sshd)"),
    ("openssh-client", "tests: SSH client"),
    (
        "prometheus",
        "tests: a real Prometheus scraping the agent; promtool for metrics and alert rules",
    ),
    (
        "nodejs",
        "tests: type-checking the Grafana dashboards (tsc, @grafana/schema)",
    ),
    (
        "python3-venv",
        "tests: the Python environments of kubernetes-validate, helm-python-sdk and grpcio",
    ),
    (
        "openjdk-17-jdk-headless",
        "tests: Java JSSE peers of the scenario matrix (javac, keytool)",
    ),
    (
        "libnss3-tools",
        "tests: NSS peers of the scenario matrix (tstclnt, selfserv, certutil, pk12util)",
    ),
    (
        "chromium",
        "tests: a headless screenshot of `mtls-auditor report --format html`",
    ),
];

/// Installed from bookworm-backports on Debian 12 (Suricata 7 with JA4; Go 1.21,
/// where bookworm's golang-go is 1.19).
const BACKPORTS_PACKAGES: &[(&str, &str)] = &[
    ("suricata", "tests: the JA4 oracle (Suricata 7)"),
    (
        "golang-1.21-go",
        "tests: Go crypto/tls peers of the scenario matrix",
    ),
];
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/mtls-auditor-backports.sources";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release").unwrap_or_default()
}

fn is_debian_like() -> bool {
    let text = os_release();
    text.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        (l.starts_with("id=") || l.starts_with("id_like="))
            && (l.contains("debian") || l.contains("ubuntu"))
    })
}

fn manual_steps(root: &Path) -> String {
    let nightly =
        toolchain_channel(&root.join("agent-ebpf/rust-toolchain.toml")).unwrap_or_default();
    let stable = toolchain_channel(&root.join("rust-toolchain.toml")).unwrap_or_default();
    let pkgs: Vec<&str> = APT_PACKAGES.iter().map(|(p, _)| *p).collect();
    format!(
        "This machine cannot be set up automatically (needs root on Debian or Ubuntu).\n\
         Do these steps as root, then run the command again:\n\
         \x20 rustup toolchain install {stable} --profile minimal --component clippy,rustfmt\n\
         \x20 rustup toolchain install {nightly} --profile minimal --component rust-src\n\
         \x20 apt-get install -y {}   # or your distribution's equivalents; LLVM 22 is required\n\
         \x20 apt-get install -y suricata golang-1.21-go   # Suricata 7, Go 1.21 (bookworm-backports on Debian 12)\n\
         \x20 apt-get install -y npm   # unless your nodejs brings npm (NodeSource's does)\n\
         \x20 PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} \\\n\
         \x20     --no-default-features --features llvm-22 --locked\n\
         \x20 cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked\n\
         \x20 (cd dashboards && npm ci)\n\
         \x20 python3 -m venv target/pytools && target/pytools/bin/pip install -r {PY_REQUIREMENTS} \\\n\
         \x20     && cp {PY_REQUIREMENTS} target/pytools/\n\
         \x20 python3 -m venv target/pytools-grpc && target/pytools-grpc/bin/pip install -r {GRPC_REQUIREMENTS} \\\n\
         \x20     && cp {GRPC_REQUIREMENTS} target/pytools-grpc/\n",
        pkgs.join(" ")
    )
}

fn rustup_has(toolchain: &str, component: Option<&str>) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    match component {
        None => true,
        Some(c) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(c)),
    }
}

fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !package_installed(p))
        .collect();
    // Debian's nodejs comes without npm (NodeSource's includes it).
    if !on_path("npm") && !package_installed("npm") {
        missing.push("npm");
    }
    missing
}

/// Whether `program` is an executable in a `PATH` directory.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

fn package_installed(p: &str) -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", p])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn codename() -> Option<String> {
    os_release()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
}

/// Installs packages without starting their services (policy-rc.d), so a test
/// machine does not end up running sshd, redis or postgres on its own.
fn apt_install(packages: &[&str], target_release: Option<&str>) -> Result<()> {
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let own_policy = !Path::new(POLICY_RC_D).exists();
    if own_policy {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# mtls-auditor setup: do not start services\nexit 101\n",
        )?;
        crate::cmd("chmod", &["755", POLICY_RC_D])?;
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    if let Some(t) = target_release {
        args.extend(["-t", t]);
    }
    args.extend(packages.iter().copied());
    let result = crate::cmd_env("apt-get", &args, &env);
    if own_policy {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

/// Installs what is missing. `extra_packages` are further apt packages a task needs.
pub fn setup(extra_packages: &[&str]) -> Result<()> {
    let root = project_root();
    let nightly = toolchain_channel(&root.join("agent-ebpf/rust-toolchain.toml"))?;
    let mut todo = Vec::new();
    if !rustup_has(&nightly, Some("rust-src")) {
        todo.push("nightly");
    }
    let mut missing = missing_packages();
    missing.extend(
        extra_packages
            .iter()
            .copied()
            .filter(|p| !package_installed(p)),
    );
    let backports: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !package_installed(p))
        .collect();
    let linker = bpf_linker_ok();
    let fuzz = cargo_fuzz_ok();
    let node_modules = root.join("dashboards/node_modules/.bin/tsc").exists();
    let pytools = pytools_ok(&root);
    if todo.is_empty()
        && missing.is_empty()
        && backports.is_empty()
        && linker
        && fuzz
        && node_modules
        && pytools
    {
        return Ok(());
    }
    if !is_root() || !is_debian_like() {
        eprint!("{}", manual_steps(&root));
        let mut all = missing.clone();
        all.extend(backports.iter().copied());
        bail!(
            "set-up incomplete: missing {}",
            describe(&Missing {
                toolchains: &todo,
                packages: &all,
                linker,
                fuzz,
                node_modules,
                pytools,
            })
        );
    }
    if !todo.is_empty() {
        eprintln!(
            "setup: installing Rust {nightly} with rust-src (builds the eBPF programs, runs the fuzzers)"
        );
        cmd(
            "rustup",
            &[
                "toolchain",
                "install",
                &nightly,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        )?;
    }
    if !missing.is_empty() || !backports.is_empty() {
        let bookworm = codename().as_deref() == Some("bookworm");
        if !backports.is_empty() && bookworm && !Path::new(BACKPORTS_SOURCE).exists() {
            eprintln!(
                "setup: adding Debian bookworm-backports (Suricata 7, Go 1.21) as {BACKPORTS_SOURCE}"
            );
            std::fs::write(
                BACKPORTS_SOURCE,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )?;
        }
        crate::cmd_env(
            "apt-get",
            &["update", "-q"],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )?;
        if !missing.is_empty() {
            eprintln!("setup: installing Debian packages: {}", missing.join(" "));
            apt_install(&missing, None)?;
        }
        if !backports.is_empty() {
            eprintln!(
                "setup: installing {} (bookworm-backports on Debian 12)",
                backports.join(" ")
            );
            apt_install(&backports, bookworm.then_some("bookworm-backports"))?;
        }
    }
    if !linker {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
        );
        let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
        crate::cmd_env(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--locked",
            ],
            &[("PATH", path.as_str())],
        )
        .context("building bpf-linker")?;
    }
    if !fuzz {
        eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
        cmd(
            "cargo",
            &[
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ],
        )?;
    }
    if !root.join("dashboards/node_modules/.bin/tsc").exists() {
        eprintln!(
            "setup: installing the dashboard type checker (npm ci: typescript, @grafana/schema)"
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root.join("dashboards"))
            .status()
            .context("running npm")?;
        if !status.success() {
            bail!("`npm ci` in dashboards/ failed: {status}");
        }
    }
    if !pytools {
        install_pytools(&root)?;
    }
    Ok(())
}

/// The deploy checks' Python environment.
pub fn pytools_dir(root: &Path) -> std::path::PathBuf {
    PY_ENVS[0].dir(root)
}

const PY_REQUIREMENTS: &str = "deploy/tools/requirements.txt";
const GRPC_REQUIREMENTS: &str = "tests/peers/python/requirements.txt";

/// A Python virtual environment under target/, made from a pinned requirements file.
struct PyEnv {
    /// Below the project root.
    dir: &'static str,
    requirements: &'static str,
    /// A file inside the environment that only a complete install has.
    marker: &'static str,
    what: &'static str,
}

const PY_ENVS: [PyEnv; 2] = [
    PyEnv {
        dir: "target/pytools",
        requirements: PY_REQUIREMENTS,
        marker: "bin/kubernetes-validate",
        what: "the deploy checks' Python tools: kubernetes-validate and helm-python-sdk",
    },
    PyEnv {
        dir: "target/pytools-grpc",
        requirements: GRPC_REQUIREMENTS,
        marker: "bin/python",
        what: "the scenario matrix's gRPC peers: grpcio (BoringSSL)",
    },
];

impl PyEnv {
    fn dir(&self, root: &Path) -> std::path::PathBuf {
        root.join(self.dir)
    }

    /// Present, and made from the current requirements (a copy is kept inside).
    fn ok(&self, root: &Path) -> bool {
        let dir = self.dir(root);
        let want = std::fs::read(root.join(self.requirements)).ok();
        let have = std::fs::read(dir.join("requirements.txt")).ok();
        want.is_some() && want == have && dir.join(self.marker).exists()
    }

    fn install(&self, root: &Path) -> Result<()> {
        let dir = self.dir(root);
        eprintln!(
            "setup: installing {} into {} (pip)",
            self.what,
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        let dir_s = dir.to_string_lossy().into_owned();
        cmd("python3", &["-m", "venv", &dir_s])
            .context("creating the Python virtual environment")?;
        let pip = dir.join("bin/pip");
        let req = root.join(self.requirements);
        cmd(
            &pip.to_string_lossy(),
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--require-virtualenv",
                "-r",
                &req.to_string_lossy(),
            ],
        )
        .with_context(|| format!("installing {}", self.what))?;
        std::fs::copy(&req, dir.join("requirements.txt"))?;
        Ok(())
    }
}

fn pytools_ok(root: &Path) -> bool {
    PY_ENVS.iter().all(|e| e.ok(root))
}

fn install_pytools(root: &Path) -> Result<()> {
    for env in &PY_ENVS {
        if !env.ok(root) {
            env.install(root)?;
        }
    }
    Ok(())
}

/// What set-up found missing (`true`: present).
struct Missing<'a> {
    toolchains: &'a [&'a str],
    packages: &'a [&'a str],
    linker: bool,
    fuzz: bool,
    node_modules: bool,
    pytools: bool,
}

fn describe(m: &Missing) -> String {
    let mut parts = Vec::new();
    if !m.toolchains.is_empty() {
        parts.push("the eBPF nightly toolchain".to_owned());
    }
    if !m.packages.is_empty() {
        parts.push(format!("packages {}", m.packages.join(" ")));
    }
    if !m.linker {
        parts.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if !m.fuzz {
        parts.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    if !m.node_modules {
        parts.push("the dashboards' type checker (npm ci in dashboards/)".to_owned());
    }
    if !m.pytools {
        parts.push(
            "the Python tools of the deploy checks and the gRPC peers (target/pytools, target/pytools-grpc)"
                .to_owned(),
        );
    }
    parts.join(", ")
}
