//! Times the phases of reopening a ledger with 10,000 leases (a development probe).
use std::sync::Arc;
use std::time::{Duration, Instant};

use enipool_storage::*;

fn main() {
    // In the system temp dir: a killed run must not leave a ledger in the checkout.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LedgerConfig { cooldown: Duration::ZERO, ..Default::default() };
    {
        let l = Ledger::open(dir.path(), cfg.clone(), Arc::new(SystemClock)).unwrap();
        let eni = EniRecord {
            id: "eni-1".into(),
            device_number: 0,
            subnet_cidr: "10.0.0.0/8".parse().unwrap(),
            subnet_gateway: "10.0.0.1".parse().unwrap(),
            primary_ip: "10.0.0.10".parse().unwrap(),
            route_table: 254,
            attached: true,
        };
        let ips: Vec<std::net::Ipv4Addr> = (0..12000u32).map(|i| std::net::Ipv4Addr::from(0x0a01_0000 + i)).collect();
        l.add_eni(eni, &ips).unwrap();
        std::thread::scope(|s| {
            for t in 0..16 {
                let l = l.clone();
                s.spawn(move || {
                    for i in 0..625 {
                        let meta = LeaseMeta {
                            pod_namespace: Some("default".into()),
                            pod_name: Some(format!("pod-{t}-{i}")),
                            netns: Some(format!("/var/run/netns/cni-{t}-{i}")),
                            host_veth: Some(format!("eni{t:04}{i:07}")),
                        };
                        l.allocate(LeaseKey::new("aws-cni", format!("c{t}x{i}"), "eth0"), meta).unwrap();
                    }
                });
            }
        });
        l.close().unwrap();
    }
    for round in 0..3 {
        let t = Instant::now();
        let l = Ledger::open(dir.path(), cfg.clone(), Arc::new(SystemClock)).unwrap();
        println!("open {round}: {:?} ({} leases)", t.elapsed(), l.leases(&LeaseFilter::default()).len());
        drop(l);
    }
    let t = Instant::now();
    let db = sled::Config::new().path(dir.path().join("sled")).open().unwrap();
    println!("plain sled open: {:?}", t.elapsed());
    let t = Instant::now();
    let mut n = 0;
    for name in ["addresses", "leases", "enis"] {
        for kv in db.open_tree(name).unwrap().iter() {
            let _ = kv.unwrap();
            n += 1;
        }
    }
    println!("sled iterate {n} entries: {:?}", t.elapsed());
}
