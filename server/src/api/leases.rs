//! `/v1/leases` and `/v1/gc`: leasing, releasing, reading and garbage-collecting leases.

use std::sync::Arc;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use enipool_api::{self as api, problem};
use enipool_storage::{LeaseFilter, LeaseKey, LeaseMeta, LedgerError};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use crate::app::App;

fn lease_key(network: String, container_id: String, ifname: String) -> Result<LeaseKey, ApiError> {
    let bad = |e| ApiError::field(StatusCode::BAD_REQUEST, e);
    api::check_network(&network).map_err(bad)?;
    api::check_container_id(&container_id).map_err(bad)?;
    api::check_ifname(&ifname).map_err(bad)?;
    Ok(LeaseKey::new(network, container_id, ifname))
}

/// The key a lease of `key` is held under: `key` itself, or, when it holds none, the hashed key
/// of a lease rebuilt from a host veth that named its attachment by hashes only (see `node`).
fn held_key(app: &App, key: LeaseKey) -> LeaseKey {
    if app.ledger.lease(&key).is_some() {
        return key;
    }
    let (n, c, i) = enipool_nodenet::alias::hashed_key_of(&key.network, &key.container_id, &key.ifname);
    let hashed = LeaseKey::new(n, c, i);
    if app.ledger.lease(&hashed).is_some() { hashed } else { key }
}

/// A ledger lease as the API shows it, with the node settings the plugin needs.
fn to_api_lease(app: &App, lease: &enipool_storage::Lease) -> api::Lease {
    let eni = app.ledger.eni(&lease.eni_id);
    let c = &app.config;
    let info = app.info();
    let vpc_cidrs: Vec<String> = info.vpc_cidrs.iter().map(|n| n.to_string()).collect();
    let excluded = vpc_cidrs.iter().cloned().chain(c.exclude_snat_cidrs.iter().map(|n| n.to_string())).collect();
    api::Lease {
        network: lease.key.network.clone(),
        container_id: lease.key.container_id.clone(),
        ifname: lease.key.ifname.clone(),
        pod_namespace: lease.meta.pod_namespace.clone(),
        pod_name: lease.meta.pod_name.clone(),
        netns: lease.meta.netns.clone(),
        host_veth: lease.meta.host_veth.clone(),
        created_at: lease.created_at,
        ip: lease.ip.to_string(),
        prefix_length: 32,
        eni_id: lease.eni_id.clone(),
        device_number: eni.as_ref().map_or(0, |e| e.device_number),
        route_table: eni.as_ref().map_or(254, |e| e.route_table),
        subnet_cidr: eni.as_ref().map_or_else(String::new, |e| e.subnet_cidr.to_string()),
        subnet_gateway: eni.as_ref().map_or_else(String::new, |e| e.subnet_gateway.to_string()),
        vpc_cidrs,
        gateway: enipool_nodenet::POD_GATEWAY.to_string(),
        mtu: c.pod_mtu,
        snat: api::SnatSettings {
            // A placeholder identity (first start, provider unreachable) knows neither the node
            // IP nor the VPC: the plugin then leaves the node's SNAT chain as it is.
            enabled: !c.external_snat && app.identity_is_real(),
            node_ip: info.primary_ip.to_string(),
            excluded_cidrs: excluded,
            randomize: c.randomize_snat.as_str().into(),
        },
    }
}

/// Waits (at most `--allocation-wait`) until start-up has rebuilt from the node the leases the
/// ledger lost; until then a lease's absence means nothing (the plugin's ADD would take a live
/// pod's veth for a dead one's, a DEL's release could be undone), so lease calls answer 503.
async fn rebuilt(app: &App) -> Result<(), ApiError> {
    if app.wait_rebuilt(app.config.allocation_wait).await {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        problem::NOT_READY,
        "Not ready",
        "starting: leases of the node's pods are being rebuilt from the node; try again shortly",
    )
    .with_retry_after(Duration::from_secs(1)))
}

/// Lease an IP.
#[utoipa::path(post, path = "/v1/leases", tag = "leases", request_body = api::LeaseRequest,
    responses(
        (status = 201, description = "A new lease, durable on disk", body = api::Lease),
        (status = 200, description = "The existing lease of this key", body = api::Lease),
        (status = 400, description = "Malformed JSON", body = api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = api::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No IP free (Retry-After set), shutting down, starting (leases still being rebuilt from the node), or the ledger stopped taking writes", body = api::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn create_lease(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<api::LeaseRequest>,
) -> Result<Response, ApiError> {
    req.validate().map_err(|e| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if app.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    let started = Instant::now();
    let deadline = started + app.config.allocation_wait;
    // A live pod whose lease the ledger lost must get it back before its IP can go to another.
    rebuilt(&app).await?;
    let key = LeaseKey::new(req.network, req.container_id, req.ifname);
    let meta = LeaseMeta {
        pod_namespace: req.pod_namespace,
        pod_name: req.pod_name,
        netns: req.netns,
        host_veth: req.host_veth,
    };
    let mut waiting = None;
    loop {
        let mut grown = app.pool.growth();
        // On this task: the ledger's lock is held for microseconds, and the wait for the
        // fdatasync holds no thread (with a blocking-pool hop per request the daemon made
        // 10,304 pairs/s at 64 clients, without it 16,774 in the next run).
        let result = app.ledger.allocate_async(key.clone(), meta.clone()).await.map(Ok).or_else(no_free_address)?;
        app.pool.wake();
        match result {
            Ok(allocation) => {
                app.metrics.allocation(started.elapsed());
                let status = if allocation.created { StatusCode::CREATED } else { StatusCode::OK };
                return Ok((status, Json(to_api_lease(&app, &allocation.lease))).into_response());
            }
            Err(LedgerError::NoFreeAddress) => {
                if app.is_shutting_down() {
                    return Err(ApiError::shutting_down());
                }
                let now = Instant::now();
                if now >= deadline {
                    app.pool.note_exhausted();
                    app.metrics.exhausted();
                    let reason = app
                        .pool
                        .last_error()
                        .map(|e| format!("; last provider error ({}): {}", e.action, e.detail))
                        .unwrap_or_default();
                    let paused = app
                        .pool
                        .growth_pause()
                        .map(|p| {
                            let left = p.until.saturating_duration_since(Instant::now()).as_secs();
                            format!("; growth paused for {left} s more: {}", p.reason)
                        })
                        .unwrap_or_default();
                    let stats = app.ledger.stats();
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        problem::POOL_EXHAUSTED,
                        "No IP available",
                        format!(
                            "no free IP after waiting {:?}: {} leased, {} cooling, {} total{paused}{reason}",
                            app.config.allocation_wait,
                            stats.addresses.leased,
                            stats.addresses.cooling,
                            stats.addresses.total
                        ),
                    )
                    .with_retry_after(Duration::from_secs(1)));
                }
                // Wait for the pool manager to add IPs, or for the deadline (cooldowns expire
                // by time, so a short re-check interval catches those too).
                let recheck = app.config.pool_tick.min(Duration::from_millis(100));
                waiting.get_or_insert_with(|| app.metrics.waiting_allocation());
                tokio::select! {
                    _ = tokio::time::timeout((deadline - now).min(recheck), grown.changed()) => {}
                    _ = app.shutdown_signalled() => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Keeps "no free address" as a value (the caller waits for growth); every other error stays one.
fn no_free_address<T>(e: LedgerError) -> Result<Result<T, LedgerError>, LedgerError> {
    match e {
        LedgerError::NoFreeAddress => Ok(Err(e)),
        e => Err(e),
    }
}

/// Release a lease (idempotent: 204 also when there is none).
#[utoipa::path(delete, path = "/v1/leases/{network}/{container_id}/{ifname}", tag = "leases",
    params(("network" = String, Path), ("container_id" = String, Path), ("ifname" = String, Path)),
    responses(
        (status = 204, description = "Released (or there was no such lease); durable on disk"),
        (status = 400, description = "A path segment is invalid", body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, starting (leases still being rebuilt from the node), or the ledger stopped taking writes", body = api::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn delete_lease(
    State(app): State<Arc<App>>,
    Path((network, container_id, ifname)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = lease_key(network, container_id, ifname)?;
    if app.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    rebuilt(&app).await?;
    let key = held_key(&app, key);
    app.ledger.release_async(&key).await?;
    app.pool.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// One lease.
#[utoipa::path(get, path = "/v1/leases/{network}/{container_id}/{ifname}", tag = "leases",
    params(("network" = String, Path), ("container_id" = String, Path), ("ifname" = String, Path)),
    responses(
        (status = 200, body = api::Lease),
        (status = 400, description = "A path segment is invalid", body = api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such lease", body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Starting: leases are still being rebuilt from the node", body = api::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get_lease(
    State(app): State<Arc<App>>,
    Path((network, container_id, ifname)): Path<(String, String, String)>,
) -> Result<Json<api::Lease>, ApiError> {
    let key = lease_key(network, container_id, ifname)?;
    rebuilt(&app).await?;
    let lease = app
        .ledger
        .lease(&held_key(&app, key.clone()))
        .ok_or_else(|| ApiError::not_found(format!("no lease for {key}")))?;
    Ok(Json(to_api_lease(&app, &lease)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LeaseQuery {
    /// Only leases of this network.
    network: Option<String>,
    /// Only leases of pods in this namespace.
    pod_namespace: Option<String>,
    /// Only leases on this ENI.
    eni: Option<String>,
}

/// List leases.
#[utoipa::path(get, path = "/v1/leases", tag = "leases", params(LeaseQuery),
    responses(
        (status = 200, body = Vec<api::Lease>),
        (status = 400, description = "Unknown or malformed query parameter", body = api::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn list_leases(
    State(app): State<Arc<App>>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<api::Lease>>, ApiError> {
    let Query(q) = query.map_err(|e| {
        let text = e.body_text();
        // serde names the offending parameter as `name` in its message.
        let field = text.split('`').nth(1).map(str::to_string);
        ApiError::new(StatusCode::BAD_REQUEST, problem::INVALID_FIELD, "Invalid query", text).with_field(field)
    })?;
    let filter = LeaseFilter { network: q.network, pod_namespace: q.pod_namespace, eni_id: q.eni };
    Ok(Json(app.ledger.leases(&filter).iter().map(|l| to_api_lease(&app, l)).collect()))
}

/// Release every lease of a network that is not in the valid list (CNI GC), except leases younger
/// than the node reconciliation grace period (an ADD the runtime has not listed yet). The body
/// may be up to 4 MiB.
#[utoipa::path(post, path = "/v1/gc", tag = "leases", request_body = api::GcRequest,
    responses(
        (status = 200, description = "The leases released, durable on disk", body = api::GcReply),
        (status = 400, description = "Malformed JSON", body = api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = api::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the ledger stopped taking writes", body = api::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn gc(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<api::GcRequest, { api::MAX_GC_BODY_BYTES }>,
) -> Result<Json<api::GcReply>, ApiError> {
    req.validate().map_err(|e| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if app.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    let valid: HashSet<(String, String)> = req.valid.into_iter().map(|a| (a.container_id, a.ifname)).collect();
    // Leases rebuilt under hashed keys are judged by the same list, hashed.
    let (hashed_network, _, _) = enipool_nodenet::alias::hashed_key_of(&req.network, "", "");
    let valid_hashed: HashSet<(String, String)> = valid
        .iter()
        .map(|(c, i)| {
            let (_, c, i) = enipool_nodenet::alias::hashed_key_of(&req.network, c, i);
            (c, i)
        })
        .collect();
    let ledger = app.ledger.clone();
    let network = req.network;
    let grace = app.config.node_reconcile_grace;
    let released = app
        .ledger_call(move || {
            let mut released = ledger.gc(&network, &valid, grace)?;
            released.extend(ledger.gc(&hashed_network, &valid_hashed, grace)?);
            Ok(released)
        })
        .await?;
    app.pool.wake();
    Ok(Json(api::GcReply { released: released.iter().map(|l| to_api_lease(&app, l)).collect() }))
}
