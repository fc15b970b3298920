//! In-cluster mode: pods of this node (or all, `--remote-pods`), Services, EndpointSlices, Istio's
//! PeerAuthentication and DestinationRule, and Linkerd's Server, AuthorizationPolicy,
//! MeshTLSAuthentication and NetworkAuthentication from the API server (each policy kind
//! optional: watched when the cluster serves it), through kube-runtime
//! watchers. A watcher lists, then watches from the list's resourceVersion; on
//! `410 Gone` (an expired resourceVersion) it lists again, on a dropped connection
//! or an API-server restart it watches again from the last version it saw, with
//! exponential back-off. Every re-list replaces the index wholesale, so objects
//! deleted while the watch was down disappear too.
//!
//! Selected automatically inside a pod (service-account token) or with
//! `--kubeconfig`.

//!
//! The index (`state`) and cgroup path parsing (`cgroup_path`) are plain data and
//! build without the agent's runtime; the watchers (`watch`) need the `agent`
//! feature.

pub mod cgroup_path;
pub mod state;
#[cfg(feature = "agent")]
mod watch;

use std::sync::{Arc, RwLock};

pub use state::{ClusterState, POLICY_KINDS};
#[cfg(feature = "agent")]
pub use watch::*;

/// Shared handle to the cluster index.
pub type SharedState = Arc<RwLock<ClusterState>>;
