//! Harness for the integration tests: real probes, real peers, network namespaces.
//!
//! Everything a test creates is owned by an RAII guard and removed in `Drop`, also
//! when the test panics: network namespaces (and the veths inside them), cgroups,
//! child processes (ended by PID, only the ones we started) and the agent.
//!
//! Address plan (PLATFORM.md): 10.213.0.0/16 and fd13:213::/64 only. A test picks
//! its own /24 (`10.213.<net>.0/24`) and the matching IPv6 addresses
//! `fd13:213::<net, hex>:1` / `fd13:213::<net, hex>:2`.

pub mod agent;
pub mod kubeapi;
pub mod mesh;
pub mod net;
pub mod peers;
pub mod proc;
pub mod report;
pub mod scenarios;

pub use agent::{Agent, AgentOptions, Record};
pub use net::{Cgroup, CgroupTree, Netns, NetnsPair, TempDir};
pub use proc::{Child, Spawn};

/// Panics unless the tests run with the privileges the probes need. With `CI` set
/// or not, a test that cannot load probes fails: it never skips silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and create network namespaces: run them as root (`./x test`)"
    );
}

/// Path of the agent binary under test: `MTLS_AUDITOR_BIN`, set by `cargo xtask test`.
pub fn agent_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MTLS_AUDITOR_BIN") {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("mtls-auditor");
        if p.exists() {
            return p;
        }
    }
    panic!("agent binary not found: build it (`cargo xtask build`) or set MTLS_AUDITOR_BIN");
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    stdout_of_success(&out, &format!("{program} {args:?}"))
}

/// The stdout of a finished command, panicking with its output unless it succeeded.
pub fn stdout_of_success(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "`{what}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
