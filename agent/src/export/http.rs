//! The agent's HTTP listener: `/metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks for it), `/healthz`, `/readyz` and `/api/v1/edges`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use super::{edges::Edges, metrics::Metrics};

/// What the listener serves, shared with the pipeline.
pub struct Shared {
    pub metrics: Metrics,
    pub edges: Mutex<Edges>,
    /// Probes attached (and policy loaded, when one was given).
    pub ready: AtomicBool,
    /// In a cluster: ready also needs the first lists from the API server.
    pub cluster: Option<crate::kube::SharedState>,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| c.read().is_ok_and(|c| c.ready()))
    }
}

const OPENMETRICS: &str = "application/openmetrics-text";

async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
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

async fn edges(State(s): State<Arc<Shared>>, Query(f): Query<EdgeFilter>) -> Response {
    match s.edges.lock() {
        Ok(e) => Json(e.snapshot(f.namespace.as_deref(), f.verdict.as_deref())).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "edges unavailable\n").into_response(),
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/edges", get(edges))
        .with_state(shared)
}

/// Binds `addr` (so a busy address is an error at start) and returns the server
/// future.
pub async fn bind(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(async move { axum::serve(listener, router(shared)).await })
}
