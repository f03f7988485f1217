//! A full disk under churn: the ledger's data dir sits on a small tmpfs made for the test, which
//! the test fills while leases come and go. A checkpoint that fails is retried and only counted
//! (a metric and a warning; the daemon stays live and ready); once a write-ahead-log write fails
//! no mutation is acknowledged again, liveness and readiness answer 503 with the reason, the
//! metric says so; and after a restart with space freed every acknowledged lease and release is
//! there. Needs root (mount).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Daemon, NET, eventually, metric};
use enipool_api::problem;
use serde_json::{Value, json};

/// A size-limited tmpfs on a temp dir, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new().prefix("enipool-fulldisk-").tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "enipool-test"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the filesystem refuses (ENOSPC); returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Whatever fits of a smaller write too, so not a page is left.
        let _ = f.write_all(&[0u8; 512]);
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Leases and releases, and what the daemon acknowledged of them.
#[derive(Default)]
struct Churn {
    steps: u32,
    /// Acknowledged leases not released: (container id, IP).
    live: Vec<(String, String)>,
    /// Acknowledged releases.
    released: Vec<String>,
}

impl Churn {
    /// A new lease, and the release of the oldest live one once 20 are live. Returns the answer
    /// of a request the daemon refused; what it refused is no longer tracked (its outcome is
    /// not acknowledged either way).
    async fn step(&mut self, api: &crate::common::Api) -> Option<crate::common::Resp> {
        self.steps += 1;
        let id = format!("pod-{}", self.steps);
        let r = api.post_unchecked("/v1/leases", &json!({"network": NET, "container_id": id, "ifname": "eth0"})).await;
        if r.status != 201 {
            return Some(r);
        }
        self.live.push((id, r.json()["ip"].as_str().unwrap().to_string()));
        // At most 20 live, so the pool never needs to grow (the static provider's own state is
        // on the full disk too).
        if self.live.len() > 20 {
            let (id, _) = self.live.remove(0);
            let r = api.delete(&lease_path(&id)).await;
            if r.status != 204 {
                return Some(r);
            }
            self.released.push(id);
        }
        None
    }
}

fn lease_path(id: &str) -> String {
    format!("/v1/leases/{NET}/{id}/eth0")
}

async fn health(api: &crate::common::Api, path: &str) -> (u16, Value) {
    let r = api.get(path).await;
    (r.status, r.json())
}

#[tokio::test]
async fn a_full_disk_stops_acknowledgements_turns_the_probes_503_and_loses_nothing() {
    let fs = SmallFs::new("16m");
    let data = fs.path().join("data");
    let flags = [
        ("--wal-segment-bytes", "16384"),
        ("--checkpoint-interval", "10ms"),
        ("--metrics-listen", "127.0.0.1:0"),
        ("--instance-type", "m5.24xlarge"),
    ];
    let d = Daemon::start_in(&data, &flags).await;
    let api = d.unix();
    let metrics = d.metrics_listener();

    // What the daemon acknowledged: live leases (id, IP) and released ids.
    let mut churn = Churn::default();
    for _ in 0..40 {
        assert!(churn.step(&api).await.is_none(), "churn before the disk filled");
    }

    // The pool has grown to what 20 live leases need before the disk fills.
    eventually("the pool to settle", async || {
        let pool = api.pool().await;
        if pool["deficit"] == 0 && pool["total"].as_u64() >= Some(98) { Ok(()) } else { Err(pool.to_string()) }
    })
    .await;
    let filler = fs.fill();
    // Churn on. The checkpoint into sled fails first (it needs new blocks; the log writes into
    // its pre-zeroed segment and spare): that is retried and only counted, while the daemon stays
    // live and ready. Then the log needs a segment it cannot get.
    let mut checkpoint_failed_while_healthy = false;
    let refusal = loop {
        if let Some(r) = churn.step(&api).await {
            break r;
        }
        assert!(churn.steps < 20_000, "the ledger never failed to write on a full disk");
        if !checkpoint_failed_while_healthy {
            let text = metrics.get("/metrics").await.expect(200).text();
            if metric(&text, "enipool_ledger_checkpoint_failures_total").is_some_and(|n| n > 0.0) {
                assert_eq!(
                    health(&api, "/healthz").await,
                    (200, json!({"status": "ok"})),
                    "a failed checkpoint is not fatal"
                );
                assert_eq!(health(&api, "/readyz").await.0, 200, "a failed checkpoint is not unreadiness");
                assert_eq!(metric(&text, "enipool_ledger_write_failed"), Some(0.0));
                checkpoint_failed_while_healthy = true;
            }
        }
    };
    eprintln!("refused after {} steps; checkpoint failed first: {checkpoint_failed_while_healthy}", churn.steps);
    assert!(checkpoint_failed_while_healthy, "no failed checkpoint was counted before the log failed");
    refusal.assert_problem(503, problem::LEDGER_FAILED, None);

    // From now on nothing mutating is acknowledged, whatever it is.
    for i in 0..10 {
        let r = api
            .post_unchecked(
                "/v1/leases",
                &json!({"network": NET, "container_id": format!("late-{i}"), "ifname": "eth0"}),
            )
            .await;
        assert_eq!(r.status, 503, "POST after the failure: {}", r.text());
        let (id, _) = &churn.live[i];
        let r = api.delete(&lease_path(id)).await;
        assert_eq!(r.status, 503, "DELETE after the failure: {}", r.text());
        let r = api.post_unchecked("/v1/gc", &json!({"network": NET, "valid": []})).await;
        assert_eq!(r.status, 503, "GC after the failure: {}", r.text());
    }
    let (status, body) = health(&api, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("failed")), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("write-ahead log"), "{body}");
    let (status, body) = health(&api, "/readyz").await;
    assert_eq!((status, &body["ready"]), (503, &json!(false)), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("ledger stopped taking writes"), "{body}");
    let text = metrics.get("/metrics").await.expect(200).text();
    assert_eq!(metric(&text, "enipool_ledger_write_failed"), Some(1.0));
    // Reads are served from memory still.
    api.get("/v1/pool").await.expect(200);

    // The operator (or kubelet's liveness probe) restarts it once space is freed.
    drop(d);
    std::fs::remove_file(filler).unwrap();
    let d = Daemon::start_in(&data, &flags).await;
    let api = d.unix();
    assert_eq!(health(&api, "/healthz").await.0, 200);
    for (id, ip) in &churn.live {
        let lease = api.get(&lease_path(id)).await.expect(200).json();
        assert_eq!(lease["ip"].as_str(), Some(ip.as_str()), "acknowledged lease {id} came back with another IP");
    }
    for id in &churn.released {
        api.get(&lease_path(id)).await.expect(404);
    }
    assert!(
        churn.live.len() + churn.released.len() > 40,
        "{} live, {} released",
        churn.live.len(),
        churn.released.len()
    );
}
