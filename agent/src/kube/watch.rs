//! The API-server side of in-cluster mode: client, watchers, and the policy kinds
//! of Istio and Linkerd (each optional: probed, and watched when served).

use std::{
    collections::BTreeMap,
    fmt::Debug,
    path::{Path, PathBuf},
    sync::{Arc, mpsc::Sender},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing::{info, warn};

use super::{ClusterState, SharedState};
use crate::policy::watch::Trigger;

const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where the API server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    InCluster,
    Kubeconfig(PathBuf),
}

/// `--kubeconfig`, or in-cluster when running in a pod with a service account.
pub fn detect(kubeconfig: Option<&Path>) -> Option<Source> {
    if let Some(p) = kubeconfig {
        return Some(Source::Kubeconfig(p.to_path_buf()));
    }
    (std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && Path::new(SA_TOKEN).exists())
        .then_some(Source::InCluster)
}

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Builds a client for `source`.
pub async fn client(source: &Source) -> Result<Client, KubeError> {
    let config = match source {
        Source::InCluster => Config::incluster().map_err(KubeError::InCluster)?,
        Source::Kubeconfig(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// Drives one watcher into `apply`/`delete`/`replace` callbacks, forever.
async fn drive<K>(
    api: Api<K>,
    cfg: watcher::Config,
    what: &'static str,
    mut on: impl FnMut(Change<K>) + Send,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut buffer: Vec<K> = Vec::new();
    let mut errors = 0u64;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(o),
            Ok(watcher::Event::InitDone) => {
                info!(resource = what, objects = buffer.len(), "listed");
                on(Change::Replace(std::mem::take(&mut buffer)));
            }
            Ok(watcher::Event::Apply(o)) => on(Change::Apply(o)),
            Ok(watcher::Event::Delete(o)) => on(Change::Delete(o)),
            Err(e) => {
                errors += 1;
                if errors.is_power_of_two() {
                    warn!(resource = what, error = %e, errors, "watch failed; retrying with back-off");
                }
            }
        }
    }
}

enum Change<K> {
    Apply(K),
    Delete(K),
    Replace(Vec<K>),
}

/// Finds the version of a policy kind the API server serves (newest first).
async fn policy_resource(client: &Client, pk: &PolicyKind) -> Option<ApiResource> {
    let PolicyKind {
        mesh,
        group,
        kind,
        plural,
        versions,
        ..
    } = pk;
    let mut delay = Duration::from_millis(500);
    let mut failures = 0u32;
    'probe: loop {
        for v in *versions {
            let ar =
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, v, kind), plural);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => return Some(ar),
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => {
                    // Unreachable, forbidden, ...: ask again, backing off.
                    failures += 1;
                    if failures.is_power_of_two() {
                        warn!(kind, version = v, error = %e, failures, "cannot ask the API server which version it serves; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue 'probe;
                }
            }
        }
        info!(
            kind,
            mesh,
            "not served by this cluster (the mesh not installed?): only file policy applies; asking again every 5 minutes"
        );
        return None;
    }
}

fn convert<T: DeserializeOwned>(obj: &DynamicObject, kind: &str) -> Option<T> {
    let value = serde_json::to_value(obj).ok()?;
    match serde_json::from_value::<T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(
                kind,
                namespace = obj.metadata.namespace.as_deref().unwrap_or(""),
                name = obj.metadata.name.as_deref().unwrap_or(""),
                error = %e,
                "ignoring an object this version of the agent cannot read"
            );
            None
        }
    }
}

type Key = (String, String);

fn key_of(obj: &DynamicObject) -> Key {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// A kind the cluster index keeps.
pub trait Indexed:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn apply(state: &mut ClusterState, obj: &Self);
    fn delete(state: &mut ClusterState, obj: &Self);
    fn replace(state: &mut ClusterState, all: &[Self]);
}

impl Indexed for Pod {
    fn apply(st: &mut ClusterState, o: &Self) {
        st.apply_pod(o);
    }
    fn delete(st: &mut ClusterState, o: &Self) {
        st.delete_pod(o);
    }
    fn replace(st: &mut ClusterState, all: &[Self]) {
        st.replace_pods(all);
    }
}

impl Indexed for Service {
    fn apply(st: &mut ClusterState, o: &Self) {
        st.apply_service(o);
    }
    fn delete(st: &mut ClusterState, o: &Self) {
        st.delete_service(o);
    }
    fn replace(st: &mut ClusterState, all: &[Self]) {
        st.replace_services(all);
    }
}

impl Indexed for EndpointSlice {
    fn apply(st: &mut ClusterState, o: &Self) {
        st.apply_slice(o);
    }
    fn delete(st: &mut ClusterState, o: &Self) {
        st.delete_slice(o);
    }
    fn replace(st: &mut ClusterState, all: &[Self]) {
        st.replace_slices(all);
    }
}

/// Watches every object of kind `K` (narrowed by `cfg`) into the index.
fn index<K: Indexed>(
    client: &Client,
    cfg: watcher::Config,
    what: &'static str,
    state: &SharedState,
    policy_changed: &Sender<Trigger>,
) {
    let s = Arc::clone(state);
    let tx = policy_changed.clone();
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(drive(api, cfg, what, move |c| {
        let Ok(mut st) = s.write() else { return };
        let was_ready = st.ready();
        match c {
            Change::Apply(o) => K::apply(&mut st, &o),
            Change::Delete(o) => K::delete(&mut st, &o),
            Change::Replace(v) => K::replace(&mut st, &v),
        }
        let now_ready = st.ready();
        drop(st);
        // The last first list completes the state: rebuild the policy from it
        // (readiness waits for that policy to be in force).
        if now_ready && !was_ready {
            let _ = tx.send(Trigger::Cluster);
        }
    }));
}

/// Which pods are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodScope {
    /// The pods of this node (field selector on `spec.nodeName`).
    Node,
    /// Every pod of the cluster, so that ends on other nodes are attributed by IP.
    Cluster,
}

/// Starts every watcher on the current tokio runtime. Policy changes are signalled
/// on `policy_changed`.
pub fn spawn(
    client: Client,
    state: SharedState,
    node_name: &str,
    pods: PodScope,
    policy_changed: Sender<Trigger>,
) {
    let pods = match pods {
        PodScope::Node => watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
        PodScope::Cluster => watcher::Config::default(),
    };
    index::<Pod>(&client, pods, "pods", &state, &policy_changed);
    index::<Service>(
        &client,
        watcher::Config::default(),
        "services",
        &state,
        &policy_changed,
    );
    index::<EndpointSlice>(
        &client,
        watcher::Config::default(),
        "endpointslices",
        &state,
        &policy_changed,
    );

    // The policy kinds (Istio's and Linkerd's, all optional: a cluster without
    // a mesh serves none): kept by key, the whole set handed to the policy on
    // each change.
    for kind in POLICY_KINDS {
        let client = client.clone();
        let s = Arc::clone(&state);
        let tx = policy_changed.clone();
        tokio::spawn(async move {
            // Counted as synced once: when first listed, or when found not served.
            let mut first = true;
            let ar = loop {
                if let Some(ar) = policy_resource(&client, &kind).await {
                    break ar;
                }
                if std::mem::take(&mut first)
                    && let Ok(mut st) = s.write()
                {
                    st.policy_kinds_synced += 1;
                    let ready = st.ready();
                    drop(st);
                    if ready {
                        let _ = tx.send(Trigger::Cluster);
                    }
                }
                tokio::time::sleep(Duration::from_secs(300)).await;
            };
            let api: Api<DynamicObject> = Api::all_with(client, &ar);
            let mut objects: BTreeMap<Key, DynamicObject> = BTreeMap::new();
            let publish = move |objects: &BTreeMap<Key, DynamicObject>, first: &mut bool| {
                let Ok(mut st) = s.write() else { return };
                if std::mem::take(first) {
                    st.policy_kinds_synced += 1;
                }
                (kind.publish)(&mut st, objects);
                drop(st);
                let _ = tx.send(Trigger::Cluster);
            };
            drive(api, watcher::Config::default(), kind.kind, move |c| {
                match c {
                    Change::Apply(o) => {
                        objects.insert(key_of(&o), o);
                    }
                    Change::Delete(o) => {
                        objects.remove(&key_of(&o));
                    }
                    Change::Replace(v) => {
                        objects = v.into_iter().map(|o| (key_of(&o), o)).collect()
                    }
                }
                publish(&objects, &mut first);
            })
            .await;
        });
    }
}

/// One optional policy kind the agent watches.
#[derive(Clone, Copy)]
struct PolicyKind {
    mesh: &'static str,
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// Newest first: the first one served is watched.
    versions: &'static [&'static str],
    /// Hands the whole set to the cluster index.
    publish: fn(&mut ClusterState, &BTreeMap<Key, DynamicObject>),
}

/// The objects of `all` that this agent can read.
fn read<T: DeserializeOwned>(all: &BTreeMap<Key, DynamicObject>, kind: &str) -> Vec<T> {
    all.values().filter_map(|o| convert::<T>(o, kind)).collect()
}

/// The objects of `all` that pass the checks `policy check` makes of a file's
/// (Linkerd's CRD schemas and admission rules): one with errors is ignored, as
/// Linkerd's policy controller ignores what it cannot index. Findings are logged
/// once per version of an object, naming the object and the field.
fn read_checked<T>(all: &BTreeMap<Key, DynamicObject>, kind: &str) -> Vec<T>
where
    T: DeserializeOwned + crate::policy::validate::Checked,
{
    all.values()
        .filter_map(|o| {
            let value = serde_json::to_value(o).ok()?;
            let version = o.metadata.resource_version.clone().unwrap_or_default();
            match crate::policy::load::cluster_object::<T>(kind, &value) {
                Ok((t, warnings)) => {
                    for d in warnings.iter().filter(|d| first_report(d, &version)) {
                        warn!("{d}");
                    }
                    Some(t)
                }
                Err(errors) => {
                    for d in errors.iter().filter(|d| first_report(d, &version)) {
                        warn!(
                            "{d}; the object is ignored, as Linkerd's policy controller ignores it"
                        );
                    }
                    None
                }
            }
        })
        .collect()
}

/// Whether a finding about this version of an object is new: every change of a
/// kind reads all its objects again.
fn first_report(d: &crate::policy::Diagnostic, version: &str) -> bool {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let Ok(mut seen) = SEEN.lock() else {
        return true;
    };
    if seen.len() >= 4096 {
        seen.clear();
    }
    seen.insert(format!("{d}@{version}"))
}

const POLICY_KINDS: [PolicyKind; super::state::POLICY_KINDS as usize] = [
    PolicyKind {
        mesh: "Istio",
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        versions: &["v1", "v1beta1"],
        publish: |st, all| st.set_peer_authentications(read(all, "PeerAuthentication")),
    },
    PolicyKind {
        mesh: "Istio",
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        versions: &["v1", "v1beta1", "v1alpha3"],
        publish: |st, all| st.set_destination_rules(read(all, "DestinationRule")),
    },
    PolicyKind {
        mesh: "Linkerd",
        group: "policy.linkerd.io",
        kind: "Server",
        plural: "servers",
        versions: &["v1beta3", "v1beta2", "v1beta1"],
        publish: |st, all| st.set_servers(read_checked(all, "Server")),
    },
    PolicyKind {
        mesh: "Linkerd",
        group: "policy.linkerd.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        versions: &["v1alpha1"],
        publish: |st, all| st.set_authorization_policies(read_checked(all, "AuthorizationPolicy")),
    },
    PolicyKind {
        mesh: "Linkerd",
        group: "policy.linkerd.io",
        kind: "MeshTLSAuthentication",
        plural: "meshtlsauthentications",
        versions: &["v1alpha1"],
        publish: |st, all| {
            st.set_meshtls_authentications(read_checked(all, "MeshTLSAuthentication"))
        },
    },
    PolicyKind {
        mesh: "Linkerd",
        group: "policy.linkerd.io",
        kind: "NetworkAuthentication",
        plural: "networkauthentications",
        versions: &["v1alpha1"],
        publish: |st, all| {
            st.set_network_authentications(read_checked(all, "NetworkAuthentication"))
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{AuthorizationPolicy, InboundPolicy, MeshTlsAuthentication, Server};

    fn dynamic(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("a DynamicObject")
    }

    /// Linkerd's objects as the API server returns them (managed fields, the
    /// CRD's defaults filled in, a status) read into the policy model.
    #[test]
    fn linkerd_objects_from_the_api_server_are_read() {
        let server = dynamic(serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1beta3",
            "kind": "Server",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080, "accessPolicy": "deny", "proxyProtocol": "unknown"}
        }));
        let s: Server = convert(&server, "Server").expect("Server");
        assert_eq!(s.spec.port.number(), Some(8080));
        assert_eq!(s.access_policy(), InboundPolicy::Deny);
        let ap = dynamic(serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "web"},
                "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "clients"}]
            }
        }));
        let ap: AuthorizationPolicy = convert(&ap, "AuthorizationPolicy").expect("policy");
        assert_eq!(ap.spec.required_authentication_refs.len(), 1);
        let m = dynamic(serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1alpha1",
            "kind": "MeshTLSAuthentication",
            "metadata": {"name": "clients", "namespace": "shop"},
            "spec": {"identityRefs": [{"kind": "ServiceAccount", "name": "cart"}]}
        }));
        let m: MeshTlsAuthentication = convert(&m, "MeshTLSAuthentication").expect("authn");
        assert_eq!(m.spec.identity_refs.map(|r| r.len()), Some(1));
        // What the agent cannot read is skipped, not fatal.
        let bad = dynamic(serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"port": [1]}
        }));
        assert!(convert::<Server>(&bad, "Server").is_none());
    }
}
