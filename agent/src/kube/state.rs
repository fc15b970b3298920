//! What the API server says, indexed for the pipeline: pods of this node (of every
//! node with `--remote-pods`) by UID and IP, Services by cluster IP, EndpointSlice addresses, and Istio's policy objects.
//! Written by the watchers, read on every finished connection.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service as K8sService},
    discovery::v1::EndpointSlice,
};

use super::cgroup_path;
use crate::{
    inventory::{LinkerdProxy, Service, Workload},
    policy::model::{
        AuthorizationPolicy, DestinationRule, MeshTlsAuthentication, NetworkAuthentication,
        PeerAuthentication, Server,
    },
};

/// The policy kinds watched (Istio's two, Linkerd's four): each counts as synced
/// once listed, or once found not served by the cluster.
pub const POLICY_KINDS: u8 = 6;

/// A pod the agent watches (of this node, or of any node with `--remote-pods`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The workload name, from owner references (like Istio's `source_workload`).
    pub workload: String,
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
    /// Container ID (64 hex, without the `containerd://` scheme) -> container name.
    pub containers: HashMap<String, String>,
    /// Named container ports: port -> name.
    pub port_names: BTreeMap<u16, String>,
    /// Istio injected a sidecar: the `sidecar.istio.io/status` annotation, or a
    /// container (or native sidecar init container) named `istio-proxy`.
    pub sidecar: bool,
    /// The pod runs a Linkerd proxy, and what it was configured with.
    pub linkerd: Option<LinkerdProxy>,
    /// `spec.serviceAccountName` (`default` when absent).
    pub service_account: String,
}

impl PodInfo {
    /// Istio's canonical service name for the pod.
    pub fn canonical_service(&self) -> String {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| self.labels.get(*k))
        .cloned()
        .unwrap_or_else(|| self.workload.clone())
    }

    /// The pod as a workload, with the container a cgroup named, when known.
    pub fn workload_in(&self, container_id: Option<&str>) -> Workload {
        let mut w = self.workload();
        w.container = container_id.and_then(|id| self.containers.get(id)).cloned();
        w
    }

    pub fn workload(&self) -> Workload {
        Workload {
            name: self.workload.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            pod: Some(self.name.clone()),
            canonical_service: Some(self.canonical_service()),
            container: None,
            port_names: self.port_names.clone(),
            sidecar: self.sidecar,
            linkerd: self.linkerd.clone(),
            service_account: Some(self.service_account.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceInfo {
    name: String,
    namespace: String,
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
    /// `clusterIP: None`.
    headless: bool,
}

/// (namespace, name) of an object.
type NsName = (String, String);

/// What an EndpointSlice says: which Service, which addresses, which ports (all
/// when it lists none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    service: NsName,
    addrs: Vec<IpAddr>,
    ports: Vec<u16>,
    /// Addresses whose endpoint is a pod (`targetRef.kind: Pod`), with its
    /// namespace: in-cluster ends, unlike a selector-less Service's endpoints.
    pods: Vec<(IpAddr, String)>,
}

/// The cluster as this node's agent sees it.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub node_name: String,
    pub cluster_domain: String,
    pods: HashMap<String, PodInfo>,
    pod_ips: HashMap<IpAddr, String>,
    services: HashMap<(String, String), ServiceInfo>,
    service_ips: HashMap<IpAddr, (String, String)>,
    /// slice (namespace, name) -> its service, endpoint addresses and ports
    slices: HashMap<NsName, Slice>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub destination_rules: Vec<DestinationRule>,
    /// Linkerd's policy objects.
    pub servers: Vec<Server>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub meshtls_authentications: Vec<MeshTlsAuthentication>,
    pub network_authentications: Vec<NetworkAuthentication>,
    /// Bumped on every change of the policy objects.
    pub policy_generation: u64,
    /// The first list of pods is in.
    pub pods_synced: bool,
    /// Policy kinds whose first list is in (or that the cluster does not serve),
    /// out of [`POLICY_KINDS`].
    pub policy_kinds_synced: u8,
}

/// Istio's workload name for a pod: the controller that owns it, with the
/// ReplicaSet hash (Deployments) and the CronJob timestamp (Jobs) taken off; the pod
/// name for bare pods.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return name;
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => deployment.to_owned(),
                None => owner.name.clone(),
            }
        }
        "Job" => match owner.name.rsplit_once('-') {
            // CronJobs name their Jobs `<cronjob>-<scheduled minute>`.
            Some((cron, stamp))
                if stamp.len() >= 8 && stamp.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cron.to_owned()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}

/// The Linkerd proxy of a pod: a `linkerd-proxy` container (or native sidecar
/// init container), the `linkerd.io/proxy-version` annotation the injector adds,
/// or `linkerd.io/inject: enabled`; with the annotations and proxy environment
/// that decide its default inbound policy (Linkerd's `workload::Settings`).
fn linkerd_proxy(pod: &Pod) -> Option<LinkerdProxy> {
    use crate::policy::model::{
        DEFAULT_INBOUND_POLICY_ANNOTATION, REQUIRE_IDENTITY_ANNOTATION, parse_port_ranges,
    };
    let ann = pod.metadata.annotations.as_ref();
    let proxy = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == "linkerd-proxy")
    });
    let annotated = ann.is_some_and(|a| {
        a.contains_key("linkerd.io/proxy-version")
            || a.get("linkerd.io/inject").is_some_and(|v| v == "enabled")
    });
    if proxy.is_none() && !annotated {
        return None;
    }
    let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
    Some(LinkerdProxy {
        default_inbound_policy: get(DEFAULT_INBOUND_POLICY_ANNOTATION),
        // An unparsable list counts as none, as in Linkerd ("Invalid ports list").
        require_identity_ports: get(REQUIRE_IDENTITY_ANNOTATION)
            .and_then(|p| parse_port_ranges(&p).ok())
            .unwrap_or_default(),
        proxy_default: proxy
            .and_then(|c| c.env.as_ref())
            .and_then(|env| {
                env.iter()
                    .find(|e| e.name == "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY")
            })
            .and_then(|e| e.value.clone()),
    })
}

fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|p| p.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|i| i.parse().ok())
    {
        ips.push(ip);
    }
    // A finished pod's IP goes to the next pod: it is no longer its own.
    if status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        ips.clear();
    }
    let spec = pod.spec.as_ref();
    let sidecar = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("sidecar.istio.io/status"))
        || spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == "istio-proxy")
        });
    let linkerd = linkerd_proxy(pod);
    Some(PodInfo {
        sidecar,
        linkerd,
        service_account: spec
            .and_then(|s| {
                s.service_account_name
                    .clone()
                    .or_else(|| s.service_account.clone())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        uid,
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: meta.labels.clone().unwrap_or_default(),
        workload: workload_name(pod),
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        ips,
        port_names: pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .filter_map(|p| Some((u16::try_from(p.container_port).ok()?, p.name.clone()?)))
            .collect(),
        containers: status
            .into_iter()
            .flat_map(|s| {
                let regular = s.container_statuses.iter().flatten();
                let init = s.init_container_statuses.iter().flatten();
                let ephemeral = s.ephemeral_container_statuses.iter().flatten();
                regular.chain(init).chain(ephemeral)
            })
            .filter_map(|c| {
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`
                let id = c.container_id.as_deref()?.rsplit_once("://")?.1;
                Some((id.to_owned(), c.name.clone()))
            })
            .collect(),
    })
}

impl ClusterState {
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_owned(),
            cluster_domain: "cluster.local".into(),
            ..Self::default()
        }
    }

    fn index_pod(&mut self, info: PodInfo) {
        if !info.host_network {
            for ip in &info.ips {
                self.pod_ips.insert(*ip, info.uid.clone());
            }
        }
        self.pods.insert(info.uid.clone(), info);
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(info) = pod_info(pod) else { return };
        self.remove_pod_uid(&info.uid);
        self.index_pod(info);
    }

    fn remove_pod_uid(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for ip in &old.ips {
                if self.pod_ips.get(ip).is_some_and(|u| u == uid) {
                    self.pod_ips.remove(ip);
                }
            }
        }
    }

    pub fn delete_pod(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.remove_pod_uid(uid);
        }
    }

    /// Replaces every pod (after a re-list).
    pub fn replace_pods(&mut self, pods: &[Pod]) {
        self.pods_synced = true;
        self.pods.clear();
        self.pod_ips.clear();
        for p in pods {
            if let Some(info) = pod_info(p) {
                self.index_pod(info);
            }
        }
    }

    fn service_info(svc: &K8sService) -> Option<ServiceInfo> {
        let spec = svc.spec.as_ref()?;
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        Some(ServiceInfo {
            headless: spec.cluster_ip.as_deref() == Some("None"),
            name: svc.metadata.name.clone()?,
            namespace: svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            ips,
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| u16::try_from(p.port).ok())
                .collect(),
        })
    }

    pub fn apply_service(&mut self, svc: &K8sService) {
        let Some(info) = Self::service_info(svc) else {
            return;
        };
        let key = (info.namespace.clone(), info.name.clone());
        self.remove_service_key(&key);
        for ip in &info.ips {
            self.service_ips.insert(*ip, key.clone());
        }
        self.services.insert(key, info);
    }

    fn remove_service_key(&mut self, key: &(String, String)) {
        if let Some(old) = self.services.remove(key) {
            for ip in &old.ips {
                if self.service_ips.get(ip) == Some(key) {
                    self.service_ips.remove(ip);
                }
            }
        }
    }

    pub fn delete_service(&mut self, svc: &K8sService) {
        if let Some(name) = &svc.metadata.name {
            let key = (
                svc.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name.clone(),
            );
            self.remove_service_key(&key);
        }
    }

    pub fn replace_services(&mut self, svcs: &[K8sService]) {
        self.services.clear();
        self.service_ips.clear();
        for s in svcs {
            self.apply_service(s);
        }
    }

    fn slice_entry(es: &EndpointSlice) -> Option<(NsName, Slice)> {
        let ns = es
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let svc = es
            .metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?
            .clone();
        let addrs = es
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse().ok())
            .collect();
        let ports = es
            .ports
            .iter()
            .flatten()
            .filter_map(|p| u16::try_from(p.port?).ok())
            .collect();
        let pods = es
            .endpoints
            .iter()
            .filter_map(|e| {
                let t = e
                    .target_ref
                    .as_ref()
                    .filter(|t| t.kind.as_deref() == Some("Pod"))?;
                let pod_ns = t.namespace.clone().unwrap_or_else(|| ns.clone());
                Some(
                    e.addresses
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .map(move |a| (a, pod_ns.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten()
            .collect();
        Some((
            (ns.clone(), es.metadata.name.clone()?),
            Slice {
                service: (ns, svc),
                addrs,
                ports,
                pods,
            },
        ))
    }

    pub fn apply_slice(&mut self, es: &EndpointSlice) {
        if let Some((k, v)) = Self::slice_entry(es) {
            self.slices.insert(k, v);
        }
    }

    pub fn delete_slice(&mut self, es: &EndpointSlice) {
        if let Some(name) = &es.metadata.name {
            self.slices.remove(&(
                es.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name.clone(),
            ));
        }
    }

    pub fn replace_slices(&mut self, slices: &[EndpointSlice]) {
        self.slices.clear();
        for s in slices {
            self.apply_slice(s);
        }
    }

    pub fn set_peer_authentications(&mut self, v: Vec<PeerAuthentication>) {
        self.peer_authentications = v;
        self.policy_generation += 1;
    }

    pub fn set_destination_rules(&mut self, v: Vec<DestinationRule>) {
        self.destination_rules = v;
        self.policy_generation += 1;
    }

    pub fn set_servers(&mut self, v: Vec<Server>) {
        self.servers = v;
        self.policy_generation += 1;
    }

    pub fn set_authorization_policies(&mut self, v: Vec<AuthorizationPolicy>) {
        self.authorization_policies = v;
        self.policy_generation += 1;
    }

    pub fn set_meshtls_authentications(&mut self, v: Vec<MeshTlsAuthentication>) {
        self.meshtls_authentications = v;
        self.policy_generation += 1;
    }

    pub fn set_network_authentications(&mut self, v: Vec<NetworkAuthentication>) {
        self.network_authentications = v;
        self.policy_generation += 1;
    }

    /// The pods and every policy kind (Istio's and Linkerd's) have been listed
    /// once.
    pub fn ready(&self) -> bool {
        self.pods_synced && self.policy_kinds_synced >= POLICY_KINDS
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The pod a cgroup path belongs to, as a workload with its container.
    pub fn workload_of_cgroup(&self, path: &str) -> Option<Workload> {
        let pc = cgroup_path::parse(path)?;
        let pod = self.pods.get(&pc.pod_uid)?;
        Some(pod.workload_in(pc.container_id.as_deref()))
    }

    /// The pod that owns an address (host-network pods are not indexed by address).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pod_ips.get(&ip).and_then(|uid| self.pods.get(uid))
    }

    fn service(&self, key: &(String, String)) -> Service {
        Service {
            name: key.1.clone(),
            namespace: key.0.clone(),
            fqdn: format!("{}.{}.svc.{}", key.1, key.0, self.cluster_domain),
            headless: self.services.get(key).is_some_and(|s| s.headless),
            mesh_external: false,
        }
    }

    /// Services an address and port belong to: by cluster IP (and service port), or
    /// as an endpoint of the service (a client that dials a pod IP directly).
    pub fn services_for(&self, ip: IpAddr, port: u16) -> Vec<Service> {
        if let Some(key) = self.service_ips.get(&ip) {
            let ok = self
                .services
                .get(key)
                .is_none_or(|s| s.ports.is_empty() || s.ports.contains(&port));
            if ok {
                return vec![self.service(key)];
            }
        }
        let mut out: Vec<Service> = self
            .slices
            .values()
            .filter(|s| s.addrs.contains(&ip) && (s.ports.is_empty() || s.ports.contains(&port)))
            .map(|s| self.service(&s.service))
            .collect();
        out.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        out.dedup();
        out
    }

    /// The namespace of the pod behind an EndpointSlice address: an in-cluster end
    /// the agent does not watch (a pod on another node).
    pub fn endpoint_pod_namespace(&self, ip: IpAddr) -> Option<String> {
        self.slices
            .values()
            .flat_map(|s| s.pods.iter())
            .find(|(a, _)| *a == ip)
            .map(|(_, ns)| ns.clone())
    }

    /// The node itself, for local sockets that belong to no pod.
    pub fn node_workload(&self) -> Workload {
        Workload {
            name: self.node_name.clone(),
            namespace: "node".into(),
            labels: BTreeMap::new(),
            pod: None,
            canonical_service: None,
            container: None,
            port_names: BTreeMap::new(),
            sidecar: false,
            linkerd: None,
            service_account: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod(name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> Pod {
        let mut labels = BTreeMap::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".to_owned(), h.to_owned());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some("4e2b8c1a-9f3d-4b7e-a6c5-1d2e3f4a5b6c".into()),
                labels: Some(labels),
                owner_references: owner.map(|(kind, n)| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: kind.into(),
                        name: n.into(),
                        uid: "x".into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn workload_names_follow_istio() {
        assert_eq!(
            workload_name(&pod(
                "cart-7d9f8b6c5-x2k4p",
                Some(("ReplicaSet", "cart-7d9f8b6c5")),
                Some("7d9f8b6c5")
            )),
            "cart"
        );
        assert_eq!(
            workload_name(&pod("db-0", Some(("StatefulSet", "db")), None)),
            "db"
        );
        assert_eq!(
            workload_name(&pod("agent-abcde", Some(("DaemonSet", "agent")), None)),
            "agent"
        );
        assert_eq!(
            workload_name(&pod(
                "report-28391520-abcde",
                Some(("Job", "report-28391520")),
                None
            )),
            "report"
        );
        assert_eq!(
            workload_name(&pod("migrate-xyz", Some(("Job", "migrate")), None)),
            "migrate"
        );
        assert_eq!(workload_name(&pod("debug", None, None)), "debug");
        // A ReplicaSet without the hash label is its own workload.
        assert_eq!(
            workload_name(&pod("rs-abc", Some(("ReplicaSet", "rs")), None)),
            "rs"
        );
    }

    #[test]
    fn canonical_service_follows_istio_label_order() {
        let mut p = pod(
            "cart-7d9f8b6c5-x2k4p",
            Some(("ReplicaSet", "cart-7d9f8b6c5")),
            Some("7d9f8b6c5"),
        );
        let info = |p: &Pod| pod_info(p).unwrap().canonical_service();
        assert_eq!(info(&p), "cart");
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert("app".into(), "cart-app".into());
        assert_eq!(info(&p), "cart-app");
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert("app.kubernetes.io/name".into(), "cart-k8s".into());
        assert_eq!(info(&p), "cart-k8s");
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert("service.istio.io/canonical-name".into(), "checkout".into());
        assert_eq!(info(&p), "checkout");
    }

    #[test]
    fn sidecars_are_seen_by_annotation_container_or_native_sidecar() {
        let base = || pod("cart-1", None, None);
        assert!(!pod_info(&base()).unwrap().sidecar);
        let mut p = base();
        p.metadata.annotations =
            Some([("sidecar.istio.io/status".to_owned(), "{}".to_owned())].into());
        assert!(pod_info(&p).unwrap().sidecar, "annotation");
        for native in [false, true] {
            let mut p = base();
            let c: k8s_openapi::api::core::v1::Container =
                serde_json::from_value(serde_json::json!({"name": "istio-proxy"})).unwrap();
            let mut spec = k8s_openapi::api::core::v1::PodSpec::default();
            if native {
                spec.init_containers = Some(vec![c]);
            } else {
                spec.containers = vec![c];
            }
            p.spec = Some(spec);
            let info = pod_info(&p).unwrap();
            assert!(info.sidecar, "istio-proxy container (native: {native})");
            assert!(info.workload().sidecar);
        }
    }

    /// A pod injected by Linkerd, as the injector leaves it: the
    /// `linkerd-proxy` container with its default-policy environment, the
    /// annotations (the namespace's copied onto the pod), the service account.
    #[test]
    fn linkerd_proxies_are_seen_with_their_policy_annotations() {
        let base = || pod("cart-1", None, None);
        let info = pod_info(&base()).unwrap();
        assert!(info.linkerd.is_none());
        assert_eq!(info.service_account, "default");
        assert_eq!(info.workload().service_account.as_deref(), Some("default"));

        let mut p = base();
        p.metadata.annotations = Some(
            [
                ("linkerd.io/proxy-version", "edge-25.1.1"),
                (
                    "config.linkerd.io/default-inbound-policy",
                    "cluster-authenticated",
                ),
                (
                    "config.linkerd.io/proxy-require-identity-inbound-ports",
                    "8080,9000-9010",
                ),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        p.spec = Some(
            serde_json::from_value(serde_json::json!({
                "serviceAccountName": "cart",
                "containers": [{"name": "app"}],
                "initContainers": [{"name": "linkerd-proxy", "env": [
                    {"name": "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "value": "all-unauthenticated"}
                ]}]
            }))
            .unwrap(),
        );
        let info = pod_info(&p).unwrap();
        let l = info.linkerd.clone().expect("a Linkerd proxy");
        assert!(!info.sidecar, "not Istio's");
        assert_eq!(info.service_account, "cart");
        assert_eq!(
            l.default_inbound_policy.as_deref(),
            Some("cluster-authenticated")
        );
        assert_eq!(l.proxy_default.as_deref(), Some("all-unauthenticated"));
        assert!(l.requires_identity(8080) && l.requires_identity(9005));
        assert!(!l.requires_identity(9011));
        assert_eq!(info.workload().linkerd, Some(l));

        // `linkerd.io/inject: enabled` alone (not yet injected, or injected
        // without the version annotation); a bad ports list counts as none.
        let mut p = base();
        p.metadata.annotations = Some(
            [
                ("linkerd.io/inject", "enabled"),
                (
                    "config.linkerd.io/proxy-require-identity-inbound-ports",
                    "http",
                ),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        let l = pod_info(&p).unwrap().linkerd.expect("inject: enabled");
        assert!(l.require_identity_ports.is_empty());
        let mut p = base();
        p.metadata.annotations =
            Some([("linkerd.io/inject".to_owned(), "disabled".to_owned())].into());
        assert!(pod_info(&p).unwrap().linkerd.is_none());
    }

    #[test]
    fn services_by_cluster_ip_and_port_and_by_endpoint_address_and_port() {
        let svc: K8sService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}]}
        }))
        .expect("service");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cart-x7f2k", "namespace": "shop", "labels": {"kubernetes.io/service-name": "cart"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.7"], "targetRef": {"kind": "Pod", "name": "cart-1", "namespace": "shop"}},
                {"addresses": ["10.244.1.8"]}
            ],
            "ports": [{"name": "http", "port": 8080}]
        }))
        .expect("slice");
        let mut st = ClusterState::new("n");
        st.apply_service(&svc);
        st.apply_slice(&slice);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let names = |v: Vec<Service>| v.into_iter().map(|s| s.fqdn).collect::<Vec<_>>();
        assert_eq!(
            names(st.services_for(ip("10.96.0.10"), 80)),
            ["cart.shop.svc.cluster.local"]
        );
        assert!(
            st.services_for(ip("10.96.0.10"), 9090).is_empty(),
            "not a port of the service"
        );
        assert_eq!(
            names(st.services_for(ip("10.244.1.7"), 8080)),
            ["cart.shop.svc.cluster.local"]
        );
        assert!(
            st.services_for(ip("10.244.1.7"), 9090).is_empty(),
            "a pod's metrics port is not the service's"
        );
        assert_eq!(
            st.endpoint_pod_namespace(ip("10.244.1.7")).as_deref(),
            Some("shop")
        );
        assert_eq!(
            st.endpoint_pod_namespace(ip("10.244.1.8")),
            None,
            "not a pod"
        );
        st.delete_slice(&slice);
        assert!(
            st.services_for(ip("10.244.1.7"), 8080).is_empty(),
            "slice deleted"
        );
        st.delete_service(&svc);
        assert!(
            st.services_for(ip("10.96.0.10"), 80).is_empty(),
            "service deleted"
        );
    }
}
