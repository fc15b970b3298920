//! mtls-auditor: the userspace agent.
//!
//! Modules follow the pipeline: `probes` (kernel programs) -> `capture` (ring
//! buffer records) -> `flows` (connections, reassembly) -> `classify` -> `verdict`
//! (with `policy` and `inventory`) -> `export`.
//!
//! The `agent` feature (default) adds what runs the agent: `probes`, `run`,
//! `export`, `cli`, policy reload and the Kubernetes watchers. Without it the crate
//! is the pure, I/O-free parts the fuzzers link.

pub mod capture;
pub mod cgroups;
pub mod classify;
#[cfg(feature = "agent")]
pub mod cli;
pub mod clock;
#[cfg(feature = "agent")]
pub mod config;
#[cfg(feature = "agent")]
pub mod export;
pub mod flows;
pub mod hops;
pub mod input;
#[cfg(feature = "agent")]
pub mod instance;
pub mod inventory;
pub mod kube;
pub mod pcap;
pub mod policy;
#[cfg(feature = "agent")]
pub mod probes;
#[cfg(feature = "agent")]
pub mod record;
pub mod report;
#[cfg(feature = "agent")]
pub mod run;
pub mod text;
pub mod verdict;
