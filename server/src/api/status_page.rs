//! `GET /status`: a read-only HTML page of the pool for operators (ENIs, their IPs and states,
//! warm targets, readiness, recent provider actions). Server-rendered from the very values
//! `/v1/pool` and `/v1/enis` return ([`super::views`]), so it needs no JavaScript and shows
//! exactly what they would at that instant. Every figure carries a `data-*` attribute so tests (and scripts) read
//! the rendered DOM without scraping text.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use enipool_api::{AddressState, PrefixState, problem};
use enipool_storage::LeaseFilter;
use serde::Deserialize;

use super::error::ApiError;
use super::views;
use crate::app::App;
use crate::provider::Limits;

/// Seconds between reloads unless `?refresh=` says otherwise.
pub const DEFAULT_REFRESH_SECONDS: u32 = 5;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Seconds between automatic reloads of the page; 0 turns them off. Default 5, at most 3600.
    refresh: Option<u32>,
}

/// The pool as an HTML page, for a browser.
#[utoipa::path(get, path = "/status", tag = "pool", params(StatusQuery),
    responses(
        (status = 200, description = "The pool as an HTML page: ENIs, IPs and states, warm targets, readiness, recent provider actions", body = String, content_type = "text/html"),
        (status = 400, description = "Unknown or malformed query parameter", body = enipool_api::Problem, content_type = "application/problem+json"),
    ))]
pub async fn status_page(
    State(app): State<Arc<App>>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad_query = |detail: String, field: Option<String>| {
        ApiError::new(StatusCode::BAD_REQUEST, problem::INVALID_FIELD, "Invalid query", detail).with_field(field)
    };
    let Query(q) = query.map_err(|e| {
        let text = e.body_text();
        bad_query(text.clone(), query_field(&text))
    })?;
    let refresh = q.refresh.unwrap_or(DEFAULT_REFRESH_SECONDS);
    if refresh > 3600 {
        return Err(bad_query(format!("refresh: {refresh} is more than 3600 seconds"), Some("refresh".into())));
    }
    let html = render(&app, refresh);
    let mut resp = html.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The parameter serde's message names: "unknown field `x`, ..." or "...query string: x: why".
fn query_field(message: &str) -> Option<String> {
    if let Some(name) = message.split('`').nth(1) {
        return Some(name.to_string());
    }
    let rest = message.split("query string: ").nth(1)?;
    rest.split_once(": ").map(|(name, _)| name.to_string())
}

/// HTML-escapes text for element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (the civil-from-days algorithm; no calendar
/// crate for one format).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}\
th{background:#f3f3f3}.free{color:#1a7f37}.leased{color:#0550ae}.cooling{color:#9a6700}.lost{color:#cf222e}\
.error{color:#cf222e}.ok{color:#1a7f37}section.eni{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}\
code{font-size:.95em}";

/// The whole page.
pub fn render(app: &App, refresh: u32) -> String {
    let now = app.clock_now();
    let pool = views::pool(app);
    let enis = views::enis(app);
    let (ready, reason) = app.readiness();
    let mut h = String::new();
    // Writing into a String cannot fail: the results of write! are ignored below.
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>enipool: {}</title>",
        esc(&pool.instance_id)
    );
    if refresh > 0 {
        let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{refresh}\">");
    }
    let _ = write!(h, "<style>{STYLE}</style></head><body>");
    let _ = write!(
        h,
        "<h1>enipool on <span id=\"instance-id\">{}</span></h1><p>{} &middot; provider <b id=\"provider\">{}</b> &middot; rendered {} &middot; <a href=\"/docs/\">API docs</a> &middot; <a href=\"/v1/pool\">/v1/pool</a> &middot; <a href=\"/v1/enis\">/v1/enis</a></p>",
        esc(&pool.instance_id),
        esc(&pool.instance_type),
        esc(&pool.provider),
        utc(now)
    );
    match (ready, &reason) {
        (true, _) => h.push_str("<p id=\"readiness\" data-ready=\"true\" class=\"ok\">Ready</p>"),
        (false, r) => {
            let _ = write!(
                h,
                "<p id=\"readiness\" data-ready=\"false\" class=\"error\">Not ready: {}</p>",
                esc(r.as_deref().unwrap_or("starting"))
            );
        }
    }
    if app.config.cni_conf_dir.is_some() {
        match &app.cni_conflist() {
            Some(Ok(path)) => {
                let _ = write!(
                    h,
                    "<p id=\"cni-conflist\" class=\"ok\">CNI conflist installed at <code>{}</code></p>",
                    esc(&path.display().to_string())
                );
            }
            Some(Err(e)) => {
                let _ = write!(h, "<p id=\"cni-conflist\" class=\"error\">CNI conflist not installed: {}</p>", esc(e));
            }
            None => h.push_str("<p id=\"cni-conflist\">CNI conflist: installed once ready</p>"),
        }
    }

    // The pool: the same figures as GET /v1/pool.
    h.push_str("<h2>Pool</h2><table id=\"pool\"><tr>");
    let figures: [(&str, u64); 13] = [
        ("enis", u64::from(pool.enis)),
        ("total", u64::from(pool.total)),
        ("free", u64::from(pool.free)),
        ("leased", u64::from(pool.leased)),
        ("cooling", u64::from(pool.cooling)),
        ("lost", u64::from(pool.lost)),
        ("desired_total", u64::from(pool.desired_total)),
        ("deficit", u64::from(pool.deficit)),
        ("excess", u64::from(pool.excess)),
        ("exhausted_allocations", pool.exhausted_allocations),
        ("max_enis", u64::from(pool.max_enis)),
        ("prefixes", u64::from(pool.prefixes)),
        ("free_prefixes", u64::from(pool.free_prefixes)),
    ];
    for (name, _) in &figures {
        let _ = write!(h, "<th>{}</th>", name.replace('_', " "));
    }
    h.push_str("</tr><tr>");
    for (name, value) in &figures {
        let _ = write!(h, "<td id=\"pool-{name}\" data-value=\"{value}\">{value}</td>");
    }
    h.push_str("</tr></table>");
    let _ = write!(h, "<p id=\"pool-mode\" data-value=\"{0}\">Grows by: {0}</p>", esc(&pool.mode));
    if let Some(p) = &pool.prefix_fallback {
        let _ = write!(
            h,
            "<p id=\"prefix-fallback\" class=\"error\">No free /28 in the subnet: growing by single IPs until {}: {}</p>",
            utc(p.until),
            esc(&p.reason)
        );
    }
    if let Some(p) = &pool.growth_paused {
        let _ = write!(
            h,
            "<p id=\"growth-paused\" class=\"error\">Growth paused until {}: {}</p>",
            utc(p.until),
            esc(&p.reason)
        );
    }

    if let Some(why) = &pool.growth_blocked {
        let _ = write!(h, "<p id=\"growth-blocked\" class=\"error\">Growth blocked: {}</p>", esc(why));
    }

    // Warm targets, with the reference daemon's names.
    let opt = |v: Option<u32>| v.map_or_else(|| "unset".to_string(), |v| v.to_string());
    let t = &pool.targets;
    let max_eni = t.max_eni;
    let limits = Limits { max_enis: pool.max_enis, ipv4_per_eni: pool.ipv4_per_eni };
    let _ = write!(
        h,
        "<h2>Warm targets</h2><table id=\"targets\"><tr><th>WARM_ENI_TARGET</th><th>WARM_IP_TARGET</th><th>MINIMUM_IP_TARGET</th><th>MAX_ENI</th><th>IP_COOLDOWN_PERIOD</th><th>IPs per ENI</th></tr>\
         <tr><td id=\"target-warm-eni\">{}</td><td id=\"target-warm-ip\">{}</td><td id=\"target-minimum-ip\">{}</td><td id=\"target-max-eni\">{max_eni}</td><td id=\"target-cooldown\">{} s</td><td>{} ({} for pods)</td></tr></table>",
        t.warm_eni_target,
        opt(t.warm_ip_target),
        opt(t.minimum_ip_target),
        t.ip_cooldown_seconds,
        limits.ipv4_per_eni,
        limits.pod_ips_per_eni(),
    );

    // Where new ENIs may go (subnet discovery), best first.
    if !pool.subnets.is_empty() {
        h.push_str("<h2>Subnets for new ENIs</h2><table id=\"subnets\"><tr><th>subnet</th><th>CIDR</th><th>zone</th><th>free</th><th>refusals</th><th>now</th></tr>");
        for sn in &pool.subnets {
            let now = match &sn.skipped {
                Some(why) => format!("<span class=\"error\">skipped: {}</span>", esc(why)),
                None => "candidate".to_string(),
            };
            let _ = write!(
                h,
                "<tr class=\"subnet\" data-subnet-id=\"{id}\" data-free=\"{free}\" data-skipped=\"{skipped}\"><td><code>{id}</code>{node}</td><td>{cidr}</td><td>{zone}</td><td>{free}</td><td>{refusals}</td><td>{now}</td></tr>",
                id = esc(&sn.id),
                node = if sn.node { " (the node's)" } else { "" },
                cidr = esc(&sn.cidr),
                zone = esc(&sn.zone),
                free = sn.free,
                refusals = sn.refusals,
                skipped = sn.skipped.is_some(),
            );
        }
        h.push_str("</table>");
    }

    // Every ENI with its addresses, as GET /v1/enis has them.
    let _ = write!(h, "<h2>ENIs (<span id=\"eni-count\">{}</span>)</h2>", enis.len());
    for e in enis {
        let leases = app.ledger.leases(&LeaseFilter { eni_id: Some(e.id.clone()), ..LeaseFilter::default() });
        let count = |s: AddressState| e.addresses.iter().filter(|a| a.state == s).count();
        let (free, leased, cooling, lost) = (
            count(AddressState::Free),
            count(AddressState::Leased),
            count(AddressState::Cooling),
            count(AddressState::Lost),
        );
        let _ = write!(
            h,
            "<section class=\"eni\" data-eni-id=\"{id}\" data-total=\"{total}\" data-free=\"{free}\" data-leased=\"{leased}\" data-cooling=\"{cooling}\" data-lost=\"{lost}\" data-attached=\"{attached}\">\
             <h3><code>{id}</code>{role}{detached}</h3>\
             <p>device {dev} &middot; primary IP {pip} &middot; subnet {subnet}{subnet_id} via {gw} &middot; route table {table} &middot; \
             <span class=\"leased\">{leased} leased</span>, <span class=\"free\">{free} free</span>, <span class=\"cooling\">{cooling} cooling</span>{lost_text} of {total}</p>",
            id = esc(&e.id),
            total = e.addresses.len(),
            attached = e.attached,
            role = if e.primary { " (primary)" } else { "" },
            detached = if e.attached { "" } else { " <span class=\"error\">detached</span>" },
            dev = e.device_number,
            pip = e.primary_ip,
            subnet = e.subnet_cidr,
            subnet_id = match (&e.subnet_id, &e.zone) {
                (Some(id), Some(zone)) => format!(" (<code>{}</code>, {})", esc(id), esc(zone)),
                (Some(id), None) => format!(" (<code>{}</code>)", esc(id)),
                _ => String::new(),
            },
            gw = e.subnet_gateway,
            table = e.route_table,
            lost_text = if lost > 0 { format!(", <span class=\"lost\">{lost} lost</span>") } else { String::new() },
        );
        if !e.prefixes.is_empty() {
            h.push_str("<p>prefixes: ");
            for (i, p) in e.prefixes.iter().enumerate() {
                let _ = write!(
                    h,
                    "{sep}<code class=\"prefix\" data-cidr=\"{cidr}\" data-state=\"{state}\" data-leased=\"{leased}\">{cidr}</code> ({leased} leased{lost})",
                    sep = if i == 0 { "" } else { ", " },
                    cidr = esc(&p.cidr),
                    state = if p.state == PrefixState::Lost { "lost" } else { "active" },
                    leased = p.leased,
                    lost = if p.state == PrefixState::Lost { ", <span class=\"lost\">lost</span>" } else { "" },
                );
            }
            h.push_str("</p>");
        }
        if !e.addresses.is_empty() {
            h.push_str("<table><tr><th>IP</th><th>state</th><th>lease</th><th>pod</th><th>since / until</th></tr>");
            for a in &e.addresses {
                let key = a.lease.clone().unwrap_or_default();
                let lease = a.lease.as_ref().and_then(|k| leases.iter().find(|l| &l.key.to_string() == k));
                let pod = lease
                    .map(|l| match (&l.meta.pod_namespace, &l.meta.pod_name) {
                        (Some(ns), Some(name)) => format!("{ns}/{name}"),
                        (None, Some(name)) => name.clone(),
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                let when = match (a.cooling_until, lease) {
                    (Some(until), _) => format!("until {}", utc(until)),
                    (None, Some(l)) => format!("since {}", utc(l.created_at)),
                    _ => String::new(),
                };
                let _ = write!(
                    h,
                    "<tr class=\"address\" data-ip=\"{ip}\" data-state=\"{s}\"><td><code>{ip}</code></td><td class=\"{s}\">{s}</td><td><code>{key}</code></td><td>{pod}</td><td>{when}</td></tr>",
                    ip = a.ip,
                    s = a.state.as_str(),
                    key = esc(&key),
                    pod = esc(&pod),
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>");
    }

    // Recent provider actions and errors, newest first.
    let events = app.pool.recent_events();
    h.push_str("<h2>Recent provider actions</h2><table id=\"provider-events\">");
    h.push_str("<tr><th>at</th><th>action</th><th>outcome</th><th>detail</th></tr>");
    if events.is_empty() {
        h.push_str("<tr><td colspan=\"4\">none since start-up</td></tr>");
    }
    for (failed, e) in events.iter().rev() {
        let (class, outcome) = if *failed { ("error", "failed") } else { ("ok", "done") };
        let _ = write!(
            h,
            "<tr class=\"provider-event\" data-action=\"{a}\" data-failed=\"{failed}\"><td>{at}</td><td><code>{a}</code></td><td class=\"{class}\">{outcome}</td><td>{d}</td></tr>",
            a = esc(&e.action),
            at = utc(e.at),
            d = esc(&e.detail),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn names_the_bad_query_parameter() {
        let bad_value = "Failed to deserialize query string: refresh: invalid digit found in string";
        assert_eq!(query_field(bad_value).as_deref(), Some("refresh"));
        let unknown = "Failed to deserialize query string: unknown field `colour`, expected `refresh`";
        assert_eq!(query_field(unknown).as_deref(), Some("colour"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
