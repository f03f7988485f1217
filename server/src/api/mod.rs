//! The HTTP API (v1). Every error is an RFC 9457 problem document with a stable `type`
//! ([`error`]). The unix socket serves every route; the loopback TCP listener serves the same
//! router behind a guard that answers 403 to anything but GET/HEAD.
//!
//! One file per resource: [`leases`] (`/v1/leases`, `/v1/gc`), [`pool`] (`/v1/pool`,
//! `/v1/enis`), [`health`] (`/healthz`, `/readyz`, `/metrics`) and [`status_page`] (`/status`,
//! rendered from the same views as `/v1/pool` and `/v1/enis`, [`views`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use enipool_api::{self as api, problem};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::App;

pub mod error;
mod health;
mod leases;
mod pool;
pub mod status_page;
pub mod views;

pub use error::{ApiError, ApiJson};
use health::{healthz, metrics, readyz};
use leases::{create_lease, delete_lease, gc, get_lease, list_leases};
use pool::{get_pool, list_enis};
use status_page::status_page;

#[derive(OpenApi)]
#[openapi(
    info(title = "enipool", description = "enipoold's API: leases of VPC IPs for pods, and the state of the node's ENI pool. Mutating calls are served only on the unix socket; on the loopback TCP listener they answer 403 (type urn:enipool:problem:read-only-listener). Any route may also answer 404 (unknown route) or 405 (method not allowed). Every error is an RFC 9457 application/problem+json document (schema Problem) whose type is stable."),
    paths(leases::create_lease, leases::delete_lease, leases::get_lease, leases::list_leases, pool::list_enis, pool::get_pool, leases::gc, health::healthz, health::readyz, health::metrics, status_page::status_page),
    components(schemas(
        api::LeaseRequest, api::Lease, api::SnatSettings, api::GcRequest, api::GcReply, api::Attachment,
        api::Eni, api::Address, api::AddressState, api::Prefix, api::PrefixState, api::Subnet, api::Pool, api::WarmTargets, api::ProviderEvent, api::GrowthPause, api::PrefixPlan,
        api::Health, api::Readiness, api::Problem
    )),
    tags((name = "leases"), (name = "pool"), (name = "health"))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().expect("the document serializes");
    s.push('\n');
    s
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        problem::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Every route, for the unix socket.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/leases", get(list_leases).post(create_lease))
        .route("/v1/leases/{network}/{container_id}/{ifname}", get(get_lease).delete(delete_lease))
        .route("/v1/enis", get(list_enis))
        .route("/v1/pool", get(get_pool))
        .route("/v1/gc", axum::routing::post(gc))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn read_only_guard(req: Request<Body>, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        problem::READ_ONLY_LISTENER,
        "Read-only listener",
        format!("{} is only served on the unix socket; this TCP listener is read-only", req.method()),
    )
    .into_response()
}

/// The same routes behind a guard that refuses anything but GET and HEAD, for loopback TCP.
pub fn read_only_router(app: Arc<App>) -> Router {
    router(app).layer(middleware::from_fn(read_only_guard))
}

/// `/metrics` alone, for the off-node Prometheus listener.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(app)
}
