//! aws-sdk-ec2 takes minutes and ~8 GB to compile, so a fresh clone must compile it once: the
//! binaries (`cargo build --workspace --bins`, the benchmark harnesses' build) and the tests
//! (`cargo nextest run --workspace`, which also turns on the test-only crates' features) must
//! give every crate aws-sdk-ec2 depends on the same features. When they differ, each crate from
//! there to aws-sdk-ec2 is a second compilation. The feature pins in ec2/Cargo.toml keep them
//! the same; this test fails, naming the crates, when a dependency update parts them again.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn cargo_tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(args)
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        // "name vX.Y.Z (path) [features] (*)" -> "name vX.Y.Z [features]"
        .map(|l| l.split(' ').filter(|w| !w.starts_with('(') && !w.ends_with(')')).collect::<Vec<_>>().join(" "))
        .collect()
}

/// "name version [features]" of every package in the workspace's graph with these edges.
fn features(edges: &str) -> BTreeSet<String> {
    cargo_tree(&["--workspace", "-e", edges, "-f", "{p} [{f}]"]).into_iter().collect()
}

#[test]
fn the_binaries_and_the_tests_build_aws_sdk_ec2_with_the_same_features() {
    // "name version" of each package aws-sdk-ec2 is built from, itself included.
    let closure: BTreeSet<String> =
        cargo_tree(&["-p", "aws-sdk-ec2", "-e", "normal", "-f", "{p}"]).into_iter().collect();
    assert!(closure.iter().any(|p| p.starts_with("aws-sdk-ec2 ")), "{closure:?}");
    let in_closure = |line: &String| closure.iter().any(|p| line.starts_with(&format!("{p} [")));
    let bins: BTreeSet<String> = features("normal").into_iter().filter(in_closure).collect();
    let tests: BTreeSet<String> = features("normal,dev").into_iter().filter(in_closure).collect();
    let only_bins: Vec<_> = bins.difference(&tests).collect();
    let only_tests: Vec<_> = tests.difference(&bins).collect();
    assert!(
        only_bins.is_empty() && only_tests.is_empty(),
        "aws-sdk-ec2's dependencies get other features in the test build, so it would be compiled twice; \
         pin these features in ec2/Cargo.toml.\nbinaries only: {only_bins:#?}\ntests only: {only_tests:#?}"
    );
}
