//! `cargo xtask setup`: installs what is missing and nothing else.
//!
//! - the eBPF nightly named in `agent-ebpf/rust-toolchain.toml`, with `rust-src`
//!   (the userspace toolchain is installed by `./x` before cargo runs);
//! - the Debian packages the build and the tests use;
//! - bpf-linker built against LLVM 22 (what the pinned nightly uses).
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
    ("openssl", "tests: TLS peers and certificates"),
    ("curl", "tests: HTTP and TLS clients"),
    ("python3", "tests: HTTP servers and scripted peers"),
    ("wrk", "bench: loopback connection rate"),
    ("iperf3", "bench: bulk throughput"),
    ("nginx-light", "bench: HTTP server under load"),
];

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
         \x20 PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} \\\n\
         \x20     --no-default-features --features llvm-22 --locked\n",
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
    APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

/// Extra apt packages other tasks need (e.g. Prometheus for the metrics tests).
pub fn setup(extra_packages: &[&str]) -> Result<()> {
    let root = project_root();
    let nightly = toolchain_channel(&root.join("agent-ebpf/rust-toolchain.toml"))?;
    let mut todo = Vec::new();
    if !rustup_has(&nightly, Some("rust-src")) {
        todo.push("nightly");
    }
    let mut missing = missing_packages();
    for p in extra_packages {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output();
        if !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed")) {
            missing.push(p);
        }
    }
    let linker = bpf_linker_ok();
    if todo.is_empty() && missing.is_empty() && linker {
        return Ok(());
    }
    if !is_root() || !is_debian_like() {
        eprint!("{}", manual_steps(&root));
        bail!(
            "set-up incomplete: missing {}",
            describe(&todo, &missing, linker)
        );
    }
    if !todo.is_empty() {
        eprintln!("setup: installing Rust {nightly} with rust-src (builds the eBPF programs)");
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
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        let env = [("DEBIAN_FRONTEND", "noninteractive")];
        crate::cmd_env("apt-get", &["update", "-q"], &env)?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(missing.iter().copied());
        crate::cmd_env("apt-get", &args, &env)?;
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
    Ok(())
}

fn describe(todo: &[&str], missing: &[&str], linker: bool) -> String {
    let mut parts = Vec::new();
    if !todo.is_empty() {
        parts.push("the eBPF nightly toolchain".to_owned());
    }
    if !missing.is_empty() {
        parts.push(format!("packages {}", missing.join(" ")));
    }
    if !linker {
        parts.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    parts.join(", ")
}
