//! A local HTTP server that speaks the Kubernetes list and watch protocol for the
//! resources the agent reads: `resourceVersion`, whole (unpaged) lists, streaming watches
//! with ADDED/MODIFIED/DELETED and BOOKMARK events, `410 Gone` for expired
//! versions, and connections dropped on demand. Objects are real-format JSON
//! (pods with containerd and CRI-O container IDs, Services, EndpointSlices, Istio
//! and Linkerd CRDs).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// The resources served, as (path prefix, list kind, apiVersion).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("/api/v1/pods", "PodList", "v1"),
    ("/api/v1/services", "ServiceList", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/security.istio.io/v1/peerauthentications",
        "PeerAuthenticationList",
        "security.istio.io/v1",
    ),
    (
        "/apis/networking.istio.io/v1/destinationrules",
        "DestinationRuleList",
        "networking.istio.io/v1",
    ),
    (
        "/apis/policy.linkerd.io/v1beta3/servers",
        "ServerList",
        "policy.linkerd.io/v1beta3",
    ),
    (
        "/apis/policy.linkerd.io/v1alpha1/authorizationpolicies",
        "AuthorizationPolicyList",
        "policy.linkerd.io/v1alpha1",
    ),
    (
        "/apis/policy.linkerd.io/v1alpha1/meshtlsauthentications",
        "MeshTLSAuthenticationList",
        "policy.linkerd.io/v1alpha1",
    ),
    (
        "/apis/policy.linkerd.io/v1alpha1/networkauthentications",
        "NetworkAuthenticationList",
        "policy.linkerd.io/v1alpha1",
    ),
];

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches must not start before this version (older ones get 410 Gone).
    compacted: u64,
    /// resource -> (namespace/name -> object)
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change: (rv, resource, type, object).
    log: Vec<(u64, String, &'static str, Value)>,
    /// Requests seen, for assertions: (path, query).
    requests: Vec<String>,
}

struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<u64>,
    /// Bumped to end every open watch.
    drops: broadcast::Sender<()>,
}

/// Handle to the fake API server.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl FakeApi {
    /// Starts the server on a free loopback port, in its own thread and runtime.
    pub fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts the server on `addr` (port 0: any free port).
    pub fn start_on(addr: SocketAddr) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let (drops, _) = broadcast::channel(16);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changes,
            drops,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&inner);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                tx.send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let app = Router::new()
                    .route("/{*path}", get(serve))
                    .with_state(state);
                let _ = axum::serve(listener, app).await;
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake API server started");
        Self { inner, addr }
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        write_kubeconfig(path, self.addr);
    }

    fn change(&self, resource: &str, kind: &'static str, mut obj: Value) {
        let mut s = self.inner.store.lock().expect("store");
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let k = key(&obj);
        let map = s.objects.entry(resource.to_owned()).or_default();
        if kind == "DELETED" {
            map.remove(&k);
        } else {
            map.insert(k, obj.clone());
        }
        s.log.push((rv, resource.to_owned(), kind, obj));
        drop(s);
        let _ = self.inner.changes.send(rv);
    }

    /// Adds or replaces an object (ADDED or MODIFIED) under `resource`, one of the
    /// served paths (`/api/v1/pods`, ...).
    pub fn upsert(&self, resource: &str, obj: Value) {
        let exists = self
            .inner
            .store
            .lock()
            .expect("store")
            .objects
            .get(resource)
            .is_some_and(|m| m.contains_key(&key(&obj)));
        self.change(resource, if exists { "MODIFIED" } else { "ADDED" }, obj);
    }

    pub fn delete(&self, resource: &str, obj: Value) {
        self.change(resource, "DELETED", obj);
    }

    /// Ends every open watch (as an API-server restart or a network drop would).
    pub fn drop_watches(&self) {
        let _ = self.inner.drops.send(());
    }

    /// Forgets history, as etcd's compaction does after other writes: every version a
    /// client can hold is now too old, so the next watch gets `410 Gone` and the
    /// client must list again. Open watches are dropped.
    pub fn compact(&self) {
        {
            let mut s = self.inner.store.lock().expect("store");
            s.rv += 1;
            s.compacted = s.rv;
        }
        self.drop_watches();
    }

    /// Requests seen so far (`path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.inner.store.lock().expect("store").requests.clone()
    }
}

fn list(s: &Store, resource: &str, kind: &str, api_version: &str, node: Option<&str>) -> Value {
    let items: Vec<Value> = s
        .objects
        .get(resource)
        .map(|m| m.values().filter(|o| on_node(o, node)).cloned().collect())
        .unwrap_or_default();
    json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": { "resourceVersion": s.rv.to_string() },
        "items": items,
    })
}

/// The `spec.nodeName=` field selector.
fn on_node(obj: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| obj["spec"]["nodeName"] == n)
}

fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut b = serde_json::to_vec(v).expect("json");
    b.push(b'\n');
    Ok(Bytes::from(b))
}

async fn serve(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let path = format!("/{path}");
    let Some(&(resource, kind, api_version)) = RESOURCES.iter().find(|(p, _, _)| *p == path) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{path} not found")}))).into_response();
    };
    let node = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_owned);
    {
        let mut s = inner.store.lock().expect("store");
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.requests.push(format!("{path}?{}", query.join("&")));
    }
    if q.get("watch").map(String::as_str) != Some("true")
        && q.get("watch").map(String::as_str) != Some("1")
    {
        let s = inner.store.lock().expect("store");
        return axum::Json(list(&s, resource, kind, api_version, node.as_deref())).into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let mut changes = inner.changes.subscribe();
    let mut drops = inner.drops.subscribe();
    let (gone, backlog, current) = {
        let s = inner.store.lock().expect("store");
        let gone = from < s.compacted;
        let backlog: Vec<Value> = s
            .log
            .iter()
            .filter(|(rv, r, _, o)| *rv > from && r == resource && on_node(o, node.as_deref()))
            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
            .collect();
        (gone, backlog, s.rv)
    };
    let inner2 = Arc::clone(&inner);
    tokio::spawn(async move {
        if gone {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {from} ({current})"), "reason": "Expired", "code": 410}});
            let _ = tx.send(line(&status)).await;
            return;
        }
        let mut sent = from;
        for ev in backlog {
            if tx.send(line(&ev)).await.is_err() {
                return;
            }
        }
        sent = sent.max(current);
        let mut tick = tokio::time::interval(Duration::from_millis(700));
        loop {
            tokio::select! {
                // A drop requested before a change wins over it.
                biased;
                _ = drops.recv() => return,
                c = changes.recv() => {
                    let Ok(_) = c else { return };
                    let evs: Vec<(u64, Value)> = {
                        let s = inner2.store.lock().expect("store");
                        s.log
                            .iter()
                            .filter(|(rv, r, _, o)| *rv > sent && r == resource && on_node(o, node.as_deref()))
                            .map(|(rv, _, t, o)| (*rv, json!({"type": t, "object": o})))
                            .collect()
                    };
                    for (rv, ev) in evs {
                        sent = sent.max(rv);
                        if tx.send(line(&ev)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tick.tick() => {
                    if bookmarks {
                        let rv = inner2.store.lock().expect("store").rv;
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": kind.trim_end_matches("List"), "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
                        if tx.send(line(&bm)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// Writes a kubeconfig for a plain-HTTP API server at `addr` (which need not be up).
pub fn write_kubeconfig(path: &std::path::Path, addr: SocketAddr) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .expect("write kubeconfig");
}
