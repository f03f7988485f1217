//! Every kind of bad input gets an RFC 9457 problem document with the documented status, a stable
//! `type` and (for input errors) the `field` at fault, and changes nothing in the ledger.
//! Mutations over the read-only TCP listener get 403.

use crate::common::{Api, Daemon, NET, lease_request, spec};
use enipool_api::problem;
use hyper::Method;
use serde_json::{Value, json};

/// What must not change when a request is refused: every lease, and the pool's lease count.
async fn ledger_snapshot(api: &Api) -> (Vec<Value>, Value) {
    (api.leases("").await, api.pool().await["leased"].clone())
}

/// A daemon with two leases (so releases and changes would show).
async fn daemon_with_leases() -> (Daemon, Api, (Vec<Value>, Value)) {
    let d = Daemon::start(&[]).await;
    let api = d.unix();
    api.lease("existing1").await;
    api.lease("existing2").await;
    let before = ledger_snapshot(&api).await;
    assert_eq!(before.1, 2);
    (d, api, before)
}

#[tokio::test]
async fn malformed_lease_bodies_are_refused_with_the_field_named() {
    let (_d, api, before) = daemon_with_leases().await;
    let ok = lease_request(NET, "newpod", "eth0");
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    // (case, body, whether openapi.json's schema rejects it too, the field named); each is a 422
    // invalid-field problem.
    let cases: Vec<(&str, Value, bool, Option<&str>)> = vec![
        ("container_id is a number", with("container_id", json!(5)), true, Some("container_id")),
        ("network is null", with("network", Value::Null), true, Some("network")),
        ("pod_name is an object", with("pod_name", json!({})), true, Some("pod_name")),
        ("no ifname", without("ifname"), true, Some("ifname")),
        ("no network", without("network"), true, Some("network")),
        ("unknown field", with("podName", json!("x")), true, Some("podName")),
        ("body is an array", json!([ok.clone()]), true, None),
        ("container_id starts with -", with("container_id", json!("-x")), false, Some("container_id")),
        ("container_id has a /", with("container_id", json!("a/b")), false, Some("container_id")),
        ("container_id of 255 bytes", with("container_id", json!("a".repeat(255))), false, Some("container_id")),
        ("container_id empty", with("container_id", json!("")), false, Some("container_id")),
        ("ifname empty", with("ifname", json!("")), false, Some("ifname")),
        ("ifname of 16 bytes", with("ifname", json!("a".repeat(16))), false, Some("ifname")),
        ("ifname with a space", with("ifname", json!("a b")), false, Some("ifname")),
        ("ifname ..", with("ifname", json!("..")), false, Some("ifname")),
        ("network with a space", with("network", json!("bad net")), false, Some("network")),
        ("network starts with _", with("network", json!("_net")), false, Some("network")),
        ("host_veth of 16 bytes", with("host_veth", json!("v".repeat(16))), false, Some("host_veth")),
        ("pod_name with a control character", with("pod_name", json!("a\u{7}b")), false, Some("pod_name")),
        ("pod_namespace of 254 bytes", with("pod_namespace", json!("n".repeat(254))), false, Some("pod_namespace")),
    ];
    for (case, body, schema_rejects, field) in cases {
        let schema_errors = spec().request_errors("POST", "/v1/leases", &body);
        assert_eq!(
            !schema_errors.is_empty(),
            schema_rejects,
            "{case}: openapi.json's view of {body}: {schema_errors:?}"
        );
        let r = api.post_unchecked("/v1/leases", &body).await;
        let p = r.assert_problem(422, problem::INVALID_FIELD, field);
        assert!(r.headers.get("retry-after").is_none(), "{case}");
        assert_eq!(ledger_snapshot(&api).await, before, "{case} changed the ledger ({p})");
    }

    // The boundaries are allowed.
    let longest = with("container_id", json!("a".repeat(254)));
    let r = api.post("/v1/leases", &with("ifname", json!("a".repeat(15)))).await;
    r.expect(201);
    api.post("/v1/leases", &longest).await.expect(201);
}

#[tokio::test]
async fn unparsable_oversize_and_non_json_bodies_are_refused() {
    let (_d, api, before) = daemon_with_leases().await;
    let valid = serde_json::to_vec(&lease_request(NET, "newpod", "eth0")).unwrap();
    let padded = |len: usize| {
        let mut b = valid.clone();
        b.resize(len, b' ');
        b
    };
    let limit = enipool_api::MAX_BODY_BYTES;
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b" {}");
    // (case, content type, body, status, type)
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("truncated JSON", "application/json", valid[..valid.len() - 1].to_vec(), 400, problem::INVALID_BODY),
        ("not JSON at all", "application/json", b"network=aws-cni".to_vec(), 400, problem::INVALID_BODY),
        ("empty body", "application/json", Vec::new(), 400, problem::INVALID_BODY),
        ("a second JSON value after the first", "application/json", trailing, 400, problem::INVALID_BODY),
        ("garbage after the JSON", "application/json", [&valid[..], b"x"].concat(), 400, problem::INVALID_BODY),
        ("invalid UTF-8", "application/json", b"{\"network\":\"\xff\"}".to_vec(), 400, problem::INVALID_BODY),
        ("one byte over 64 KiB", "application/json", padded(limit + 1), 413, problem::BODY_TOO_LARGE),
        ("form encoded", "application/x-www-form-urlencoded", valid.clone(), 415, problem::UNSUPPORTED_MEDIA_TYPE),
        ("text/plain", "text/plain", valid.clone(), 415, problem::UNSUPPORTED_MEDIA_TYPE),
        ("json-seq", "application/json-seq", valid.clone(), 415, problem::UNSUPPORTED_MEDIA_TYPE),
    ];
    for (case, content_type, body, status, ptype) in cases {
        let r = api.post_bytes("/v1/leases", content_type, body).await;
        let p = r.assert_problem(status, ptype, None);
        assert!(p.get("field").is_none(), "{case}: no field for a body-level error: {p}");
        assert_eq!(ledger_snapshot(&api).await, before, "{case} changed the ledger ({p})");
    }
    // A body far over the limit: the daemon answers without reading it all.
    for len in [limit + 1, 1 << 20, 8 << 20] {
        let r = api.post_large("/v1/leases", "application/json", padded(len)).await;
        r.assert_problem(413, problem::BODY_TOO_LARGE, None);
        assert_eq!(ledger_snapshot(&api).await, before, "a {len}-byte body changed the ledger");
    }
    // Exactly 64 KiB (whitespace-padded valid JSON) is within the limit; a charset parameter and
    // any case of the media type are fine.
    api.post_bytes("/v1/leases", "application/json", padded(limit)).await.expect(201);
    let other = serde_json::to_vec(&lease_request(NET, "newpod2", "eth0")).unwrap();
    api.post_bytes("/v1/leases", "Application/JSON; charset=utf-8", other).await.expect(201);

    // /v1/gc reads its body the same way.
    let gc_before = ledger_snapshot(&api).await;
    api.post_bytes("/v1/gc", "application/json", b"{\"network\":".to_vec()).await.assert_problem(
        400,
        problem::INVALID_BODY,
        None,
    );
    let gc_cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("no valid list", json!({"network": NET}), Some("valid")),
        ("valid is not a list", json!({"network": NET, "valid": {}}), Some("valid")),
        (
            "ifname is a number",
            json!({"network": NET, "valid": [{"container_id": "a", "ifname": 5}]}),
            Some("valid[0].ifname"),
        ),
        (
            "unknown field in an attachment",
            json!({"network": NET, "valid": [{"container_id": "a", "ifname": "eth0", "x": 1}]}),
            Some("valid[0].x"),
        ),
        ("bad network", json!({"network": "bad net", "valid": []}), Some("network")),
        (
            "bad container_id",
            json!({"network": NET, "valid": [{"container_id": "-a", "ifname": "eth0"}]}),
            Some("valid[].container_id"),
        ),
        (
            "bad ifname",
            json!({"network": NET, "valid": [{"container_id": "a", "ifname": "a/b"}]}),
            Some("valid[].ifname"),
        ),
    ];
    for (case, body, field) in gc_cases {
        let r = api.post_unchecked("/v1/gc", &body).await;
        let p = r.assert_problem(422, problem::INVALID_FIELD, field);
        assert_eq!(ledger_snapshot(&api).await, gc_before, "gc with {case} changed the ledger ({p})");
    }
}

#[tokio::test]
async fn bad_path_segments_unknown_routes_and_wrong_methods() {
    let (_d, api, before) = daemon_with_leases().await;
    let long = "a".repeat(255);
    let sixteen = "a".repeat(16);
    // (path, field): each segment invalid in its own way; %2F and %20 decode to '/' and ' '.
    let bad_paths: Vec<(String, &str)> = vec![
        (format!("/v1/leases/{NET}/-x/eth0"), "container_id"),
        (format!("/v1/leases/{NET}/a%2Fb/eth0"), "container_id"),
        (format!("/v1/leases/{NET}/{long}/eth0"), "container_id"),
        (format!("/v1/leases/{NET}/existing1/{sixteen}"), "ifname"),
        (format!("/v1/leases/{NET}/existing1/a%20b"), "ifname"),
        (format!("/v1/leases/{NET}/existing1/a%2Fb"), "ifname"),
        (format!("/v1/leases/{NET}/existing1/.."), "ifname"),
        ("/v1/leases/bad%20net/existing1/eth0".to_string(), "network"),
        ("/v1/leases/-net/existing1/eth0".to_string(), "network"),
    ];
    for (path, field) in &bad_paths {
        for method in [Method::GET, Method::DELETE] {
            let r = api.send(method.clone(), path, &[], None).await;
            r.assert_problem(400, problem::INVALID_FIELD, Some(field));
            assert_eq!(ledger_snapshot(&api).await, before, "{method} {path} changed the ledger");
        }
    }

    // Routes that do not exist: 404; a raw '/' in a segment makes another (unknown) route.
    for path in ["/v2/leases", "/v1/lease", "/v1/leases/aws-cni/a/b/eth0", "/v1/leases/aws-cni/existing1", "/", "/v1/"]
    {
        for method in [Method::GET, Method::DELETE, Method::POST] {
            let r = api.send(method.clone(), path, &[("content-type", "application/json")], Some(b"{}".to_vec())).await;
            r.assert_problem(404, problem::NOT_FOUND, None);
        }
    }
    // Methods a route lacks: 405.
    let lease_path = format!("/v1/leases/{NET}/existing1/eth0");
    let wrong: Vec<(Method, &str)> = vec![
        (Method::PUT, "/v1/leases"),
        (Method::DELETE, "/v1/leases"),
        (Method::PATCH, "/v1/leases"),
        (Method::POST, &lease_path),
        (Method::PUT, &lease_path),
        (Method::GET, "/v1/gc"),
        (Method::DELETE, "/v1/pool"),
        (Method::POST, "/v1/enis"),
        (Method::POST, "/healthz"),
    ];
    for (method, path) in wrong {
        let r = api.send(method.clone(), path, &[("content-type", "application/json")], Some(b"{}".to_vec())).await;
        r.assert_problem(405, problem::METHOD_NOT_ALLOWED, None);
        assert_eq!(ledger_snapshot(&api).await, before, "{method} {path} changed the ledger");
    }
    assert_eq!(api.get(&lease_path).await.expect(200).json()["container_id"], "existing1");
}

#[tokio::test]
async fn mutations_over_tcp_are_forbidden_and_change_nothing() {
    let (d, api, before) = daemon_with_leases().await;
    let tcp = d.tcp();
    let lease_path = format!("/v1/leases/{NET}/existing1/eth0");
    let attempts: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/v1/leases", Some(lease_request(NET, "via-tcp", "eth0"))),
        (Method::POST, "/v1/leases", Some(lease_request(NET, "existing1", "eth0"))),
        (Method::DELETE, &lease_path, None),
        (Method::POST, "/v1/gc", Some(json!({"network": NET, "valid": []}))),
        (Method::PUT, "/v1/leases", Some(json!({}))),
        (Method::PATCH, &lease_path, Some(json!({}))),
        (Method::DELETE, "/v1/leases/bad%20net/x/eth0", None),
        (Method::POST, "/v1/nothing-here", Some(json!({}))),
    ];
    for (method, path, body) in attempts {
        if let Some(b) = &body
            && method == Method::POST
            && spec().request_schema("POST", path).is_some()
        {
            spec().check_request("POST", path, b);
        }
        let (headers, bytes): (&[(&str, &str)], _) = match &body {
            Some(b) => (&[("content-type", "application/json")], Some(serde_json::to_vec(b).unwrap())),
            None => (&[], None),
        };
        let r = tcp.send(method.clone(), path, headers, bytes).await;
        r.assert_problem(403, problem::READ_ONLY_LISTENER, None);
        assert_eq!(ledger_snapshot(&api).await, before, "{method} {path} over TCP changed the ledger");
    }
    assert_eq!(tcp.get(&lease_path).await.expect(200).json()["container_id"], "existing1");
    tcp.get(&format!("/v1/leases/{NET}/via-tcp/eth0")).await.assert_problem(404, problem::NOT_FOUND, None);
    // The same requests on the socket do what they say.
    api.post("/v1/leases", &lease_request(NET, "via-socket", "eth0")).await.expect(201);
    api.delete(&lease_path).await.expect(204);
}
