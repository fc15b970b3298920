//! mtls-auditor: the userspace agent.
//!
//! Modules follow the pipeline: `probes` (kernel programs) -> `capture` (ring
//! buffer records) -> `flows` (connections, reassembly) -> `classify` -> `verdict`
//! (with `policy` and `inventory`) -> `export`.

pub mod capture;
pub mod cgroups;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod export;
pub mod flows;
pub mod inventory;
pub mod kube;
pub mod pcap;
pub mod policy;
pub mod probes;
pub mod run;
pub mod verdict;
