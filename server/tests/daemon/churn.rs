//! Many clients allocating and releasing at once never see one IP leased to two live keys, and
//! the pool comes out of it consistent. And an instance with no IP left answers 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Daemon, Listener, NET, lease_request, metric, pool_settles, pool_summary, spec};
use enipool_api::problem;
use hyper::Method;
use serde_json::Value;

const CLIENTS: usize = 64;
const PAIRS_PER_CLIENT: usize = 200;
/// Every this many pairs a client asks for its live key again and must get the same IP (200).
const REPEAT_EVERY: usize = 10;

/// Who holds which IP, as the clients know it: updated on every 201 and before every release.
#[derive(Default)]
struct Holders {
    by_ip: HashMap<String, String>,
    peak: usize,
}

/// Sends one request with the crate's own client and checks it against openapi.json.
async fn call(
    client: &mut enipool_server::client::Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    if let Some(b) = body {
        spec().check_request(method.as_str(), path, b);
    }
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    let reply = client.request(method.clone(), path, bytes).await.unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let status = reply.status.as_u16();
    spec().check_response(method.as_str(), path, Listener::Socket, status, reply.content_type.as_deref(), &reply.body);
    let value = if reply.body.is_empty() { Value::Null } else { serde_json::from_slice(&reply.body).unwrap() };
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_share_an_ip() {
    // 15 ENIs x 49 pod IPs; 100 warm so the pool grows ahead of the 64 clients.
    let d = Daemon::start(&[
        ("--instance-type", "m5.24xlarge"),
        ("--warm-ip-target", "100"),
        ("--ip-cooldown-period", "0"),
        ("--allocation-wait", "2s"),
        ("--log", "warn"),
    ])
    .await;
    let api = d.unix();
    pool_settles(&api, &[("total", 100), ("free", 100)], Duration::from_millis(60)).await;

    let holders = Arc::new(Mutex::new(Holders::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let holders = Arc::clone(&holders);
        let mut client = d.client();
        tasks.push(tokio::spawn(async move {
            let mut allocations = 0u64;
            for i in 0..PAIRS_PER_CLIENT {
                let container = format!("churn-{c:02}-{i:04}");
                let key = format!("{NET}/{container}/eth0");
                let req = lease_request(NET, &container, "eth0");
                let (status, lease) = call(&mut client, Method::POST, "/v1/leases", Some(&req)).await;
                allocations += 1;
                assert_eq!(status, 201, "{key}: {lease}");
                let ip = lease["ip"].as_str().unwrap().to_string();
                {
                    let mut h = holders.lock().unwrap();
                    if let Some(other) = h.by_ip.get(&ip) {
                        panic!("{ip} leased to {key} while {other} still holds it");
                    }
                    h.by_ip.insert(ip.clone(), key.clone());
                    h.peak = h.peak.max(h.by_ip.len());
                }
                if i % REPEAT_EVERY == 0 {
                    let (status, again) = call(&mut client, Method::POST, "/v1/leases", Some(&req)).await;
                    allocations += 1;
                    assert_eq!((status, &again), (200, &lease), "{key} asked again");
                }
                // Forget the holder before the release is sent: from then on the IP may go to
                // someone else.
                assert_eq!(holders.lock().unwrap().by_ip.remove(&ip).as_deref(), Some(key.as_str()));
                let (status, body) = call(&mut client, Method::DELETE, &format!("/v1/leases/{key}"), None).await;
                assert_eq!(status, 204, "{key}: {body}");
            }
            allocations
        }));
    }
    let mut allocations = 0;
    for t in tasks {
        allocations += t.await.expect("a client task failed");
    }
    let took = started.elapsed();
    let peak = holders.lock().unwrap().peak;
    eprintln!("{CLIENTS} clients x {PAIRS_PER_CLIENT} pairs in {took:?}; at most {peak} leases live at once");
    assert!(holders.lock().unwrap().by_ip.is_empty());
    assert!(peak > 1, "the clients overlapped");

    // Nothing leased, nothing refused, every address accounted for exactly once. The pool
    // first settles back to its warm target: /v1/pool and /v1/enis are separate reads, so they
    // agree only while the pool manager is not shrinking between them.
    assert!(api.leases("").await.is_empty());
    pool_settles(&api, &[("total", 100), ("free", 100), ("leased", 0)], Duration::from_millis(60)).await;
    let p = api.pool().await;
    assert_eq!(p["leased"], 0, "{}", pool_summary(&p));
    assert_eq!(p["exhausted_allocations"], 0, "{}", pool_summary(&p));
    let enis = api.enis().await;
    let mut seen = HashMap::new();
    for e in &enis {
        let addresses = e["addresses"].as_array().unwrap();
        assert!(addresses.len() <= 49, "{} holds {} addresses", e["id"], addresses.len());
        for a in addresses {
            assert_ne!(a["state"], "leased", "{a}");
            assert!(a["lease"].is_null(), "{a}");
            assert!(seen.insert(a["ip"].as_str().unwrap().to_string(), e["id"].clone()).is_none(), "{a} twice");
        }
    }
    assert_eq!(enis.len() as u64, p["enis"].as_u64().unwrap());
    assert_eq!(seen.len() as u64, p["total"].as_u64().unwrap());
    let metrics = api.get("/metrics").await.expect(200).text();
    assert_eq!(metric(&metrics, "enipool_allocation_seconds_count"), Some(allocations as f64));
    assert_eq!(metric(&metrics, "enipool_leases"), Some(0.0));

    // The ledger checks all its invariants when it opens: stop the daemon and open it again.
    let d = d.restart().await;
    let api = d.unix();
    assert!(api.leases("").await.is_empty());
    pool_settles(&api, &[("total", 100), ("free", 100), ("leased", 0)], Duration::from_millis(60)).await;
}

#[tokio::test]
async fn an_instance_without_free_ips_answers_503() {
    // t3.micro: 2 ENIs x 2 IPv4 -> one pod IP per ENI, two in all.
    let d = Daemon::start(&[("--instance-type", "t3.micro"), ("--allocation-wait", "300ms")]).await;
    let api = d.unix();
    let a = api.lease("a").await;
    let b = api.lease("b").await;
    assert_ne!(a["ip"], b["ip"]);
    assert_ne!(a["eni_id"], b["eni_id"], "one pod IP per ENI");
    let started = Instant::now();
    let r = api.post("/v1/leases", &lease_request(NET, "c", "eth0")).await;
    let waited = started.elapsed();
    let p = r.assert_problem(503, problem::POOL_EXHAUSTED, None);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{p}");
    assert!(waited >= Duration::from_millis(300), "it waits --allocation-wait for the pool to grow: {waited:?}");
    let pool = api.pool().await;
    assert_eq!(pool["exhausted_allocations"], 1, "{}", pool_summary(&pool));
    assert_eq!((pool["total"].as_u64(), pool["leased"].as_u64(), pool["enis"].as_u64()), (Some(2), Some(2), Some(2)));
    assert!(api.get("/v1/leases/aws-cni/c/eth0").await.status == 404);
    let metrics = api.get("/metrics").await.expect(200).text();
    assert_eq!(metric(&metrics, "enipool_allocations_exhausted_total"), Some(1.0));
    // The same key already leased is still answered (200) with no free IP left.
    assert_eq!(api.post("/v1/leases", &lease_request(NET, "a", "eth0")).await.expect(200).json(), a);
}
