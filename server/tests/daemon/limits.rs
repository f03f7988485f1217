//! Hostile neighbours on the daemon's TCP listeners: thousands of idle connections to the
//! metrics port (any pod can reach it) and the loopback port, some trickling a request head one
//! byte a second, under a soft open-files limit of 1,024. The daemon raises its soft limit to
//! the hard one, caps each listener, cuts slow heads and idle connections off within the
//! configured timeouts, and meanwhile the unix socket serves every lease and release.

use std::time::{Duration, Instant};

use crate::common::{Daemon, NET, lease_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens up to `n` connections to `addr` (each connect given 200 ms: past the daemon's cap the
/// backlog fills and the kernel drops SYNs); returns the ones that connected.
async fn flood(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move { tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await });
    }
    let mut open = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Ok(Ok(s))) = r {
            open.push(s);
        }
    }
    open
}

fn open_files(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn soft_nofile(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn idle_and_slow_connections_neither_starve_the_socket_nor_exhaust_files() {
    let tmp = tempfile::TempDir::new().unwrap();
    let flags = [
        ("--metrics-listen", "127.0.0.1:0"),
        ("--max-connections", "256"),
        ("--header-read-timeout", "1s"),
        ("--idle-timeout", "1s"),
        ("--instance-type", "m5.24xlarge"),
    ];
    let d = Daemon::start_in_with_nofile(tmp.path(), &flags, (1024, 2048)).await;
    d.wait_ready().await;
    let pid = d.pid();
    assert_eq!(soft_nofile(pid), 2048, "the soft limit is raised to the hard one");

    // A few clients trickle a request head, one byte a second.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(d.metrics.unwrap()).await.unwrap();
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" {
                if s.write_all(&[*b]).await.is_err() {
                    return started.elapsed();
                }
                let mut buf = [0u8; 64];
                // The daemon closing the connection shows as EOF (or a reset) on read.
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    _ => {}
                }
            }
            Duration::MAX
        }));
    }
    let metrics_conns = flood(d.metrics.unwrap(), 5000).await;
    let http_conns = flood(d.http, 1000).await;

    // Meanwhile the socket serves 200 lease/release pairs, every one.
    let api = d.unix();
    for i in 0..200 {
        let id = format!("pod-{i}");
        api.post("/v1/leases", &lease_request(NET, &id, "eth0")).await.expect(201);
        api.delete(&format!("/v1/leases/{NET}/{id}/eth0")).await.expect(204);
        if i % 50 == 0 {
            let files = open_files(pid);
            assert!(files < 2048, "the daemon has {files} files open");
        }
    }
    let files = open_files(pid);
    assert!(files < 2048, "the daemon has {files} files open");
    assert!(!metrics_conns.is_empty() && !http_conns.is_empty());

    // Idle connections are closed by the daemon, each within the idle timeout of being accepted
    // (those waiting in the backlog are accepted as earlier ones close).
    for mut c in metrics_conns.into_iter().take(20).chain(http_conns.into_iter().take(20)) {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "an idle connection stayed open: {r:?}");
    }
    for s in slow {
        let took = s.await.unwrap();
        assert!(took < Duration::from_secs(5), "a slow head was not cut off ({took:?})");
    }
}
