//! Builds the kernel programs (`agent-ebpf`) with the pinned nightly and places the
//! object in OUT_DIR, where `probes.rs` includes it. The toolchain name is read from
//! `agent-ebpf/rust-toolchain.toml`, the one place it is written down.
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for `cargo check`, docs, fuzzing), and
//! so does building without the `agent` feature, which has no probes to load.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_AGENT").is_none() {
        return Ok(());
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", toolchain_file.display());
    let text = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| anyhow!("{}: no `channel = \"...\"` line", toolchain_file.display()))?;

    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Leave an empty object so `include_bytes!` compiles; loading it fails
        // with a clear error at run time.
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("agent-ebpf");
        if !out.exists() {
            fs::write(&out, [])?;
        }
    }
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&channel),
    )
}
