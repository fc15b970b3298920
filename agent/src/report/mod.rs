//! `mtls-auditor report`: STRICT readiness across the cluster, computed from the
//! agents' counters in Prometheus.
//!
//! - `prom`: the Prometheus HTTP API client (deadlines, size caps, clear errors),
//!   `answer`: its answers decoded (I/O-free, fuzzed);
//! - `queries`: the PromQL, shared with dashboards/strict-readiness.json;
//! - `modes`: each server's PeerAuthentication mode (policy files, the cluster's
//!   objects, or inferred from the verdicts);
//! - `cluster`: the one-shot list of PeerAuthentications and pods;
//! - `model`: the report's shape (the JSON contract); `build`: the report, a pure
//!   function of the answers;
//! - `render` and `html`: table, markdown, JSON and the self-contained HTML page;
//! - `command`: the subcommand, wiring them (with the `agent` feature).
//!
//! Without the `agent` feature only the I/O-free parts build (answers, model,
//! modes, renderers): what the fuzz target links.

pub mod answer;
pub mod build;
#[cfg(feature = "agent")]
pub mod cluster;
#[cfg(feature = "agent")]
mod command;
#[cfg(all(test, feature = "agent"))]
mod dashboard;
pub mod html;
pub mod model;
pub mod modes;
#[cfg(feature = "agent")]
pub mod prom;
#[cfg(feature = "agent")]
pub mod queries;
pub mod render;

#[cfg(feature = "agent")]
pub use command::*;
