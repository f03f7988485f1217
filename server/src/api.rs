//! The HTTP API (v1). Every error is an RFC 9457 problem document with a stable `type`.
//! The unix socket serves every route; the loopback TCP listener serves the same router behind a
//! guard that answers 403 to anything but GET/HEAD.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use enipool_api::{self as api, FieldError, problem};
use enipool_storage::{AddressState, LeaseFilter, LeaseKey, LeaseMeta, LedgerError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::App;
use crate::pool;

type AppState = Arc<App>;

/// An error answer: status, stable problem type, and what went wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    problem_type: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, problem_type: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, problem_type, title, detail: detail.into(), field: None, retry_after: None }
    }

    /// Names the offending field (`field` in the problem document).
    pub fn with_field(self, field: Option<String>) -> Self {
        ApiError { field, ..self }
    }

    fn field(status: StatusCode, e: FieldError) -> Self {
        ApiError {
            field: Some(e.field.to_string()),
            ..ApiError::new(status, problem::INVALID_FIELD, "Invalid field", e.to_string())
        }
    }

    fn internal(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, problem::INTERNAL, "Internal error", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, problem::NOT_FOUND, "Not found", detail)
    }

    fn ledger(e: LedgerError) -> Self {
        match e {
            LedgerError::Poisoned(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                problem::LEDGER_FAILED,
                "Ledger failed",
                format!("{e}; nothing is leased or released until then"),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }

    fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                problem::SHUTTING_DOWN,
                "Shutting down",
                "enipoold is shutting down; try again shortly",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::Problem {
            problem_type: self.problem_type.into(),
            title: self.title.into(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON body read strictly: size-capped (`LIMIT` bytes), JSON content type, and an error
/// naming the field.
#[derive(Debug)]
pub struct ApiJson<T, const LIMIT: usize = { api::MAX_BODY_BYTES }>(pub T);

impl<T: DeserializeOwned, S: Send + Sync, const LIMIT: usize> FromRequest<S> for ApiJson<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    problem::UNSUPPORTED_MEDIA_TYPE,
                    "Unsupported media type",
                    format!("body must be application/json, not {ct:?}"),
                ));
            }
        }
        let bytes: Bytes = axum::body::to_bytes(req.into_body(), LIMIT).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                problem::BODY_TOO_LARGE,
                "Body too large",
                format!("request bodies are limited to {LIMIT} bytes"),
            )
        })?;
        let malformed = |message: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                problem::INVALID_BODY,
                "Malformed JSON",
                format!("request body is not valid JSON: {message}"),
            )
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut *de) {
            // Only whitespace may follow the value: `{...} x` is not a JSON document.
            Ok(v) => de.end().map(|()| ApiJson(v)).map_err(|e| malformed(e.to_string())),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.to_string();
                if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                    return Err(malformed(message));
                }
                // serde reports a missing field at its parent's path (name the field); an
                // unknown field's path already ends with its name.
                let missing =
                    message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_string);
                let field = match (missing, path.as_str()) {
                    (Some(f), "." | "") => f,
                    (Some(f), parent) => format!("{parent}.{f}"),
                    (None, p) => p.to_string(),
                };
                Err(ApiError {
                    field: Some(field.clone()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        problem::INVALID_FIELD,
                        "Invalid field",
                        format!("{field}: {message}"),
                    )
                })
            }
        }
    }
}

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
    Err(ApiError {
        retry_after: Some(Duration::from_secs(1)),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            problem::NOT_READY,
            "Not ready",
            "starting: leases of the node's pods are being rebuilt from the node; try again shortly",
        )
    })
}

/// Runs a ledger call (which may wait on an fdatasync) off the async workers.
async fn ledger_call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("ledger task failed: {e}")))?
        .map_err(ApiError::ledger)
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
async fn create_lease(
    State(app): State<AppState>,
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
        let mut grown = app.pool_generation.subscribe();
        let ledger = app.ledger.clone();
        let (k, m) = (key.clone(), meta.clone());
        let result = ledger_call(move || ledger.allocate(k, m).map(Ok).or_else(no_free_address)).await?;
        app.pool_wake.notify_one();
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
                    app.exhausted_allocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    app.metrics.exhausted();
                    let reason = app
                        .events
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_error
                        .as_ref()
                        .map(|e| format!("; last provider error ({}): {}", e.action, e.detail))
                        .unwrap_or_default();
                    let paused = app
                        .growth_pause()
                        .map(|p| {
                            let left = p.until.saturating_duration_since(Instant::now()).as_secs();
                            format!("; growth paused for {left} s more: {}", p.reason)
                        })
                        .unwrap_or_default();
                    let stats = app.ledger.stats();
                    return Err(ApiError {
                        retry_after: Some(Duration::from_secs(1)),
                        ..ApiError::new(
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
                    });
                }
                // Wait for the pool manager to add IPs, or for the deadline (cooldowns expire
                // by time, so a short re-check interval catches those too).
                let recheck = app.config.pool_tick.min(Duration::from_millis(100));
                waiting.get_or_insert_with(|| app.metrics.waiting_allocation());
                tokio::select! {
                    _ = tokio::time::timeout((deadline - now).min(recheck), grown.changed()) => {}
                    _ = app.shutdown.notified() => {}
                }
            }
            Err(e) => return Err(ApiError::ledger(e)),
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
async fn delete_lease(
    State(app): State<AppState>,
    Path((network, container_id, ifname)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = lease_key(network, container_id, ifname)?;
    if app.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    rebuilt(&app).await?;
    let key = held_key(&app, key);
    let ledger = app.ledger.clone();
    ledger_call(move || ledger.release(&key)).await?;
    app.pool_wake.notify_one();
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
async fn get_lease(
    State(app): State<AppState>,
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
struct LeaseQuery {
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
async fn list_leases(
    State(app): State<AppState>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<api::Lease>>, ApiError> {
    let Query(q) = query.map_err(|e| {
        let text = e.body_text();
        // serde names the offending parameter as `name` in its message.
        let field = text.split('`').nth(1).map(str::to_string);
        ApiError { field, ..ApiError::new(StatusCode::BAD_REQUEST, problem::INVALID_FIELD, "Invalid query", text) }
    })?;
    let filter = LeaseFilter { network: q.network, pod_namespace: q.pod_namespace, eni_id: q.eni };
    Ok(Json(app.ledger.leases(&filter).iter().map(|l| to_api_lease(&app, l)).collect()))
}

/// Every ENI with its addresses and their states.
#[utoipa::path(get, path = "/v1/enis", tag = "pool", responses((status = 200, body = Vec<api::Eni>)))]
async fn list_enis(State(app): State<AppState>) -> Json<Vec<api::Eni>> {
    let now = app.clock_now();
    let primary_eni_id = app.info().primary_eni_id;
    let enis = app
        .ledger
        .enis()
        .into_iter()
        .map(|e| {
            let addresses = app
                .ledger
                .addresses(Some(&e.id))
                .into_iter()
                .map(|a| {
                    let state = match a.effective_state(now) {
                        enipool_storage::EffectiveState::Free => api::AddressState::Free,
                        enipool_storage::EffectiveState::Leased => api::AddressState::Leased,
                        enipool_storage::EffectiveState::Cooling => api::AddressState::Cooling,
                        enipool_storage::EffectiveState::Lost => api::AddressState::Lost,
                    };
                    let (lease, cooling_until) = match &a.state {
                        AddressState::Leased { key } | AddressState::Lost { key } => (Some(key.to_string()), None),
                        AddressState::Cooling { until } if *until > now => (None, Some(*until)),
                        _ => (None, None),
                    };
                    api::Address { ip: a.ip.to_string(), state, lease, cooling_until, last_released: a.last_released }
                })
                .collect();
            api::Eni {
                primary: e.id == primary_eni_id,
                id: e.id,
                device_number: e.device_number,
                attached: e.attached,
                primary_ip: e.primary_ip.to_string(),
                subnet_cidr: e.subnet_cidr.to_string(),
                subnet_gateway: e.subnet_gateway.to_string(),
                route_table: e.route_table,
                addresses,
            }
        })
        .collect();
    Json(enis)
}

/// The pool: counts, targets, deficit or excess, last provider action and error.
#[utoipa::path(get, path = "/v1/pool", tag = "pool", responses((status = 200, body = api::Pool)))]
async fn get_pool(State(app): State<AppState>) -> Json<api::Pool> {
    let stats = app.ledger.stats();
    let plan = pool::plan_now(&app, &stats);
    let c = &app.config;
    let info = app.info();
    let limits = info.limits;
    let events = crate::lock(&app.events);
    Json(api::Pool {
        instance_id: info.instance_id.clone(),
        instance_type: info.instance_type.clone(),
        provider: app.provider.name().into(),
        max_enis: limits.max_enis,
        ipv4_per_eni: limits.ipv4_per_eni,
        enis: stats.enis as u32,
        total: stats.addresses.total as u32,
        free: stats.addresses.free as u32,
        leased: stats.addresses.leased as u32,
        cooling: stats.addresses.cooling as u32,
        targets: api::WarmTargets {
            warm_eni_target: c.warm_eni_target,
            warm_ip_target: c.warm_ip_target,
            minimum_ip_target: c.minimum_ip_target,
            max_eni: c.max_eni.map_or(limits.max_enis, |m| m.min(limits.max_enis)),
            ip_cooldown_seconds: c.ip_cooldown.as_secs_f64(),
        },
        desired_total: plan.desired_total,
        deficit: plan.deficit,
        excess: plan.excess,
        exhausted_allocations: app.exhausted_allocations.load(std::sync::atomic::Ordering::Relaxed),
        last_provider_action: events.last_action.clone(),
        last_provider_error: events.last_error.clone(),
        lost: stats.lost as u32,
        growth_paused: app.growth_pause().map(|p| api::GrowthPause { reason: p.reason, until: p.until_ms }),
        leaked_eni_sweep: c.provider == crate::config::ProviderKind::Ec2
            && c.ec2.cluster_name.is_some()
            && !c.leaked_eni_interval.is_zero(),
    })
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
async fn gc(
    State(app): State<AppState>,
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
    let released = ledger_call(move || {
        let mut released = ledger.gc(&network, &valid, grace)?;
        released.extend(ledger.gc(&hashed_network, &valid_hashed, grace)?);
        Ok(released)
    })
    .await?;
    app.pool_wake.notify_one();
    Ok(Json(api::GcReply { released: released.iter().map(|l| to_api_lease(&app, l)).collect() }))
}

/// Liveness: the process answers and can do its job without a restart. 503 once the ledger has
/// stopped taking writes (a disk write or sync failed): only a restart recovers it from disk.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = api::Health), (status = 503, body = api::Health)))]
async fn healthz(State(app): State<AppState>) -> (StatusCode, Json<api::Health>) {
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
async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<api::Readiness>) {
    let (ready, reason) = app.readiness();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(api::Readiness { ready, reason }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(app): State<AppState>) -> Response {
    let stats = app.ledger.stats();
    let leases = stats.addresses.leased + stats.lost;
    let body = app.metrics.render(&stats, leases, &app.ledger.health());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "enipool", description = "enipoold's API: leases of VPC IPs for pods, and the state of the node's ENI pool. Mutating calls are served only on the unix socket; on the loopback TCP listener they answer 403 (type urn:enipool:problem:read-only-listener). Any route may also answer 404 (unknown route) or 405 (method not allowed). Every error is an RFC 9457 application/problem+json document (schema Problem) whose type is stable."),
    paths(create_lease, delete_lease, get_lease, list_leases, list_enis, get_pool, gc, healthz, readyz, metrics, crate::status_page::status_page),
    components(schemas(
        api::LeaseRequest, api::Lease, api::SnatSettings, api::GcRequest, api::GcReply, api::Attachment,
        api::Eni, api::Address, api::AddressState, api::Pool, api::WarmTargets, api::ProviderEvent, api::GrowthPause,
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
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/leases", get(list_leases).post(create_lease))
        .route("/v1/leases/{network}/{container_id}/{ifname}", get(get_lease).delete(delete_lease))
        .route("/v1/enis", get(list_enis))
        .route("/v1/pool", get(get_pool))
        .route("/v1/gc", axum::routing::post(gc))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(crate::status_page::status_page))
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
pub fn read_only_router(app: AppState) -> Router {
    router(app).layer(middleware::from_fn(read_only_guard))
}

/// `/metrics` alone, for the off-node Prometheus listener.
pub fn metrics_router(app: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(app)
}
