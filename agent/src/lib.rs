//! mtls-auditor: the userspace agent.
//!
//! Modules follow the pipeline: `probes` (kernel programs) -> `capture` (ring
//! buffer records) -> `flows` (connections, reassembly) -> `classify` -> `export`.

pub mod capture;
pub mod cgroups;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod export;
pub mod flows;
pub mod pcap;
pub mod probes;
pub mod run;
