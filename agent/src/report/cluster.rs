//! With cluster access: one list of the PeerAuthentications and of the pods (for
//! their workloads' labels), through the same client `run` uses.

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use thiserror::Error;

use super::modes::Labels;
use crate::{
    kube::{KubeError, Source, state::workload_name},
    policy::model::PeerAuthentication,
};

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Client(#[from] KubeError),
    #[error("listing {what} from the API server: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error(
        "the API server did not answer the list of {what} within {}",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("a runtime for the Kubernetes client: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the cluster says.
pub struct ClusterView {
    pub source: Source,
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Objects skipped because this version cannot read them.
    pub unreadable: Vec<String>,
    /// `None`: the cluster does not serve PeerAuthentication (no Istio).
    pub peer_authentication_version: Option<&'static str>,
    pub labels: Labels,
    pub pods: usize,
}

async fn with_timeout<T>(
    what: &'static str,
    timeout: Duration,
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|source| ClusterError::List { what, source }),
        Err(_) => Err(ClusterError::Timeout { what, timeout }),
    }
}

async fn list(
    client: Client,
    namespace: Option<&str>,
    timeout: Duration,
    source: Source,
) -> Result<ClusterView, ClusterError> {
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pods = with_timeout("pods", timeout, pods.list(&ListParams::default())).await?;
    let mut labels = Labels::new();
    for p in &pods.items {
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        labels
            .entry((ns, workload_name(p)))
            .or_insert_with(|| p.metadata.labels.clone().unwrap_or_default());
    }
    // Mesh-wide policies live in the root namespace: always list them all.
    let mut version = None;
    let mut peer_authentications = Vec::new();
    let mut unreadable = Vec::new();
    for v in ["v1", "v1beta1"] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("security.istio.io", v, "PeerAuthentication"),
            "peerauthentications",
        );
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let listed = match tokio::time::timeout(timeout, api.list(&ListParams::default())).await {
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: "PeerAuthentications",
                    timeout,
                });
            }
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => continue,
            Ok(Err(source)) => {
                return Err(ClusterError::List {
                    what: "PeerAuthentications",
                    source,
                });
            }
            Ok(Ok(l)) => l,
        };
        version = Some(v);
        for o in listed.items {
            let name = format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or(""),
                o.metadata.name.as_deref().unwrap_or("")
            );
            match serde_json::to_value(&o).and_then(serde_json::from_value::<PeerAuthentication>) {
                Ok(pa) => peer_authentications.push(pa),
                Err(e) => unreadable.push(format!("PeerAuthentication {name}: {e}")),
            }
        }
        break;
    }
    Ok(ClusterView {
        source,
        peer_authentications,
        unreadable,
        peer_authentication_version: version,
        pods: pods.items.len(),
        labels,
    })
}

/// Lists the cluster's PeerAuthentications and pods, when there is a cluster
/// (`--kubeconfig`, or in a pod with a service account); `Ok(None)` without one.
pub fn fetch(
    kubeconfig: Option<&Path>,
    namespace: Option<&str>,
    timeout: Duration,
) -> Result<Option<ClusterView>, ClusterError> {
    let Some(source) = crate::kube::detect(kubeconfig) else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    rt.block_on(async {
        let client = match tokio::time::timeout(timeout, crate::kube::client(&source)).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: "client configuration",
                    timeout,
                });
            }
        };
        list(client, namespace, timeout, source).await.map(Some)
    })
}
