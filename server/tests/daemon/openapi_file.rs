//! The committed OpenAPI document is the one this build serves, and the tests' validator built
//! from it tells valid documents from invalid ones.

use crate::common::spec::{Listener, committed_path, spec};
use serde_json::json;

#[test]
fn committed_openapi_json_is_what_the_daemon_generates() {
    let generated = enipool_server::api::openapi_json();
    let committed = std::fs::read_to_string(committed_path()).expect("reading openapi/openapi.json");
    if generated != committed {
        let line = generated.lines().zip(committed.lines()).position(|(a, b)| a != b).map_or_else(
            || {
                format!(
                    "lengths differ: generated {} lines, committed {}",
                    generated.lines().count(),
                    committed.lines().count()
                )
            },
            |i| {
                format!(
                    "first difference at line {}: generated {:?}, committed {:?}",
                    i + 1,
                    generated.lines().nth(i),
                    committed.lines().nth(i)
                )
            },
        );
        panic!(
            "openapi/openapi.json is stale ({line}).\n\
             Regenerate it with: cargo run -p enipool-server -- openapi > openapi/openapi.json"
        );
    }
}

#[test]
fn validator_accepts_the_documented_shapes_and_rejects_others() {
    let s = spec();
    let lease_request = json!({"network": "aws-cni", "container_id": "abc", "ifname": "eth0", "pod_name": null});
    assert!(s.request_errors("POST", "/v1/leases", &lease_request).is_empty());
    for bad in [
        json!({"network": "aws-cni", "container_id": 5, "ifname": "eth0"}),
        json!({"network": "aws-cni", "container_id": "abc"}),
        json!({"network": "aws-cni", "container_id": "abc", "ifname": "eth0", "extra": 1}),
        json!(["aws-cni"]),
    ] {
        assert!(!s.request_errors("POST", "/v1/leases", &bad).is_empty(), "{bad} should break LeaseRequest");
    }
    let problem = json!({"type": "urn:enipool:problem:not-found", "title": "Not found", "status": 404, "detail": "x"});
    assert!(s.errors("/components/schemas/Problem", &problem).is_empty());
    assert!(!s.errors("/components/schemas/Problem", &json!({"type": "t", "status": "404"})).is_empty());
    let readiness = "/paths/~1readyz/get/responses/200/content/application~1json/schema";
    assert!(s.errors(readiness, &json!({"ready": true, "reason": null})).is_empty());
    assert!(!s.errors(readiness, &json!({"ready": "yes"})).is_empty());
    assert!(s.component("AddressState").is_valid(&json!("cooling")));
    assert!(!s.component("AddressState").is_valid(&json!("gone")));

    assert_eq!(s.template("/v1/leases?network=x").as_deref(), Some("/v1/leases"));
    assert_eq!(s.template("/v1/leases/n/c/i").as_deref(), Some("/v1/leases/{network}/{container_id}/{ifname}"));
    assert_eq!(s.template("/v1/leases/n/c"), None);
    assert_eq!(s.template("/v1/leases/n//i"), None);
    assert_eq!(
        s.request_schema("POST", "/v1/gc").as_deref(),
        Some("/paths/~1v1~1gc/post/requestBody/content/application~1json/schema")
    );
    // The checker refuses an answer the document does not list.
    let undocumented = std::panic::catch_unwind(|| {
        spec().check_response("GET", "/v1/pool", Listener::Socket, 418, Some("application/json"), b"{}");
    });
    assert!(undocumented.is_err(), "an undocumented status must fail the check");
    let wrong_type = std::panic::catch_unwind(|| {
        spec().check_response("GET", "/healthz", Listener::Socket, 200, Some("text/plain"), b"ok");
    });
    assert!(wrong_type.is_err(), "an undocumented content type must fail the check");
}
