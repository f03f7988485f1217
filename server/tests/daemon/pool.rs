//! The pool manager reaches and holds each warm-target configuration on the static provider's
//! simulated instances (server/src/pool/plan.rs `plan`: WARM_ENI_TARGET keeps whole ENIs of free IPs,
//! WARM_IP_TARGET / MINIMUM_IP_TARGET count single IPs, MAX_ENI caps, and cooling IPs count as
//! in use, never as available).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{Daemon, M5_LARGE_PER_ENI, NET, last_action_is, lease_request, pool_settles};
use enipool_api::problem;
use serde_json::Value;

/// A dozen pool ticks (20 ms each) in which nothing may change once the target is reached.
const HOLD: Duration = Duration::from_millis(250);

fn ips_of(leases: &[Value]) -> BTreeSet<String> {
    leases.iter().map(|l| l["ip"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn warm_eni_target_keeps_one_spare_eni_and_gives_it_back() {
    let d = Daemon::start(&[]).await;
    let api = d.unix();
    let n = M5_LARGE_PER_ENI;
    // One ENI's worth of free IPs, on the primary ENI.
    let p = pool_settles(&api, &[("enis", 1), ("total", n), ("free", n), ("leased", 0), ("cooling", 0)], HOLD).await;
    assert_eq!(p["targets"]["warm_eni_target"], 1);
    assert!(p["targets"]["warm_ip_target"].is_null() && p["targets"]["minimum_ip_target"].is_null());
    let enis = api.enis().await;
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0]["primary"], true);
    assert_eq!(enis[0]["addresses"].as_array().unwrap().len() as u64, n);

    // One pod: a whole free ENI is still wanted, so a second ENI comes, and stays.
    let lease = api.lease("pod1").await;
    let p = pool_settles(&api, &[("enis", 2), ("total", 2 * n), ("free", 2 * n - 1), ("leased", 1)], HOLD).await;
    assert_eq!(p["desired_total"], 2 * n);
    let enis = api.enis().await;
    let secondary = enis.iter().find(|e| e["primary"] == false).expect("a second ENI").clone();
    assert_eq!(secondary["device_number"], 1);
    assert_eq!(secondary["addresses"].as_array().unwrap().len() as u64, n);
    assert_eq!(lease["eni_id"], enis.iter().find(|e| e["primary"] == true).unwrap()["id"]);

    // Released (no cooldown): the spare ENI is in excess, and is given back (once the shrink
    // interval allows); the pool returns to one ENI of free IPs and holds there.
    api.release("pod1").await;
    pool_settles(&api, &[("enis", 1), ("total", n), ("free", n), ("leased", 0), ("cooling", 0)], HOLD).await;
    last_action_is(&api, "delete_eni").await;
    let enis = api.enis().await;
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0]["primary"], true, "the primary ENI is never given back");
    assert!(enis.iter().all(|e| e["id"] != secondary["id"]));
}

#[tokio::test]
async fn warm_ip_and_minimum_ip_targets() {
    let d = Daemon::start(&[("--warm-ip-target", "5"), ("--minimum-ip-target", "10")]).await;
    let api = d.unix();
    // MINIMUM_IP_TARGET: 10 IPs although 5 would be warm enough: the primary's 9 and one more
    // on a second ENI.
    let p = pool_settles(&api, &[("total", 10), ("free", 10), ("enis", 2)], HOLD).await;
    assert_eq!(
        (p["targets"]["warm_ip_target"].as_u64(), p["targets"]["minimum_ip_target"].as_u64()),
        (Some(5), Some(10))
    );

    // 8 leased: 8 + 5 warm = 13.
    let mut leases = Vec::new();
    for i in 0..8 {
        leases.push(api.lease(&format!("pod{i}")).await);
    }
    assert_eq!(ips_of(&leases).len(), 8);
    pool_settles(&api, &[("total", 13), ("free", 5), ("leased", 8), ("enis", 2)], HOLD).await;

    // All released: back to the minimum, single IPs given back (the ENI stays: it is needed).
    for i in 0..8 {
        api.release(&format!("pod{i}")).await;
    }
    pool_settles(&api, &[("total", 10), ("free", 10), ("leased", 0), ("enis", 2)], HOLD).await;
    last_action_is(&api, "unassign_ips").await;
}

#[tokio::test]
async fn max_eni_caps_the_pool_and_refuses_beyond_it() {
    let d = Daemon::start(&[("--max-eni", "1"), ("--allocation-wait", "300ms")]).await;
    let api = d.unix();
    let n = M5_LARGE_PER_ENI;
    let p = pool_settles(&api, &[("enis", 1), ("total", n)], HOLD).await;
    assert_eq!(p["targets"]["max_eni"], 1);
    let mut leases = Vec::new();
    for i in 0..n {
        leases.push(api.lease(&format!("pod{i}")).await);
    }
    assert_eq!(ips_of(&leases).len() as u64, n);
    // The warm target would want a second ENI; MAX_ENI=1 caps the wish at the one there is.
    pool_settles(&api, &[("enis", 1), ("total", n), ("free", 0), ("leased", n), ("desired_total", n)], HOLD).await;

    let r = api.post("/v1/leases", &lease_request(NET, "one-too-many", "eth0")).await;
    r.assert_problem(503, problem::POOL_EXHAUSTED, None);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let p = pool_settles(&api, &[("enis", 1), ("total", n), ("leased", n)], HOLD).await;
    assert_eq!(p["exhausted_allocations"], 1);
    // A release makes room again.
    api.release("pod0").await;
    api.lease("one-too-many").await;
}

#[tokio::test]
async fn cooling_ips_are_not_counted_as_available() {
    let d = Daemon::start(&[("--warm-ip-target", "2"), ("--ip-cooldown-period", "30")]).await;
    let api = d.unix();
    pool_settles(&api, &[("total", 2), ("free", 2), ("enis", 1)], HOLD).await;
    let first = vec![api.lease("a").await, api.lease("b").await];
    pool_settles(&api, &[("total", 4), ("free", 2), ("leased", 2)], HOLD).await;

    // Released into a 30 s cooldown: the two IPs are not free, so the pool keeps two others free
    // (it neither counts the cooling ones as warm nor gives back what it holds).
    api.release("a").await;
    api.release("b").await;
    let p = pool_settles(&api, &[("total", 4), ("free", 2), ("leased", 0), ("cooling", 2)], HOLD).await;
    assert_eq!(p["desired_total"], 4);
    let cooling: BTreeSet<String> = api
        .enis()
        .await
        .iter()
        .flat_map(|e| e["addresses"].as_array().unwrap().clone())
        .filter(|a| a["state"] == "cooling")
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cooling, ips_of(&first));

    // New pods get the warm IPs, never the cooling ones, and the pool grows to stay 2 ahead.
    let second = vec![api.lease("c").await, api.lease("d").await];
    assert!(ips_of(&second).is_disjoint(&cooling), "{:?} vs cooling {cooling:?}", ips_of(&second));
    pool_settles(&api, &[("total", 6), ("free", 2), ("leased", 2), ("cooling", 2)], HOLD).await;
}

/// Prefix delegation on the static provider's m5.large: the pool grows and shrinks by whole /28s,
/// each taking one slot of the ENI, with WARM_PREFIX_TARGET's default of one wholly free prefix.
#[tokio::test]
async fn prefix_mode_grows_and_shrinks_by_whole_prefixes() {
    let d = Daemon::start(&[("--prefix-delegation", "true")]).await;
    let api = d.unix();
    let p = pool_settles(&api, &[("enis", 1), ("prefixes", 1), ("free_prefixes", 1), ("total", 16)], HOLD).await;
    assert_eq!(p["mode"], "prefixes");
    assert_eq!(p["targets"]["warm_prefix_target"], 1);
    assert_eq!(p["prefix_plan"]["desired"], 1);
    last_action_is(&api, "assign_prefixes").await;

    // 20 pods fill one prefix and part of a second; one wholly free prefix stays: 3, on the
    // primary ENI (9 slots).
    let leases: Vec<Value> = futures_join(&api, 20).await;
    assert_eq!(ips_of(&leases).len(), 20, "one address per pod");
    pool_settles(&api, &[("enis", 1), ("prefixes", 3), ("leased", 20), ("total", 48)], HOLD).await;
    let enis = api.enis().await;
    let held: BTreeSet<String> =
        enis[0]["addresses"].as_array().unwrap().iter().map(|a| a["ip"].as_str().unwrap().to_string()).collect();
    assert_eq!(held.len(), 48, "the 3 prefixes' addresses, one by one");
    assert!(ips_of(&leases).is_subset(&held));
    // /v1/enis names each prefix with how many of its addresses are leased; so does the page.
    let prefixes = enis[0]["prefixes"].as_array().unwrap();
    assert_eq!(prefixes.len(), 3);
    let leased: Vec<u64> = prefixes.iter().map(|p| p["leased"].as_u64().unwrap()).collect();
    assert_eq!(leased.iter().sum::<u64>(), 20, "{prefixes:?}");
    assert!(prefixes.iter().all(|p| p["state"] == "active"));
    let page = d.tcp().get("/status?refresh=0").await.text();
    for p in prefixes {
        let shown = format!(
            "data-cidr=\"{}\" data-state=\"active\" data-leased=\"{}\"",
            p["cidr"].as_str().unwrap(),
            p["leased"]
        );
        assert!(page.contains(&shown), "the page shows {shown}");
    }

    // All gone (no cooldown in tests): wholly free prefixes go back, down to the warm one.
    for i in 0..20 {
        api.release(&format!("pod{i:02}")).await;
    }
    pool_settles(&api, &[("enis", 1), ("prefixes", 1), ("leased", 0), ("total", 16)], HOLD).await;
    last_action_is(&api, "unassign_prefixes").await;
}

/// Leases `n` pods (`pod00`..) one after another.
async fn futures_join(api: &crate::common::Api, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(api.lease(&format!("pod{i:02}")).await);
    }
    out
}

/// Switching prefix delegation on keeps the secondary IPs pods hold until they are free, then
/// gives them back; switching it off does the same for prefixes.
#[tokio::test]
async fn switching_modes_keeps_what_pods_hold_until_it_is_free() {
    let d = Daemon::start(&[("--warm-ip-target", "2")]).await;
    let api = d.unix();
    let on_ip = api.lease("on-ip").await;
    pool_settles(&api, &[("enis", 1), ("prefixes", 0), ("leased", 1), ("total", 3)], HOLD).await;

    let d = d.restart_with(&[("--prefix-delegation", "true")]).await;
    let api = d.unix();
    // The leased secondary IP stays; the free ones go; a prefix comes (WARM_IP_TARGET 2, met in
    // whole prefixes).
    let p = reaches(&api, &[("enis", 1), ("prefixes", 1), ("leased", 1), ("total", 17)]).await;
    assert_eq!(p["mode"], "prefixes");
    let again = api.get(&format!("/v1/leases/{NET}/on-ip/eth0")).await.expect(200).json();
    assert_eq!(again["ip"], on_ip["ip"]);
    let on_prefix = api.lease("on-prefix").await;
    assert_ne!(on_prefix["ip"], on_ip["ip"]);
    api.release("on-ip").await;
    reaches(&api, &[("enis", 1), ("prefixes", 1), ("leased", 1), ("total", 16)]).await;
    let enis = api.enis().await;
    assert!(enis[0]["addresses"].as_array().unwrap().iter().all(|a| a["ip"] != on_ip["ip"]), "the freed IP went back");

    // Off again: the prefix stays while its pod does, then goes; single IPs come.
    let d = d.restart_with(&[("--prefix-delegation", "false")]).await;
    let api = d.unix();
    let p = reaches(&api, &[("enis", 1), ("prefixes", 1), ("leased", 1), ("total", 16)]).await;
    assert_eq!(p["mode"], "ips");
    api.release("on-prefix").await;
    pool_settles(&api, &[("enis", 1), ("prefixes", 0), ("leased", 0), ("total", 2)], HOLD).await;
}

/// The pool shows `want` (figures only: a prefix a pod holds may leave it in excess).
async fn reaches(api: &crate::common::Api, want: &[(&str, u64)]) -> Value {
    crate::common::eventually(&format!("the pool to show {want:?}"), async || {
        let p = api.pool().await;
        if want.iter().all(|(k, v)| p[*k] == *v) { Ok(p) } else { Err(crate::common::pool_summary(&p)) }
    })
    .await
}
