//! The whole API against a real daemon on a real unix socket (and its read-only TCP listener).
//! Every request body sent and every answer received is checked against openapi/openapi.json by
//! the harness.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::common::{Daemon, NET, eventually, lease_request, metric, pool_settles, spec};
use enipool_api::problem;
use serde_json::{Value, json};

fn key_of(l: &Value) -> String {
    format!(
        "{}/{}/{}",
        l["network"].as_str().unwrap(),
        l["container_id"].as_str().unwrap(),
        l["ifname"].as_str().unwrap()
    )
}

fn keys(leases: &[Value]) -> BTreeSet<String> {
    leases.iter().map(key_of).collect()
}

#[tokio::test]
async fn lease_lifecycle_is_idempotent_and_releases_into_cooldown() {
    let d = Daemon::start(&[("--ip-cooldown-period", "30")]).await;
    let api = d.unix();
    let pool = pool_settles(&api, &[("total", 9), ("enis", 1)], Duration::from_millis(100)).await;
    let enis = api.enis().await;
    let primary = enis.iter().find(|e| e["primary"] == true).expect("a primary ENI");

    let request = json!({
        "network": NET, "container_id": "3f2a9c0d1e5b", "ifname": "eth0",
        "pod_namespace": "default", "pod_name": "web-0",
        "netns": "/var/run/netns/cni-1234", "host_veth": "eni3f2a9c0d1e5"
    });
    let created = api.post("/v1/leases", &request).await.expect(201).json();
    // What the plugin needs to wire the pod.
    let ip: Ipv4Addr = created["ip"].as_str().unwrap().parse().expect("an IPv4 address");
    let subnet: ipnet::Ipv4Net = created["subnet_cidr"].as_str().unwrap().parse().expect("a CIDR");
    assert!(subnet.contains(&ip), "{ip} outside {subnet}");
    assert_eq!(created["eni_id"], primary["id"], "the first lease comes from the primary ENI");
    assert_eq!(created["route_table"], 254, "the primary ENI routes through the main table");
    assert_eq!(created["prefix_length"], 32);
    assert_eq!(created["gateway"], "169.254.1.1");
    assert_eq!(created["mtu"], 9001);
    assert_eq!(created["vpc_cidrs"], json!(["10.0.0.0/16"]));
    assert_eq!(created["snat"]["enabled"], true);
    assert_eq!(created["snat"]["node_ip"], primary["primary_ip"]);
    assert_eq!(created["snat"]["randomize"], "prng");
    for field in ["network", "container_id", "ifname", "pod_namespace", "pod_name", "netns", "host_veth"] {
        assert_eq!(created[field], request[field], "{field} echoed");
    }
    assert_eq!(pool["instance_type"], "m5.large");

    // The same key again: 200 and the same lease, even with different pod details.
    let again = api.post("/v1/leases", &request).await.expect(200).json();
    assert_eq!(again, created);
    let mut renamed = request.clone();
    renamed["pod_name"] = json!("web-1");
    assert_eq!(api.post("/v1/leases", &renamed).await.expect(200).json(), created);
    // Without the optional fields too.
    assert_eq!(api.post("/v1/leases", &lease_request(NET, "3f2a9c0d1e5b", "eth0")).await.expect(200).json(), created);
    // Another ifname of the same container is another key.
    let second = api.post("/v1/leases", &lease_request(NET, "3f2a9c0d1e5b", "eth1")).await.expect(201).json();
    assert_ne!(second["ip"], created["ip"]);

    let path = format!("/v1/leases/{NET}/3f2a9c0d1e5b/eth0");
    assert_eq!(api.get(&path).await.expect(200).json(), created);
    assert_eq!(d.tcp().get(&path).await.expect(200).json(), created, "the TCP listener reads the same");
    assert_eq!(api.pool().await["leased"], 2);
    let addr = |enis: &[Value], ip: &str| -> Value {
        enis.iter().flat_map(|e| e["addresses"].as_array().unwrap().iter()).find(|a| a["ip"] == ip).cloned().unwrap()
    };
    let a = addr(&api.enis().await, created["ip"].as_str().unwrap());
    assert_eq!(a["state"], "leased");
    assert_eq!(a["lease"], format!("{NET}/3f2a9c0d1e5b/eth0"));

    // Release: 204 with no body, again 204, then the lease is gone (404 problem).
    let r = api.delete(&path).await;
    r.expect(204);
    assert!(r.body.is_empty());
    api.delete(&path).await.expect(204);
    api.get(&path).await.assert_problem(404, problem::NOT_FOUND, None);
    assert!(api.leases("").await.iter().all(|l| l["ifname"] != "eth0"));

    // The released IP cools down (30 s here) and is not handed out again meanwhile.
    let a = addr(&api.enis().await, created["ip"].as_str().unwrap());
    assert_eq!(a["state"], "cooling");
    assert!(a["lease"].is_null());
    let until = a["cooling_until"].as_u64().expect("cooling_until");
    let released = a["last_released"].as_u64().expect("last_released");
    assert!((29_000..=30_000).contains(&(until - released)), "cooldown {} ms", until - released);
    let p = api.pool().await;
    assert_eq!((p["leased"].as_u64(), p["cooling"].as_u64()), (Some(1), Some(1)), "{p}");
    let re = api.post("/v1/leases", &request).await.expect(201).json();
    assert_ne!(re["ip"], created["ip"], "a cooling IP must not be leased again");
}

#[tokio::test]
async fn lease_lists_filter_by_network_namespace_and_eni() {
    let d = Daemon::start(&[]).await;
    let api = d.unix();
    pool_settles(&api, &[("total", 9)], Duration::from_millis(60)).await;
    // Ten leases: more than the primary ENI's nine IPs, so two ENIs hold them.
    let mut made = Vec::new();
    for i in 0..10 {
        let (network, ns) = match i % 3 {
            0 => (NET, "default"),
            1 => (NET, "kube-system"),
            _ => ("other-net", "default"),
        };
        let mut req = lease_request(network, &format!("c{i:02}"), "eth0");
        req["pod_namespace"] = json!(ns);
        req["pod_name"] = json!(format!("pod-{i}"));
        made.push(api.post("/v1/leases", &req).await.expect(201).json());
    }
    let ips: BTreeSet<&str> = made.iter().map(|l| l["ip"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 10, "ten distinct IPs");

    let all = api.leases("").await;
    assert_eq!(keys(&all), keys(&made));
    let by_key: Vec<String> = all.iter().map(key_of).collect();
    let mut sorted = by_key.clone();
    sorted.sort();
    assert_eq!(by_key, sorted, "listed in key order");
    for l in &all {
        assert_eq!(Some(l), made.iter().find(|m| key_of(m) == key_of(l)), "listed as made");
    }

    let expect = |pred: &dyn Fn(&Value) -> bool| keys(&made.iter().filter(|l| pred(l)).cloned().collect::<Vec<_>>());
    assert_eq!(keys(&api.leases(&format!("network={NET}")).await), expect(&|l| l["network"] == NET));
    assert_eq!(keys(&api.leases("network=other-net").await), expect(&|l| l["network"] == "other-net"));
    assert_eq!(keys(&api.leases("pod_namespace=kube-system").await), expect(&|l| l["pod_namespace"] == "kube-system"));
    assert_eq!(
        keys(&api.leases(&format!("network={NET}&pod_namespace=default")).await),
        expect(&|l| l["network"] == NET && l["pod_namespace"] == "default")
    );
    assert!(api.leases("network=nothing-here").await.is_empty());

    let enis = api.enis().await;
    let used: BTreeSet<&str> = made.iter().map(|l| l["eni_id"].as_str().unwrap()).collect();
    assert!(used.len() >= 2, "ten leases span two ENIs: {used:?}");
    for e in &enis {
        let id = e["id"].as_str().unwrap();
        assert_eq!(keys(&api.leases(&format!("eni={id}")).await), expect(&|l| l["eni_id"] == id), "eni={id}");
        // The ENI view agrees with the leases.
        for a in e["addresses"].as_array().unwrap() {
            let holder = made.iter().find(|l| l["ip"] == a["ip"]);
            match holder {
                Some(l) => {
                    assert_eq!(a["state"], "leased", "{a}");
                    assert_eq!(a["lease"], key_of(l));
                    assert_eq!(l["eni_id"], e["id"]);
                    assert_eq!(l["device_number"], e["device_number"]);
                    assert_eq!(l["route_table"], e["route_table"]);
                }
                None => assert_eq!(a["state"], "free", "{a}"),
            }
        }
    }
    let primary: Vec<&Value> = enis.iter().filter(|e| e["primary"] == true).collect();
    assert_eq!(primary.len(), 1, "one primary ENI");
    for e in enis.iter().filter(|e| e["primary"] == false) {
        assert_eq!(e["route_table"], e["device_number"].as_u64().unwrap() + 1, "secondary ENI table: {e}");
    }

    // Unknown filter: a 400 problem.
    api.get("/v1/leases?namespace=default").await.assert_problem(400, problem::INVALID_FIELD, None);
}

#[tokio::test]
async fn gc_releases_exactly_the_leases_not_in_valid() {
    let d = Daemon::start(&[("--node-reconcile-grace", "0")]).await;
    let api = d.unix();
    let mut made = Vec::new();
    for (network, cid, ifname) in
        [(NET, "keep1", "eth0"), (NET, "keep1", "eth1"), (NET, "stale1", "eth0"), (NET, "stale2", "eth0")]
    {
        made.push(api.post("/v1/leases", &lease_request(network, cid, ifname)).await.expect(201).json());
    }
    let other = api.post("/v1/leases", &lease_request("other-net", "stale1", "eth0")).await.expect(201).json();

    let gc = json!({
        "network": NET,
        "valid": [
            {"container_id": "keep1", "ifname": "eth0"},
            {"container_id": "keep1", "ifname": "eth1"},
            {"container_id": "never-leased", "ifname": "eth0"},
            {"container_id": "stale1", "ifname": "eth9"}
        ]
    });
    let reply = api.post("/v1/gc", &gc).await.expect(200).json();
    let released: Vec<Value> = reply["released"].as_array().unwrap().clone();
    let want: BTreeSet<String> = [format!("{NET}/stale1/eth0"), format!("{NET}/stale2/eth0")].into();
    assert_eq!(keys(&released), want);
    for l in &released {
        assert_eq!(Some(l), made.iter().find(|m| key_of(m) == key_of(l)), "gc answers the leases as they were");
    }
    let left = api.leases("").await;
    let mut expected: BTreeSet<String> = keys(&made).difference(&want).cloned().collect();
    expected.insert(key_of(&other));
    assert_eq!(keys(&left), expected, "other networks and valid attachments are untouched");
    assert_eq!(api.pool().await["leased"], 3);

    // Again: nothing more to release.
    let reply = api.post("/v1/gc", &gc).await.expect(200).json();
    assert_eq!(reply, json!({"released": []}));
    // An empty valid list releases the whole network.
    let reply = api.post("/v1/gc", &json!({"network": NET, "valid": []})).await.expect(200).json();
    assert_eq!(reply["released"].as_array().unwrap().len(), 2);
    assert_eq!(keys(&api.leases("").await), [key_of(&other)].into());
}

/// A lease younger than the node reconciliation grace period may belong to an ADD the runtime's
/// list predates: GC leaves it. (Before the grace, GC released it at once.)
#[tokio::test]
async fn gc_spares_leases_younger_than_the_grace_period() {
    let d = Daemon::start(&[("--node-reconcile-grace", "1h")]).await;
    let api = d.unix();
    let young = api.post("/v1/leases", &lease_request(NET, "adding", "eth0")).await.expect(201).json();
    let reply = api.post("/v1/gc", &json!({"network": NET, "valid": []})).await.expect(200).json();
    assert_eq!(reply, json!({"released": []}));
    assert_eq!(api.get(&format!("/v1/leases/{NET}/adding/eth0")).await.expect(200).json(), young);
}

/// The runtime lists every valid attachment of the node: 1,000 of them (about 110 KiB, past the
/// 64 KiB cap other bodies have) are read, and the ones leased are kept.
#[tokio::test]
async fn gc_reads_a_thousand_valid_attachments() {
    let d = Daemon::start(&[("--node-reconcile-grace", "0")]).await;
    let api = d.unix();
    let cid = |i: usize| format!("{i:064x}");
    for i in 0..3 {
        api.post("/v1/leases", &lease_request(NET, &cid(i), "eth0")).await.expect(201);
    }
    api.post("/v1/leases", &lease_request(NET, "stale", "eth0")).await.expect(201);
    let valid: Vec<Value> = (0..1000).map(|i| json!({"container_id": cid(i), "ifname": "eth0"})).collect();
    let body = json!({"network": NET, "valid": valid});
    assert!(body.to_string().len() > enipool_api::MAX_BODY_BYTES, "the list is larger than other bodies may be");
    let reply = api.post("/v1/gc", &body).await.expect(200).json();
    assert_eq!(keys(reply["released"].as_array().unwrap()), [format!("{NET}/stale/eth0")].into());
    assert_eq!(api.leases("").await.len(), 3);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let d = Daemon::start(&[("--metrics-listen", "127.0.0.1:0")]).await;
    let api = d.unix();
    assert_eq!(api.get("/healthz").await.expect(200).json(), json!({"status": "ok"}));
    assert_eq!(api.get("/readyz").await.expect(200).json(), json!({"ready": true, "reason": null}));
    assert_eq!(d.tcp().get("/readyz").await.expect(200).json(), json!({"ready": true, "reason": null}));
    assert_eq!(d.tcp().get("/healthz").await.expect(200).json(), json!({"status": "ok"}));

    api.lease("m1").await;
    api.lease("m2").await;
    api.release("m2").await;
    // Two leases made, one left; the pool grew to two ENIs for it and holds there.
    let pool = pool_settles(&api, &[("leased", 1), ("total", 18), ("enis", 2)], Duration::from_millis(60)).await;

    for (over, text) in [
        ("socket", api.get("/metrics").await),
        ("tcp", d.tcp().get("/metrics").await),
        ("metrics listener", d.metrics_listener().get("/metrics").await),
    ]
    .into_iter()
    .map(|(over, r)| {
        r.expect(200);
        assert!(r.content_type().unwrap().starts_with("text/plain"), "{over}: {:?}", r.content_type());
        (over, r.text())
    }) {
        let m = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{over}: no {series} in\n{text}"));
        assert_eq!(m("enipool_leases"), 1.0, "{over}");
        assert_eq!(m("enipool_ips_total"), pool["total"].as_f64().unwrap(), "{over}");
        assert_eq!(m("enipool_enis"), pool["enis"].as_f64().unwrap(), "{over}");
        assert_eq!(m("enipool_ips{state=\"leased\"}"), 1.0, "{over}");
        assert_eq!(m("enipool_ips{state=\"free\"}"), pool["free"].as_f64().unwrap(), "{over}");
        assert_eq!(m("enipool_ips{state=\"cooling\"}"), 0.0, "{over}");
        assert_eq!(m("enipool_allocation_seconds_count"), 2.0, "{over}: two leases were made");
        assert_eq!(m("enipool_allocations_exhausted_total"), 0.0, "{over}");
        assert!(m("enipool_provider_calls_total{action=\"create_eni\"}") >= 1.0, "{over}");
        assert!(m("enipool_provider_calls_total{action=\"assign_ips\"}") >= 1.0, "{over}");
        assert!(text.contains("# TYPE enipool_allocation_seconds histogram"), "{over}");
    }

    // The metrics listener serves /metrics alone.
    let only_metrics = d.metrics_listener();
    only_metrics.get("/v1/pool").await.assert_problem(404, problem::NOT_FOUND, None);
    only_metrics.get("/readyz").await.assert_problem(404, problem::NOT_FOUND, None);
}

#[tokio::test]
async fn tcp_listener_serves_the_committed_document_and_docs() {
    let d = Daemon::start(&[]).await;
    let tcp = d.tcp();
    let served = tcp.get("/openapi.json").await;
    served.expect(200);
    assert!(served.content_type().unwrap().starts_with("application/json"));
    assert_eq!(&served.json(), spec().doc(), "/openapi.json over TCP is the committed openapi/openapi.json");
    assert_eq!(d.unix().get("/openapi.json").await.expect(200).json(), served.json());

    let docs = tcp.get("/docs/").await;
    docs.expect(200);
    assert!(docs.content_type().unwrap().starts_with("text/html"), "{:?}", docs.content_type());
    assert!(docs.text().to_ascii_lowercase().contains("swagger"), "{}", docs.text());

    // Read-only routes over TCP answer as on the socket.
    let pool = tcp.pool().await;
    assert_eq!(pool["provider"], "static");
    assert_eq!((pool["max_enis"].as_u64(), pool["ipv4_per_eni"].as_u64()), (Some(3), Some(10)));
    assert_eq!(pool["targets"]["warm_eni_target"], 1);
    assert_eq!(pool["targets"]["max_eni"], 3);
    assert_eq!(pool["targets"]["ip_cooldown_seconds"], 0.0);
    assert!(tcp.leases("").await.is_empty());
    eventually("the ENIs over TCP to show the warm pool", async || {
        let enis = tcp.enis().await;
        let n: usize = enis.iter().map(|e| e["addresses"].as_array().unwrap().len()).sum();
        if n == 9 { Ok(()) } else { Err(format!("{n} addresses")) }
    })
    .await;
}

#[tokio::test]
async fn readyz_answers_503_while_the_provider_cannot_be_synced() {
    let tmp = tempfile::TempDir::new().unwrap();
    let mut d = Daemon::start_in(tmp.path(), &[]).await;
    pool_settles(&d.unix(), &[("total", 9)], Duration::from_millis(60)).await;
    assert!(d.terminate(Duration::from_secs(5)).await.success());
    drop(d);
    // The simulated cloud now claims an ENI holding an IP the ledger has on the primary ENI:
    // the start-up sync cannot adopt it.
    let state = tmp.path().join("static-instance.json");
    let mut sim: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let taken = sim["enis"][0]["secondary_ips"][0].clone();
    sim["enis"].as_array_mut().unwrap().push(json!({
        "id": "eni-0000000000000bad", "device_number": 1, "primary_ip": "10.0.0.200", "secondary_ips": [taken]
    }));
    std::fs::write(&state, serde_json::to_vec(&sim).unwrap()).unwrap();

    let d = Daemon::start_in_unready(tmp.path(), &[]).await;
    let api = d.unix();
    let not_ready = async || {
        let r = api.get("/readyz").await;
        let v = r.json();
        let reason = v["reason"].as_str().unwrap_or_default().to_string();
        if r.status == 503 && v["ready"] == false && reason.starts_with("provider sync failed") {
            Ok(())
        } else {
            Err(format!("{} {v}", r.status))
        }
    };
    // It serves at once ("starting") and syncs beside; once the first attempt has failed it keeps
    // retrying (every pool tick) and keeps failing, alive all along.
    crate::common::eventually("readyz answering 503 with the sync error", not_ready).await;
    crate::common::holds("readyz answering 503 with the sync error", Duration::from_millis(200), not_ready).await;
    d.tcp().get("/readyz").await.expect(503);
    assert_eq!(api.get("/healthz").await.expect(200).json(), json!({"status": "ok"}));
}
