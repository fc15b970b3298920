//! The agent's HTTP listener: `/metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks for it), `/healthz`, `/readyz` and `/api/v1/edges`.
//!
//! A scrape must never wait behind the edges view, however many clients fetch it:
//! the edges JSON is built off the async runtime (on its blocking pool), at most
//! once per `edges_refresh`, and shared by every request until the next rebuild;
//! at most `max_edges_requests` edges answers are in flight at once (the others get
//! `503` with `Retry-After`); and the connections themselves are bounded (see
//! [`conn`]).

mod conn;

use std::{
    hash::BuildHasher as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{
    edges::{self, Edge, Edges},
    metrics::Metrics,
};

/// What the listener serves, shared with the pipeline.
pub struct Shared {
    pub metrics: Metrics,
    pub edges: Mutex<Edges>,
    /// Probes attached (and policy loaded, when one was given).
    pub ready: AtomicBool,
    /// In a cluster: ready also needs the first lists from the API server.
    pub cluster: Option<crate::kube::SharedState>,
    /// In a cluster: the pipeline judges with a policy built from those first
    /// lists (the reloader builds it a moment after they arrive; until then a
    /// connection would be judged without the cluster's PeerAuthentications).
    pub policy_synced: AtomicBool,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.cluster.as_ref().is_none_or(|c| {
                self.policy_synced.load(Ordering::Relaxed) && c.read().is_ok_and(|c| c.ready())
            })
    }
}

/// The listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (`--http-max-connections`, lowered to stay below
    /// the file-descriptor limit).
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also how long an idle
    /// keep-alive connection stays open, and how long a new connection waits for
    /// a slot at the cap).
    pub header_read_timeout: Duration,
    /// At the cap, a connection idle (no byte moved, no request inside) for this
    /// long gives its slot to a new one.
    pub evict_after: Duration,
    /// A connection on which no byte moved either way for this long is closed (a
    /// client that stopped reading its answer).
    pub idle_timeout: Duration,
    /// Bytes of a request's head (request line and headers) buffered at most.
    pub max_request_head: usize,
    /// Request bodies larger than this are refused (every endpoint is a GET).
    pub max_request_body: u64,
    /// Edges answers in flight at once.
    pub max_edges_requests: usize,
    /// The edges JSON is rebuilt at most this often.
    pub edges_refresh: Duration,
}

impl Limits {
    /// The defaults, with `max_connections` connections at most.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections: conn::connection_cap(max_connections),
            header_read_timeout: Duration::from_secs(10),
            evict_after: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(30),
            max_request_head: 16 * 1024,
            max_request_body: 1024,
            max_edges_requests: 4,
            edges_refresh: Duration::from_secs(1),
        }
    }
}

/// The edges view as last built: sorted, and as the JSON of the unfiltered view.
struct Snapshot {
    built: Instant,
    edges: Arc<Vec<Edge>>,
    json: Bytes,
}

struct App {
    shared: Arc<Shared>,
    limits: Limits,
    /// The last snapshot; the lock also makes concurrent rebuilds one rebuild.
    snapshot: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    edges_permits: Arc<Semaphore>,
}

const OPENMETRICS: &str = "application/openmetrics-text";

async fn metrics(
    State(app): State<Arc<App>>,
    peer: Option<Extension<conn::Peer>>,
    headers: HeaderMap,
) -> Response {
    let s = &app.shared;
    // A scraper is an address with a user agent (two Prometheus replicas differ
    // by address; a person's curl on the node differs from Prometheus by agent).
    let agent = headers.get(header::USER_AGENT).map(HeaderValue::as_bytes);
    s.metrics.scraped_by(
        foldhash::fast::FixedState::default().hash_one((peer.map(|p| p.0.0.ip()), agent)),
    );
    let wants_om = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(OPENMETRICS));
    if wants_om {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.openmetrics_text(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.prometheus_text(),
        )
            .into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let s = &app.shared;
    if s.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if !s.ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: probes not attached or policy not loaded\n",
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first list of pods and Istio policy from the API server\n",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct EdgeFilter {
    namespace: Option<String>,
    verdict: Option<String>,
}

fn unavailable(what: &'static str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, what).into_response()
}

/// Copies the view (holding the pipeline's lock only for the copy), sorts it and
/// serializes it. Runs on the blocking pool.
fn build(shared: &Shared) -> Option<Snapshot> {
    let mut all = shared.edges.lock().ok()?.all();
    edges::sort(&mut all);
    let json = serde_json::to_vec(&all).ok()?;
    Some(Snapshot {
        built: Instant::now(),
        edges: Arc::new(all),
        json: Bytes::from(json),
    })
}

impl App {
    /// The current snapshot: the last one if younger than `edges_refresh`, else a
    /// new one (one rebuild for any number of waiting requests).
    async fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let mut last = self.snapshot.lock().await;
        if let Some(s) = &*last
            && s.built.elapsed() < self.limits.edges_refresh
        {
            return Some(Arc::clone(s));
        }
        let shared = Arc::clone(&self.shared);
        let fresh = Arc::new(
            tokio::task::spawn_blocking(move || build(&shared))
                .await
                .ok()??,
        );
        *last = Some(Arc::clone(&fresh));
        Some(fresh)
    }
}

async fn edges_handler(State(app): State<Arc<App>>, Query(f): Query<EdgeFilter>) -> Response {
    let Ok(permit) = Arc::clone(&app.edges_permits).try_acquire_owned() else {
        app.shared
            .metrics
            .http_shed
            .with_label_values(&["edges_busy"])
            .inc();
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: {} edges requests are being answered; try again\n",
                app.limits.max_edges_requests
            ),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let Some(snap) = app.snapshot().await else {
        return unavailable("edges unavailable\n");
    };
    let json = if f.namespace.is_none() && f.verdict.is_none() {
        snap.json.clone()
    } else {
        let filtered = tokio::task::spawn_blocking(move || {
            let chosen: Vec<&Edge> = snap
                .edges
                .iter()
                .filter(|e| edges::matches(e, f.namespace.as_deref(), f.verdict.as_deref()))
                .collect();
            serde_json::to_vec(&chosen).ok()
        })
        .await;
        match filtered {
            Ok(Some(v)) => Bytes::from(v),
            _ => return unavailable("edges unavailable\n"),
        }
    };
    // The permit is held until the body is sent (or the client went away).
    let body = Body::new(conn::Guarded::new(
        Body::new(conn::Chunked::new(json, 64 * 1024)),
        permit,
    ));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Refuses requests that announce a body over the limit (or a chunked one): no
/// endpoint reads a body, none may make the listener buffer one.
async fn limit_body(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if chunked || declared.is_some_and(|n| n > app.limits.max_request_body) {
        app.shared
            .metrics
            .http_shed
            .with_label_values(&["body_too_large"])
            .inc();
        let mut r = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large: every endpoint here is a GET\n",
        )
            .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    next.run(req).await
}

fn router_with(shared: Arc<Shared>, limits: Limits) -> Router {
    let app = Arc::new(App {
        shared,
        limits,
        snapshot: tokio::sync::Mutex::new(None),
        edges_permits: Arc::new(Semaphore::new(limits.max_edges_requests.max(1))),
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/edges", get(edges_handler))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), limit_body))
        .with_state(app)
}

/// The routes, with the default limits.
pub fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, Limits::new(DEFAULT_MAX_CONNECTIONS))
}

/// `--http-max-connections` unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Binds `addr` (so a busy address is an error at start) and returns the server
/// future, with the limits `args` asks for.
pub async fn bind(
    addr: SocketAddr,
    shared: Arc<Shared>,
    args: &crate::cli::RunArgs,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>> + use<>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(serve_on(
        listener,
        shared,
        Limits::new(args.http_max_connections),
    ))
}

/// Serves on a bound listener.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
) -> impl std::future::Future<Output = std::io::Result<()>> {
    let app = router_with(Arc::clone(&shared), limits);
    conn::serve(listener, app, limits, shared)
}

#[cfg(test)]
mod tests;
