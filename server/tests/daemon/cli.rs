//! `enipoold status` and `enipoold leases`: tables (and JSON) read from a running daemon.

use std::process::Output;
use std::time::Duration;

use crate::common::{Daemon, NET, enipoold, pool_settles};
use serde_json::{Value, json};

async fn run(args: &[&str]) -> Output {
    let mut cmd = enipoold();
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("running enipoold")
}

async fn run_ok(args: &[&str]) -> String {
    let out = run(args).await;
    assert!(out.status.success(), "enipoold {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn status_and_leases_print_the_pool_and_the_leases() {
    let d = Daemon::start(&[]).await;
    let api = d.unix();
    let request = json!({"network": NET, "container_id": "0123456789abcdef", "ifname": "eth0",
        "pod_namespace": "default", "pod_name": "web-0", "host_veth": "eni0123456789a"});
    let lease = api.post("/v1/leases", &request).await.expect(201).json();
    let pool = pool_settles(&api, &[("leased", 1), ("enis", 2), ("total", 18)], Duration::from_millis(60)).await;
    let enis = api.enis().await;
    let socket = d.socket.to_str().unwrap();

    let status = run_ok(&["status", "--socket", socket]).await;
    assert!(
        status.contains("instance i-0000000000000static (m5.large, provider static): up to 3 ENIs x 10 IPv4"),
        "{status}"
    );
    assert!(
        status.contains("IPs: 18 total, 17 free, 1 leased, 0 cooling; wanted 18 (deficit 0, excess 0)"),
        "{status}"
    );
    assert!(status.contains("WARM_ENI_TARGET=1 WARM_IP_TARGET=- MINIMUM_IP_TARGET=- MAX_ENI=3"), "{status}");
    let header = status.lines().find(|l| l.starts_with("ENI ")).expect("the ENI table's header");
    for col in [
        "DEVICE",
        "PRIMARY",
        "PRIMARY IP",
        "SUBNET",
        "SUBNET ID",
        "ZONE",
        "TABLE",
        "IPS",
        "FREE",
        "LEASED",
        "COOLING",
        "PREFIXES",
    ] {
        assert!(header.contains(col), "{header}");
    }
    for e in &enis {
        let id = e["id"].as_str().unwrap();
        let row = status.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no row for {id}:\n{status}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let leased = e["addresses"].as_array().unwrap().iter().filter(|a| a["state"] == "leased").count();
        assert_eq!(cells[1], e["device_number"].to_string(), "{row}");
        assert_eq!(cells[2], if e["primary"] == true { "yes" } else { "no" }, "{row}");
        assert_eq!(cells[3], e["primary_ip"].as_str().unwrap(), "{row}");
        assert_eq!(cells[5], e["subnet_id"].as_str().unwrap(), "{row}");
        assert_eq!(cells[6], e["zone"].as_str().unwrap(), "{row}");
        assert_eq!(cells[8], "9", "{row}");
        assert_eq!(cells[10], leased.to_string(), "{row}");
    }

    let leases = run_ok(&["leases", "--socket", socket]).await;
    let mut lines = leases.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("IP") && header.contains("POD") && header.contains("HOST VETH"), "{leases}");
    let row: Vec<&str> = lines.next().expect("one lease row").split_whitespace().collect();
    assert_eq!(
        row,
        [
            lease["ip"].as_str().unwrap(),
            "default/web-0",
            NET,
            "0123456789ab",
            "eth0",
            lease["eni_id"].as_str().unwrap(),
            "eni0123456789a"
        ]
    );
    assert!(lines.next().is_none(), "{leases}");

    // --json prints what the API answers.
    let json_leases: Value = serde_json::from_str(&run_ok(&["leases", "--json", "--socket", socket]).await).unwrap();
    assert_eq!(json_leases, json!([lease]));
    let json_status = run_ok(&["status", "--json", "--socket", socket]).await;
    let mut docs = serde_json::Deserializer::from_str(&json_status).into_iter::<Value>();
    let p = docs.next().unwrap().unwrap();
    assert_eq!((p["total"].clone(), p["leased"].clone()), (pool["total"].clone(), pool["leased"].clone()));
    assert_eq!(docs.next().unwrap().unwrap(), Value::Array(enis));

    // The socket path also comes from the environment.
    let out = {
        let mut cmd = enipoold();
        cmd.args(["leases"]).env("ENIPOOL_SOCKET", socket);
        tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap()
    };
    assert!(String::from_utf8_lossy(&out.stdout).contains(lease["ip"].as_str().unwrap()));
}

#[tokio::test]
async fn cli_without_a_daemon_fails_with_a_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("nobody.sock");
    for sub in ["status", "leases"] {
        let out = run(&[sub, "--socket", socket.to_str().unwrap()]).await;
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("connecting to enipoold at") && stderr.contains("nobody.sock"), "{sub}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// `enipoold max-pods`: the reference calculator's figures for kubelet, and errors that name the
/// type; the operator's guide documents it.
#[tokio::test]
async fn max_pods_prints_kubelets_value_and_refuses_what_it_cannot_work_out() {
    assert_eq!(run_ok(&["max-pods", "--instance-type", "m5.large"]).await, "29\n");
    assert_eq!(run_ok(&["max-pods", "--instance-type", "m5.large", "--prefix-delegation"]).await, "110\n");
    assert_eq!(run_ok(&["max-pods", "--instance-type", "m5.large", "--custom-networking"]).await, "20\n");
    assert_eq!(run_ok(&["max-pods", "--instance-type", "c5.9xlarge", "--prefix-delegation"]).await, "250\n");
    for (args, named) in [
        (&["max-pods", "--instance-type", "m7i.large"][..], "\"m7i.large\" is not in the built-in table"),
        (&["max-pods", "--instance-type", "m4.large", "--prefix-delegation"][..], "\"m4.large\" is not built on Nitro"),
    ] {
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no figure on error");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operator.md")).unwrap();
    assert!(guide.contains("enipoold max-pods --instance-type"), "docs/operator.md shows enipoold max-pods");
}
