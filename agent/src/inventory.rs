//! Who is who, standalone: workloads declared in an `Inventory` and recognised by
//! cgroup path (glob), network namespace, address or process name, with labels so
//! that Istio selectors work as in a cluster; services map names to addresses.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::Serialize;
use tracing::debug;

use crate::{
    kube::SharedState,
    policy::{
        PolicyFiles,
        model::{Location, Resolution},
        parse_net,
    },
};

/// A workload: what Istio calls `source_workload` / `destination_workload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The pod, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Istio's canonical service (`service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name), in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_service: Option<String>,
    /// The container, in a cluster, when the cgroup path names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Port -> name: the pod's named container ports, or the inventory's `ports`.
    #[serde(skip)]
    pub port_names: BTreeMap<u16, String>,
    /// The workload runs a mesh sidecar: in a cluster the pod has Istio's
    /// `sidecar.istio.io/status` annotation or an `istio-proxy` container (also
    /// as a native sidecar init container); standalone, the inventory says
    /// `sidecar: true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
    /// The workload runs a Linkerd proxy: in a cluster a `linkerd-proxy`
    /// container (also as a native sidecar), or the `linkerd.io/proxy-version`
    /// annotation the injector adds, or `linkerd.io/inject: enabled`;
    /// standalone, the inventory's `linkerd:` key.
    #[serde(skip)]
    pub linkerd: Option<LinkerdProxy>,
    /// The Kubernetes service account (`spec.serviceAccountName`, or the
    /// inventory's `serviceAccount`): the workload's Linkerd identity.
    #[serde(skip)]
    pub service_account: Option<String>,
}

/// What a workload's Linkerd proxy was configured with (the pod's annotations
/// and the proxy's environment), for Linkerd's default inbound policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkerdProxy {
    /// `config.linkerd.io/default-inbound-policy` as written (Linkerd ignores a
    /// value it cannot parse).
    pub default_inbound_policy: Option<String>,
    /// `config.linkerd.io/proxy-require-identity-inbound-ports`: inclusive
    /// port ranges (an unparsable list is empty, as in Linkerd).
    pub require_identity_ports: Vec<(u16, u16)>,
    /// `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY` of the proxy container: the
    /// cluster default when the pod was injected.
    pub proxy_default: Option<String>,
}

impl LinkerdProxy {
    /// Whether `port` is one of the require-identity ports.
    pub fn requires_identity(&self, port: u16) -> bool {
        self.require_identity_ports
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }
}

/// A service: name, namespace and its cluster FQDN (or a ServiceEntry host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub fqdn: String,
    /// Headless (`clusterIP: None`, or a ServiceEntry with `resolution: NONE`):
    /// Istio's passthrough cluster.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Outside the mesh (a ServiceEntry's `MESH_EXTERNAL`): no auto-mTLS.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mesh_external: bool,
}

/// What is known about one local end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct EndFacts<'a> {
    pub cgroup: Option<&'a str>,
    pub netns_cookie: Option<u64>,
    pub addr: IpAddr,
    pub comm: Option<&'a str>,
}

struct CompiledWorkload {
    workload: Workload,
    cgroups: Option<GlobSet>,
    netns_cookies: Vec<u64>,
    addresses: Vec<IpNet>,
    processes: Vec<String>,
}

struct CompiledService {
    service: Service,
    addresses: Vec<IpNet>,
    ports: Vec<u16>,
}

/// Who is who: the standalone inventory, compiled for matching, and in a cluster the
/// API server's view (pods by cgroup and address, Services).
#[derive(Default)]
pub struct Inventory {
    workloads: Vec<CompiledWorkload>,
    services: Vec<CompiledService>,
    pub cluster_domain: String,
    cluster: Option<SharedState>,
}

/// The network namespace cookie of a namespace file (`/run/netns/NAME`): what the
/// kernel reports as `netns_cookie`. Enters the namespace in a throw-away thread.
pub fn netns_cookie(path: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd changes only this thread's
            // network namespace; the thread ends right after.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: plain socket creation; closed below.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            const SO_NETNS_COOKIE: libc::c_int = 71;
            // SAFETY: getsockopt into a u64 with its size.
            let ret = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            let err = std::io::Error::last_os_error();
            // SAFETY: closing the socket created above.
            unsafe { libc::close(fd) };
            if ret != 0 { Err(err) } else { Ok(cookie) }
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns probe thread panicked")))
    })
}

fn nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| parse_net(s)).collect()
}

impl Inventory {
    /// Compiles every `Inventory` object of the policy files.
    pub fn from_files(files: &PolicyFiles) -> Self {
        let mut inv = Self {
            cluster_domain: "cluster.local".into(),
            ..Self::default()
        };
        for located in &files.inventories {
            let spec = &located.object.spec;
            if let Some(d) = &spec.cluster_domain {
                inv.cluster_domain = d.clone();
            }
            for w in &spec.workloads {
                let m = &w.workload_match;
                let cgroups = if m.cgroups.is_empty() {
                    None
                } else {
                    let mut b = GlobSetBuilder::new();
                    for g in &m.cgroups {
                        if let Ok(g) = Glob::new(g) {
                            b.add(g);
                        }
                    }
                    b.build().ok()
                };
                let netns_cookies = m
                    .network_namespaces
                    .iter()
                    .filter_map(|n| {
                        let path = if n.contains('/') { n.into() } else { Path::new("/run/netns").join(n) };
                        match netns_cookie(&path) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                debug!(netns = %path.display(), error = %e, "network namespace not resolved");
                                None
                            }
                        }
                    })
                    .collect();
                inv.workloads.push(CompiledWorkload {
                    workload: Workload {
                        name: w.name.clone(),
                        namespace: w.namespace.clone(),
                        labels: w.labels.clone(),
                        pod: None,
                        canonical_service: None,
                        container: None,
                        port_names: w.ports.iter().map(|(n, p)| (*p, n.clone())).collect(),
                        sidecar: w.sidecar,
                        linkerd: w.linkerd.as_ref().map(|l| LinkerdProxy {
                            default_inbound_policy: l
                                .default_inbound_policy
                                .map(|p| p.as_str().to_owned()),
                            require_identity_ports: l
                                .require_identity_inbound_ports
                                .as_deref()
                                .and_then(|p| crate::policy::model::parse_port_ranges(p).ok())
                                .unwrap_or_default(),
                            proxy_default: None,
                        }),
                        service_account: w.service_account.clone(),
                    },
                    cgroups,
                    netns_cookies,
                    addresses: nets(&m.addresses),
                    processes: m.processes.clone(),
                });
            }
            for s in &spec.services {
                inv.services.push(CompiledService {
                    service: Service {
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                        fqdn: String::new(),
                        headless: s.headless,
                        mesh_external: s.mesh_external,
                    },
                    addresses: nets(&s.addresses),
                    ports: s.ports.clone(),
                });
            }
        }
        let domain = inv.cluster_domain.clone();
        for s in &mut inv.services {
            s.service.fqdn = format!("{}.{}.svc.{domain}", s.service.name, s.service.namespace);
        }
        // Istio ServiceEntries: each host is a service of the entry's namespace,
        // found by the entry's addresses (and ports).
        for located in &files.service_entries {
            let se = &located.object;
            let spec = &se.spec;
            let external = spec.location != Some(Location::MeshInternal);
            let headless = spec.resolution.is_none_or(|r| r == Resolution::None);
            for host in &spec.hosts {
                inv.services.push(CompiledService {
                    service: Service {
                        name: host.clone(),
                        namespace: se.metadata.ns().to_owned(),
                        fqdn: host.clone(),
                        headless,
                        mesh_external: external,
                    },
                    addresses: nets(&spec.addresses),
                    ports: spec
                        .ports
                        .iter()
                        .filter_map(|p| u16::try_from(p.number).ok())
                        .collect(),
                });
            }
        }
        inv
    }

    /// Adds the cluster's view; its lookups come first.
    pub fn with_cluster(mut self, cluster: SharedState) -> Self {
        if let Ok(c) = cluster.read() {
            self.cluster_domain.clone_from(&c.cluster_domain);
        }
        self.cluster = Some(cluster);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty() && self.services.is_empty() && self.cluster.is_none()
    }

    /// The workload a local end belongs to: in a cluster its pod (by cgroup), then
    /// the inventory (cgroup, network namespace, address, process name), then a pod
    /// by address, then the node itself.
    ///
    /// A socket in a pod's cgroup whose pod the agent does not know (not listed yet,
    /// or deleted) is not the node's: it is the pod with that address, or unknown.
    pub fn workload_of(&self, end: &EndFacts<'_>) -> Option<Workload> {
        let cluster = self.cluster.as_ref().and_then(|c| c.read().ok());
        let mut in_pod_cgroup = false;
        if let (Some(c), Some(cg)) = (&cluster, end.cgroup) {
            if let Some(w) = c.workload_of_cgroup(cg) {
                return Some(w);
            }
            in_pod_cgroup = crate::kube::cgroup_path::parse(cg).is_some();
        }
        if let Some(w) = self.standalone_workload_of(end) {
            return Some(w.clone());
        }
        let c = cluster?;
        if let Some(pod) = c.pod_by_ip(end.addr) {
            return Some(pod.workload());
        }
        (!in_pod_cgroup).then(|| c.node_workload())
    }

    fn standalone_workload_of(&self, end: &EndFacts<'_>) -> Option<&Workload> {
        if let Some(cg) = end.cgroup
            && let Some(w) = self
                .workloads
                .iter()
                .find(|w| w.cgroups.as_ref().is_some_and(|g| g.is_match(cg)))
        {
            return Some(&w.workload);
        }
        if let Some(cookie) = end.netns_cookie
            && let Some(w) = self
                .workloads
                .iter()
                .find(|w| w.netns_cookies.contains(&cookie))
        {
            return Some(&w.workload);
        }
        if let Some(w) = self.standalone_by_addr(end.addr) {
            return Some(w);
        }
        let comm = end.comm?;
        self.workloads
            .iter()
            .find(|w| w.processes.iter().any(|p| p == comm))
            .map(|w| &w.workload)
    }

    fn standalone_by_addr(&self, addr: IpAddr) -> Option<&Workload> {
        if addr.is_loopback() {
            return None;
        }
        self.workloads
            .iter()
            .find(|w| w.addresses.iter().any(|n| n.contains(&addr)))
            .map(|w| &w.workload)
    }

    /// The workload that owns an address (for ends that are not on this node).
    pub fn workload_by_addr(&self, addr: IpAddr) -> Option<Workload> {
        if let Some(w) = self.standalone_by_addr(addr) {
            return Some(w.clone());
        }
        let c = self.cluster.as_ref()?.read().ok()?;
        c.pod_by_ip(addr).map(state_workload)
    }

    /// The namespace of an in-cluster pod the agent does not watch, from the
    /// EndpointSlices that list its address.
    pub fn endpoint_pod_namespace(&self, addr: IpAddr) -> Option<String> {
        self.cluster
            .as_ref()?
            .read()
            .ok()?
            .endpoint_pod_namespace(addr)
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<Workload> {
        self.workloads
            .iter()
            .map(|w| &w.workload)
            .find(|w| w.namespace == namespace && w.name == name)
            .cloned()
    }

    /// Services whose addresses (and ports, when listed) cover `addr:port`.
    pub fn services_for(&self, addr: IpAddr, port: u16) -> Vec<Service> {
        let mut out: Vec<Service> = self
            .services
            .iter()
            .filter(|s| {
                s.addresses.iter().any(|n| n.contains(&addr))
                    && (s.ports.is_empty() || s.ports.contains(&port))
            })
            .map(|s| s.service.clone())
            .collect();
        if let Some(c) = self.cluster.as_ref().and_then(|c| c.read().ok()) {
            out.extend(c.services_for(addr, port));
        }
        out
    }

    /// A service by name (`name`, `name.namespace` or its FQDN).
    pub fn service_by_host(&self, host: &str, default_ns: &str) -> Option<Service> {
        self.services
            .iter()
            .map(|s| &s.service)
            .find(|s| {
                s.fqdn == host
                    || (host == s.name && s.namespace == default_ns)
                    || host == format!("{}.{}", s.name, s.namespace)
            })
            .cloned()
    }

    /// The first declared address of a workload.
    pub fn workload_address(&self, w: &Workload) -> Option<IpAddr> {
        self.workloads
            .iter()
            .find(|c| &c.workload == w)
            .and_then(|c| c.addresses.first())
            .map(IpNet::addr)
    }

    /// An address of a service, for `policy explain --to service:port`.
    pub fn service_address(&self, svc: &Service) -> Option<IpAddr> {
        self.services
            .iter()
            .find(|s| &s.service == svc)
            .and_then(|s| s.addresses.first())
            .map(IpNet::addr)
    }
}

fn state_workload(p: &crate::kube::state::PodInfo) -> Workload {
    p.workload()
}
