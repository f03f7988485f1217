use enipool_storage::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
fn main() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let cfg = LedgerConfig { cooldown: Duration::ZERO, ..Default::default() };
    let l = Ledger::open(dir.path(), cfg, Arc::new(SystemClock)).unwrap();
    let eni = EniRecord {
        id: "eni-1".into(),
        device_number: 0,
        subnet_cidr: "10.0.0.0/16".parse().unwrap(),
        subnet_gateway: "10.0.0.1".parse().unwrap(),
        primary_ip: "10.0.0.10".parse().unwrap(),
        route_table: 254,
        attached: true,
    };
    let ips: Vec<std::net::Ipv4Addr> = (0..4096u32).map(|i| std::net::Ipv4Addr::from(0x0a01_0000 + i)).collect();
    l.add_eni(eni, &ips).unwrap();
    for threads in [1usize, 16, 64] {
        let per = if threads == 1 { 2000 } else { 400 };
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let l = l.clone();
                s.spawn(move || {
                    for i in 0..per {
                        let k = LeaseKey::new("net", format!("c{t}-{i}"), "eth0");
                        l.allocate(k.clone(), LeaseMeta::default()).unwrap();
                        l.release(&k).unwrap();
                    }
                });
            }
        });
        let el = t0.elapsed();
        let pairs = threads * per;
        println!("{threads} threads: {:.0} pairs/s, syncs {}", pairs as f64 / el.as_secs_f64(), l.sync_count());
    }
}
