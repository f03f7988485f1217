//! `--cni-conf-dir`: a real enipoold installs the conflist only once it is ready, byte for byte,
//! and never while it is not (EC2 unreachable); without the flag it writes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Daemon, eventually, holds};

fn conflist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-enipool.conflist")
}

#[tokio::test]
async fn the_conflist_appears_once_the_daemon_is_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let conf_dir = tmp.path().join("net.d");
    let source = conflist();
    let d =
        Daemon::start(&[("--cni-conf-dir", conf_dir.to_str().unwrap()), ("--cni-conflist", source.to_str().unwrap())])
            .await;
    let installed = conf_dir.join("10-enipool.conflist");
    let want = std::fs::read_to_string(&source).unwrap();
    eventually("the conflist to be installed", async || match std::fs::read_to_string(&installed) {
        Ok(text) if text == want => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let names: Vec<_> = std::fs::read_dir(&conf_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("10-enipool.conflist")], "nothing else in the directory");
    let page = d.tcp().get("/status?refresh=0").await.expect(200).text();
    assert!(page.contains("CNI conflist installed at"), "the status page says so");
}

#[tokio::test]
async fn no_conflist_while_the_daemon_is_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let conf_dir = tmp.path().join("net.d");
    let source = conflist();
    // EC2 at a port nobody listens on: the provider's init fails on every try.
    let d = Daemon::start_in_unready(
        &data,
        &[
            ("--provider", "ec2"),
            ("--instance-id", "i-0123456789abcdef0"),
            ("--ec2-endpoint", "http://127.0.0.1:9"),
            ("--ec2-max-attempts", "1"),
            ("--ec2-timeout", "1s"),
            ("--eni-host-setup", "false"),
            ("--cni-conf-dir", conf_dir.to_str().unwrap()),
            ("--cni-conflist", source.to_str().unwrap()),
        ],
    )
    .await;
    let api = d.unix();
    eventually("readiness to report the failed provider init", async || {
        let r = api.get("/readyz").await;
        let v = r.json();
        let reason = v["reason"].as_str().unwrap_or_default().to_string();
        if r.status == 503 && reason.contains("provider init failed") { Ok(()) } else { Err(format!("{v}")) }
    })
    .await;
    holds("no conflist while not ready", Duration::from_millis(300), async || {
        if conf_dir.join("10-enipool.conflist").exists() { Err("the conflist was written".into()) } else { Ok(()) }
    })
    .await;
}
