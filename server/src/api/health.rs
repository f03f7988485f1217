//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use enipool_api as api;

use crate::app::App;

/// Liveness: the process answers and can do its job without a restart. 503 once the ledger has
/// stopped taking writes (a disk write or sync failed): only a restart recovers it from disk.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = api::Health), (status = 503, body = api::Health)))]
pub(super) async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, Json<api::Health>) {
    match app.ledger.health().write_failure {
        None => (StatusCode::OK, Json(api::Health { status: "ok".into(), reason: None })),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(api::Health {
                status: "failed".into(),
                reason: Some(format!("the ledger stopped taking writes: {why}")),
            }),
        ),
    }
}

/// Readiness: the ledger is open and takes writes, and the provider is initialised. A full pool
/// is not unreadiness.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = api::Readiness), (status = 503, body = api::Readiness)))]
pub(super) async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<api::Readiness>) {
    let (ready, reason) = app.readiness();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(api::Readiness { ready, reason }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let stats = app.ledger.stats();
    let leases = stats.addresses.leased + stats.lost;
    let body = app.metrics.render(&stats, leases, &app.ledger.health(), &app.provider.candidate_subnets());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
