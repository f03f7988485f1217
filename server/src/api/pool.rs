//! `/v1/pool` and `/v1/enis`: the pool's figures and every ENI with its addresses.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use enipool_api as api;

use super::views;
use crate::app::App;

/// Every ENI with its addresses and their states.
#[utoipa::path(get, path = "/v1/enis", tag = "pool", responses((status = 200, body = Vec<api::Eni>)))]
pub(super) async fn list_enis(State(app): State<Arc<App>>) -> Json<Vec<api::Eni>> {
    Json(views::enis(&app))
}

/// The pool: counts, targets, deficit or excess, last provider action and error.
#[utoipa::path(get, path = "/v1/pool", tag = "pool", responses((status = 200, body = api::Pool)))]
pub(super) async fn get_pool(State(app): State<Arc<App>>) -> Json<api::Pool> {
    Json(views::pool(&app))
}
