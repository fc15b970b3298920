//! Everything a developer or CI runs:
//! `cargo xtask <setup|build|run|test|bench|fuzz|accuracy|manifests>`.
//! `./x` installs the pinned Rust toolchain and then calls this.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Set-up, build, run, test and bench for mtls-auditor"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Rust nightly, Debian packages, bpf-linker,
    /// cargo-fuzz, the dashboards' npm type checker, the deploy checks' Python tools.
    Setup,
    /// Build the agent (release) with its eBPF programs.
    Build,
    /// Set up, build and run the agent on this host with the seed example scenario
    /// (examples/seed): three workloads, their Istio policies, traffic that shows
    /// every verdict, a live table. Ctrl-C stops and cleans up (needs root).
    /// `--mode ambient` (first) runs it on Istio ambient's data path (ztunnel,
    /// HBONE) instead of sidecars.
    Run {
        /// `--mode sidecar|ambient` first, then arguments passed on to
        /// `mtls-auditor run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build and run the whole test suite (needs root for the probes).
    Test,
    /// Run every fuzz target (cargo fuzz, nightly) for a while; fails on any crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Build unoptimised without AddressSanitizer, as the test suite's smoke run
        /// does (builds in about a third of the time).
        #[arg(long)]
        quick: bool,
        /// Targets to run (default: all of fuzz/fuzz_targets).
        targets: Vec<String>,
    },
    /// Run the classifier's scenario matrix and rewrite docs/accuracy.md (root).
    Accuracy,
    /// Regenerate deploy/kubernetes/*.yaml from the Helm chart (deploy/helm).
    Manifests,
    /// Measure the agent's cost side by side: connection rates (plaintext and
    /// mutual TLS), throughput, cost per connection (kernel programs, agent CPU,
    /// ring events, bytes), tshark on the same traffic, memory with many
    /// connections held (root).
    Bench {
        /// Rounds; each runs every workload without the agent, with it, and the
        /// short connections with tshark instead.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Idle loopback connections held open for the memory figures (0: skip).
        #[arg(long, default_value_t = 100_000)]
        hold: usize,
    },
    /// Internal to `bench`: holds loopback connections open (both ends) until
    /// stdin says `close`.
    #[command(hide = true)]
    BenchHold {
        #[arg(long)]
        connections: usize,
    },
}

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// The `channel = "..."` of a rust-toolchain.toml.
pub fn toolchain_channel(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| anyhow!("{}: no channel line", path.display()))
}

pub fn cmd(program: &str, args: &[&str]) -> Result<()> {
    cmd_env(program, args, &[])
}

pub fn cmd_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(project_root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn agent_binary() -> PathBuf {
    project_root().join("target/release/mtls-auditor")
}

fn build() -> Result<()> {
    cmd(
        "cargo",
        &["build", "--release", "--package", "mtls-auditor"],
    )
}

/// Fuzz targets, from fuzz/Cargo.toml's `[[bin]]` entries.
fn fuzz_targets() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(project_root().join("fuzz/Cargo.toml"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"').to_owned())
        .filter(|n| n != "mtls-auditor-fuzz")
        .collect())
}

/// How the fuzzers are built and for how long each runs.
struct FuzzRun {
    seconds: u64,
    /// Unoptimised with debug assertions (overflow checks) and no sanitizer: about
    /// a third of the build time, which is what a smoke run in the test suite needs.
    /// Otherwise optimised with AddressSanitizer, cargo fuzz's default.
    quick_build: bool,
}

impl FuzzRun {
    fn smoke() -> Self {
        Self {
            seconds: 10,
            quick_build: true,
        }
    }
}

fn fuzz(run: &FuzzRun, targets: &[String]) -> Result<()> {
    let nightly = toolchain_channel(&project_root().join("agent-ebpf/rust-toolchain.toml"))?;
    let all = fuzz_targets()?;
    let targets = if targets.is_empty() {
        all
    } else {
        targets.to_vec()
    };
    let toolchain = format!("+{nightly}");
    let build: &[&str] = if run.quick_build {
        &["--dev", "--sanitizer", "none"]
    } else {
        &["-O"]
    };
    // The fuzzers link the agent as a library; its eBPF object is not needed.
    let env = [("AYA_BUILD_SKIP", "1")];
    let mut args = vec![toolchain.as_str(), "fuzz", "build"];
    args.extend_from_slice(build);
    cmd_env("cargo", &args, &env)?;
    let max = format!("-max_total_time={}", run.seconds);
    for t in &targets {
        seed(t)?;
        eprintln!("xtask: fuzzing {t} for {} s", run.seconds);
        let mut args = vec![toolchain.as_str(), "fuzz", "run"];
        args.extend_from_slice(build);
        args.extend_from_slice(&[t, "--", &max, "-print_final_stats=0"]);
        cmd_env("cargo", &args, &env)?;
    }
    Ok(())
}

/// Starts a target's corpus from real inputs where the repository has them: the
/// test captures for the capture-file reader, and `fuzz/seeds/<target>/` (cut from
/// the same captures by `fuzz/make-seeds.py`) for the others.
fn seed(target: &str) -> Result<()> {
    let root = project_root();
    let mut seeds: Vec<PathBuf> = match target {
        "pcap_file" => [
            "handshakes.pcapng",
            "stacks.pcapng",
            "upgrades.pcapng",
            "sll-arphrd.pcap",
            "sll2.pcap",
            "qinq-pppoe.pcap",
            "udp-tunnels.pcap",
            "ip-tunnels.pcap",
            "gre.pcap",
            "fragments.pcap",
            "truncated.pcap",
            "skipped.pcapng",
        ]
        .iter()
        .map(|f| root.join("agent/tests/data").join(f))
        .collect(),
        "policy_yaml" => [
            "agent/tests/data/policy/istio-docs.yaml",
            "agent/tests/data/policy/linkerd-docs.yaml",
            "examples/seed/istio-policies.yaml",
            "examples/seed/inventory.yaml",
            "examples/transport-policy.yaml",
            "examples/istio-mesh-config.yaml",
        ]
        .iter()
        .map(|f| root.join(f))
        .collect(),
        "report_answer" => [
            "agent/tests/data/prometheus-vector.json",
            "agent/tests/data/prometheus-matrix.json",
        ]
        .iter()
        .map(|f| root.join(f))
        .collect(),
        _ => Vec::new(),
    };
    let dir = root.join("fuzz/seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            seeds.push(
                e.with_context(|| format!("reading {}", dir.display()))?
                    .path(),
            );
        }
    }
    if seeds.is_empty() {
        return Ok(());
    }
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    for from in &seeds {
        let name = from
            .file_name()
            .ok_or_else(|| anyhow!("{}: no file name", from.display()))?;
        std::fs::copy(from, corpus.join(name))
            .with_context(|| format!("copying {} into {}", from.display(), corpus.display()))?;
    }
    Ok(())
}

fn accuracy() -> Result<()> {
    setup::setup(&[])?;
    build()?;
    let bin = agent_binary();
    let bin = bin.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let out = project_root().join("docs/accuracy.md");
    let out = out.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    cmd_env(
        "cargo",
        &[
            "test",
            "--release",
            "--package",
            "integration-tests",
            "--test",
            "classifier",
            "--",
            "--test-threads=1",
        ],
        &[("MTLS_AUDITOR_BIN", bin), ("MTLS_WRITE_ACCURACY", out)],
    )?;
    eprintln!("xtask: wrote {out}");
    Ok(())
}

fn test() -> Result<()> {
    setup::setup(&[])?;
    // One cargo invocation for every test target: the packages it selects decide
    // the dependencies' features, so splitting unit and integration tests (or
    // building the binary on its own) would compile much of the tree, the eBPF
    // object included, a second time. The integration tests run the binary this
    // same build puts in target/release.
    eprintln!("xtask: unit and integration tests (release; real probes, one test at a time)");
    let bin = agent_binary();
    let bin = bin.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    cmd_env(
        "cargo",
        &[
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            // No tests of its own; selecting it would turn on its (empty) default
            // feature and make the agent's build differ from `./x run`'s.
            "--exclude",
            "agent-common",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ],
        &[("MTLS_AUDITOR_BIN", bin)],
    )?;
    eprintln!("xtask: fuzz smoke run (every parser of untrusted bytes)");
    fuzz(&FuzzRun::smoke(), &[])?;
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    setup::setup(&[])?;
    build()?;
    let script = project_root().join("examples/seed/run.sh");
    eprintln!(
        "xtask: running the seed scenario ({}); Ctrl-C stops",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("MTLS_AUDITOR_BIN", agent_binary())
        .status()
        .context("starting the seed scenario")?;
    // 130: stopped with Ctrl-C, which is how it is meant to end.
    if !status.success() && status.code() != Some(130) {
        bail!("the seed scenario exited with {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(&[]),
        Cmd::Build => {
            setup::setup(&[])?;
            build()
        }
        Cmd::Run { args } => run(&args),
        Cmd::Test => test(),
        Cmd::Bench {
            rounds,
            seconds,
            hold,
        } => {
            setup::setup(&[])?;
            build()?;
            bench::bench(&bench::BenchOptions {
                rounds,
                seconds,
                hold,
            })?;
            eprintln!("xtask: classification time per connection (criterion)");
            cmd(
                "cargo",
                &["bench", "--package", "mtls-auditor", "--bench", "classify"],
            )
        }
        Cmd::BenchHold { connections } => bench::holder(connections),
        Cmd::Fuzz {
            seconds,
            quick,
            targets,
        } => {
            setup::setup(&[])?;
            let run = FuzzRun {
                seconds,
                quick_build: quick,
            };
            fuzz(&run, &targets)
        }
        Cmd::Accuracy => accuracy(),
        Cmd::Manifests => {
            setup::setup(&[])?;
            let python = setup::pytools_dir(&project_root()).join("bin/python");
            cmd(
                &python.to_string_lossy(),
                &["deploy/tools/chart.py", "manifests", "deploy/kubernetes"],
            )?;
            eprintln!("xtask: wrote deploy/kubernetes/ from deploy/helm/mtls-auditor");
            Ok(())
        }
    }
}
