//! A meshed node in network namespaces: pods on one bridge, each with its own
//! cgroups, the iptables rules istio-iptables writes (tests/mesh/istio-iptables.sh)
//! and the Envoy stand-in (tests/mesh/sidecar.py), with SPIFFE certificates from
//! one mesh CA. Everything is removed by the guards, processes first.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    net::{Cgroup, CgroupTree, Netns},
    peers::wait_listening,
    proc::{Child, Spawn},
    sh,
};

fn mesh_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh")
}

/// The mesh CA and one certificate per workload (SPIFFE URI SAN).
pub struct MeshPki {
    dir: PathBuf,
}

impl MeshPki {
    pub fn generate(dir: &Path, workloads: &[&str]) -> Self {
        let run = |args: &[&str]| {
            Spawn::new("openssl")
                .args(args)
                .current_dir(dir)
                .run_ok(Duration::from_secs(30));
        };
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/CN=test mesh CA",
            "-out",
            "ca.pem",
        ]);
        for w in workloads {
            let key = format!("{w}.key");
            let csr = format!("{w}.csr");
            let ext = format!("{w}.ext");
            let pem = format!("{w}.pem");
            run(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ]);
            run(&[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={w}"),
                "-out",
                &csr,
            ]);
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=URI:spiffe://cluster.local/ns/default/sa/{w}\n"),
            )
            .expect("write ext");
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]);
        }
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, w: &str) -> PathBuf {
        self.dir.join(format!("{w}.pem"))
    }

    pub fn key(&self, w: &str) -> PathBuf {
        self.dir.join(format!("{w}.key"))
    }
}

/// A record's field at `path` as text: strings as they are, null as empty, other
/// values in JSON.
pub fn field(r: &crate::Record, path: &[&str]) -> String {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    match v {
        crate::Record::String(x) => x.clone(),
        crate::Record::Null => String::new(),
        other => other.to_string(),
    }
}

/// The sum of a metric's samples in a Prometheus text answer, over the series
/// that carry every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// How a pod is wired.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    /// With the sidecar's rules and proxy.
    pub sidecar: bool,
    /// The sidecar is Linkerd's proxy (linkerd-iptables.sh, 4140/4143, uid 2102)
    /// rather than Istio's Envoy. A route's host is then the server's identity
    /// (its SNI), and a TCP route uses Linkerd's transport header to 4143.
    pub linkerd: bool,
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`.
    pub exclude_outbound: Vec<u16>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts`.
    pub exclude_inbound: Vec<u16>,
    /// The sidecar's inbound mode (`STRICT`, `PERMISSIVE`) and per-port modes.
    pub inbound_mode: String,
    pub inbound_ports: Vec<(u16, String)>,
    /// Outbound routes: (destination, port, `ISTIO_MUTUAL`/`DISABLE`, HTTP, SNI host).
    pub routes: Vec<(IpAddr, u16, String, bool, String)>,
}

/// One pod: its network namespace on the node's bridge, its cgroups (`app` and,
/// with a sidecar, `istio-proxy`), and what runs in it.
pub struct Pod {
    // Dropped first: processes, then cgroups, then the namespace.
    children: Vec<Child>,
    app: Cgroup,
    proxy: Option<Cgroup>,
    pub ns: Netns,
    pub ip: IpAddr,
    pub spec: PodSpec,
}

impl Pod {
    pub fn app_cgroup(&self) -> &Cgroup {
        &self.app
    }

    /// Runs `tests/mesh/app.py` (HTTP/1.1 keep-alive) on `ports` in the app cgroup.
    pub fn start_app(&mut self, ports: &[u16]) {
        let mut args = vec![
            mesh_dir().join("app.py").display().to_string(),
            self.spec.name.clone(),
            "0.0.0.0".to_owned(),
        ];
        args.extend(ports.iter().map(u16::to_string));
        let child = Spawn::new("/usr/bin/python3")
            .args(&args)
            .netns(&self.ns)
            .cgroup(self.app_cgroup())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.children.push(child);
        for p in ports {
            wait_listening(Some(&self.ns), *p);
        }
    }

    /// Runs a client in the app cgroup to completion; returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        Spawn::new(program)
            .args(args)
            .netns(&self.ns)
            .cgroup(self.app_cgroup())
            .run(Duration::from_secs(20))
    }

    /// `curl` an HTTP URL from the app, plain HTTP/1.1; returns the body (empty when
    /// the server refused).
    pub fn curl(&self, url: &str) -> String {
        let out = self.run(
            "curl",
            &["-sS", "--max-time", "5", "--noproxy", "*", "--http1.1", url],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The same, as another user (uid/gid) in the app cgroup.
    pub fn curl_as(&self, uid: u32, url: &str) -> String {
        let ids = uid.to_string();
        let out = self.run(
            "setpriv",
            &[
                "--reuid",
                &ids,
                "--regid",
                &ids,
                "--clear-groups",
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--noproxy",
                "*",
                "--http1.1",
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A node: a bridge in its own namespace (with an address of its own, like the
/// kubelet's) and pods on it.
pub struct MeshNode {
    // Pods go before their parent cgroups and the node namespace that holds their
    // veths' peers; the ztunnel stand-in before the pods whose namespaces hold its
    // sockets, its own namespace and cgroup after them.
    ztunnel: Vec<Child>,
    pub pods: Vec<Pod>,
    zt: Option<(Cgroup, Netns)>,
    _parents: CgroupTree,
    pub node: Netns,
    pub net: u8,
}

impl MeshNode {
    /// The node's own address on the bridge (the kubelet's, for probes).
    pub fn node_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 254))
    }

    /// Creates the node and its pods: pod `i` is `10.213.<net>.<i + 1>`.
    pub fn new(tag: &str, net: u8, specs: Vec<PodSpec>, pki: &MeshPki, work: &Path) -> Self {
        let node = Netns::new(&format!("mtlsa-{tag}-node"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("10.213.{net}.254/24"), "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        let parents: Vec<String> = specs.iter().map(|s| format!("{tag}/{}", s.name)).collect();
        let parents = CgroupTree::new(&parents.iter().map(String::as_str).collect::<Vec<_>>());
        let mut pods = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 213, net, i as u8 + 1));
            let ns = Netns::new(&format!("mtlsa-{tag}-{}", spec.name));
            let (pod_end, node_end) = (format!("mtlsa{net}p{i}"), format!("mtlsa{net}n{i}"));
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &pod_end])
                .output();
            sh(
                "ip",
                &[
                    "link", "add", &pod_end, "type", "veth", "peer", "name", &node_end,
                ],
            );
            sh("ip", &["link", "set", &pod_end, "netns", ns.name()]);
            sh("ip", &["link", "set", &node_end, "netns", node.name()]);
            node.ip(&["link", "set", &node_end, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &pod_end]);
            ns.ip(&["link", "set", &pod_end, "up"]);
            let app = Cgroup::new(&format!("{tag}/{}/app", spec.name));
            let container = if spec.linkerd {
                "linkerd-proxy"
            } else {
                "istio-proxy"
            };
            let proxy = spec
                .sidecar
                .then(|| Cgroup::new(&format!("{tag}/{}/{container}", spec.name)));
            let mut pod = Pod {
                children: Vec::new(),
                app,
                proxy,
                ns,
                ip,
                spec,
            };
            if pod.spec.sidecar {
                start_sidecar(&mut pod, pki, work);
            }
            pods.push(pod);
        }
        Self {
            ztunnel: Vec::new(),
            pods,
            zt: None,
            _parents: parents,
            node,
            net,
        }
    }

    /// Ends every process of every pod (proxies close their pooled connections
    /// while the network is still there), keeping the namespaces and cgroups.
    pub fn stop_processes(&mut self) {
        self.ztunnel.clear();
        for p in &mut self.pods {
            p.children.clear();
        }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `curl` from the node's own namespace (the kubelet's view).
    pub fn curl_from_node(&self, url: &str) -> String {
        let out = Spawn::new("curl")
            .args(["-sS", "--max-time", "5", "--noproxy", "*", url])
            .netns(&self.node)
            .run(Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A service address ztunnel knows (a Service's ClusterIP) and the pods behind it.
#[derive(Debug, Clone)]
pub struct AmbientService {
    pub vip: IpAddr,
    /// Pod names; ztunnel sends to the first.
    pub endpoints: Vec<String>,
    /// The waypoint pod (`istio.io/use-waypoint`) the service's traffic goes
    /// through, started with [`MeshNode::start_waypoint`].
    pub waypoint: Option<String>,
}

/// How an ambient pod is served by ztunnel.
#[derive(Debug, Clone)]
pub struct AmbientPod {
    pub name: String,
    /// Enrolled (`istio.io/dataplane-mode: ambient`): istio-cni's in-pod rules and
    /// ztunnel's sockets in its network namespace.
    pub enrolled: bool,
    /// ztunnel's inbound policy for plaintext: `STRICT` or `PERMISSIVE`.
    pub mode: String,
}

impl MeshNode {
    /// Enrolls pods in ambient: istio-cni's in-pod rules (tests/mesh/ambient-iptables.sh,
    /// a route back to the kubelet's SNAT address) and one ztunnel stand-in
    /// (tests/mesh/ztunnel.py) in a namespace and cgroup of its own (`<tag>/ztunnel`),
    /// with sockets in every enrolled pod; the node SNATs its own connections to
    /// enrolled pods to 169.254.7.127, as istio-cni's host rule does for the
    /// kubelet's probes.
    pub fn start_ztunnel(&mut self, tag: &str, pods: &[AmbientPod], pki: &MeshPki, work: &Path) {
        self.start_ztunnel_with(tag, pods, &[], &[], pki, work);
    }

    /// ztunnel's own address on the bridge (its pod's): `10.213.<net>.200`.
    pub fn ztunnel_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 200))
    }

    /// Runs `program` in ztunnel's own network namespace (not in its cgroup), to
    /// completion.
    pub fn run_in_ztunnel(&self, program: &str, args: &[&str]) -> std::process::Output {
        let (_, ns) = self.zt.as_ref().expect("ztunnel started");
        Spawn::new(program)
            .args(args)
            .netns(ns)
            .run(Duration::from_secs(20))
    }

    /// [`Self::start_ztunnel`] with service addresses (a waypoint's, or pods
    /// behind a ClusterIP) and the names its DNS proxy answers (name, address).
    /// ztunnel's own namespace gets an address on the bridge
    /// ([`Self::ztunnel_ip`]), where its 15020 and 15021 are reachable.
    pub fn start_ztunnel_with(
        &mut self,
        tag: &str,
        pods: &[AmbientPod],
        services: &[AmbientService],
        names: &[(&str, IpAddr)],
        pki: &MeshPki,
        work: &Path,
    ) {
        let mut entries = Vec::new();
        for spec in pods.iter().filter(|p| p.enrolled) {
            let pod = self.pod(&spec.name);
            let args = [
                "netns",
                "exec",
                pod.ns.name(),
                "sh",
                &mesh_dir().join("ambient-iptables.sh").display().to_string(),
            ]
            .map(str::to_owned);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            sh("ip", &refs);
            pod.ns.ip(&[
                "route",
                "add",
                "169.254.7.127/32",
                "via",
                &self.node_ip().to_string(),
            ]);
            let node_args = [
                "netns",
                "exec",
                self.node.name(),
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-p",
                "tcp",
                "-d",
                &pod.ip.to_string(),
                "-m",
                "owner",
                "--socket-exists",
                "-j",
                "SNAT",
                "--to-source",
                "169.254.7.127",
            ]
            .map(str::to_owned);
            let refs: Vec<&str> = node_args.iter().map(String::as_str).collect();
            sh("ip", &refs);
            entries.push(serde_json::json!({
                "name": spec.name,
                "ip": pod.ip.to_string(),
                "netns": pod.ns.path(),
                "identity": format!("spiffe://cluster.local/ns/default/sa/{}", spec.name),
                "cert": pki.cert(&spec.name),
                "key": pki.key(&spec.name),
                "mode": spec.mode,
            }));
        }
        let services: Vec<serde_json::Value> = services
            .iter()
            .map(|svc| {
                let waypoint = svc.waypoint.as_ref().map(|w| {
                    let pod = self.pod(w);
                    serde_json::json!({
                        "name": w,
                        "ip": pod.ip.to_string(),
                        "identity": format!("spiffe://cluster.local/ns/default/sa/{w}"),
                    })
                });
                serde_json::json!({
                    "vip": svc.vip.to_string(),
                    "endpoints": svc.endpoints.iter().map(|e| self.pod(e).ip.to_string()).collect::<Vec<_>>(),
                    "waypoint": waypoint,
                })
            })
            .collect();
        let dns: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), serde_json::Value::from(ip.to_string())))
            .collect();
        let log = work.join("ztunnel.log");
        let config = serde_json::json!({
            "ca": pki.ca(), "log": log, "pods": entries, "services": services, "dns": dns,
        });
        let path = work.join("ztunnel.json");
        std::fs::write(&path, config.to_string()).expect("ztunnel config");
        let ns = Netns::new(&format!("mtlsa-{tag}-zt"));
        let (zt_end, node_end) = (
            format!("mtlsa{}zp", self.net),
            format!("mtlsa{}zn", self.net),
        );
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &zt_end])
            .output();
        sh(
            "ip",
            &[
                "link", "add", &zt_end, "type", "veth", "peer", "name", &node_end,
            ],
        );
        sh("ip", &["link", "set", &zt_end, "netns", ns.name()]);
        sh("ip", &["link", "set", &node_end, "netns", self.node.name()]);
        self.node
            .ip(&["link", "set", &node_end, "master", "br0", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", self.ztunnel_ip()),
            "dev",
            &zt_end,
        ]);
        ns.ip(&["link", "set", &zt_end, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        let cg = Cgroup::new(&format!("{tag}/ztunnel"));
        let child = Spawn::new("/usr/bin/python3")
            .arg(mesh_dir().join("ztunnel.py"))
            .arg(&path)
            .netns(&ns)
            .cgroup(&cg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.ztunnel.push(child);
        self.zt = Some((cg, ns));
        for spec in pods.iter().filter(|p| p.enrolled) {
            let pod = self.pod(&spec.name);
            for p in [15001, 15006, 15008, 15053] {
                wait_listening(Some(&pod.ns), p);
            }
        }
        let (_, ns) = self.zt.as_ref().expect("ztunnel namespace");
        for p in [15000, 15020, 15021] {
            wait_listening(Some(ns), p);
        }
    }

    /// Runs a waypoint (tests/mesh/waypoint.py, process name `envoy`) in pod
    /// `name`, which is not enrolled, with its own certificate (`pki.cert(name)`,
    /// `spiffe://cluster.local/ns/default/sa/<name>`). `routes` maps a service
    /// address and port (the CONNECT target ztunnel sends) to the endpoint pod and
    /// port it goes on to over HBONE, or in plaintext when the flag is set.
    pub fn start_waypoint(
        &mut self,
        name: &str,
        routes: &[(IpAddr, u16, &str, u16, bool)],
        pki: &MeshPki,
        work: &Path,
    ) {
        let mut table = serde_json::Map::new();
        for (vip, port, endpoint, target, plaintext) in routes {
            let ip = self.pod(endpoint).ip;
            table.insert(
                format!("{vip}:{port}"),
                serde_json::json!([{"address": format!("{ip}:{target}"), "plaintext": plaintext}]),
            );
        }
        let config = serde_json::json!({
            "cert": pki.cert(name), "key": pki.key(name), "ca": pki.ca(),
            "log": work.join("ztunnel.log"), "routes": table,
        });
        let path = work.join(format!("waypoint-{name}.json"));
        std::fs::write(&path, config.to_string()).expect("waypoint config");
        let pod = self.pod_mut(name);
        let child = Spawn::new("/usr/bin/python3")
            .arg(mesh_dir().join("waypoint.py"))
            .arg(&path)
            .netns(&pod.ns)
            .cgroup(pod.app_cgroup())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        pod.children.push(child);
        for p in [15008, 15021] {
            wait_listening(Some(&pod.ns), p);
        }
    }
}

fn start_sidecar(pod: &mut Pod, pki: &MeshPki, work: &Path) {
    let spec = &pod.spec;
    let script = if spec.linkerd {
        "linkerd-iptables.sh"
    } else {
        "istio-iptables.sh"
    };
    let mut rules = vec![mesh_dir().join(script).display().to_string()];
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !spec.exclude_outbound.is_empty() {
        rules.push("-o".into());
        rules.push(join(&spec.exclude_outbound));
    }
    if !spec.exclude_inbound.is_empty() {
        rules.push("-i".into());
        rules.push(join(&spec.exclude_inbound));
    }
    let mut args = vec![
        "netns".to_owned(),
        "exec".to_owned(),
        pod.ns.name().to_owned(),
        "sh".to_owned(),
    ];
    args.extend(rules);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("ip", &refs);

    let routes: Vec<serde_json::Value> = spec
        .routes
        .iter()
        .map(|(addr, port, mode, http, host)| {
            let sni = if spec.linkerd {
                host.clone()
            } else {
                format!("outbound_.{port}_._.{host}")
            };
            serde_json::json!({
                "address": addr.to_string(), "port": port, "mode": mode, "http": http,
                "sni": sni, "opaque": spec.linkerd && !http,
            })
        })
        .collect();
    let ports: serde_json::Map<String, serde_json::Value> = spec
        .inbound_ports
        .iter()
        .map(|(p, m)| (p.to_string(), serde_json::Value::from(m.as_str())))
        .collect();
    let log = work.join(format!("sidecar-{}.log", spec.name));
    let config = serde_json::json!({
        "pod_ip": pod.ip.to_string(),
        "cert": pki.cert(&spec.name), "key": pki.key(&spec.name), "ca": pki.ca(),
        "inbound": {"mode": spec.inbound_mode, "ports": ports},
        "outbound": routes,
        "log": log,
        "flavor": if spec.linkerd { "linkerd" } else { "istio" },
    });
    let path = work.join(format!("sidecar-{}.json", spec.name));
    std::fs::write(&path, config.to_string()).expect("sidecar config");
    let child = Spawn::new("/usr/bin/python3")
        .arg(mesh_dir().join("sidecar.py"))
        .arg(&path)
        .netns(&pod.ns)
        .cgroup(
            pod.proxy
                .as_ref()
                .expect("a sidecar pod has a proxy cgroup"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    pod.children.push(child);
    let ports: &[u16] = if pod.spec.linkerd {
        &[4140, 4143, 4191]
    } else {
        &[15001, 15006, 15021]
    };
    for p in ports {
        wait_listening(Some(&pod.ns), *p);
    }
}
