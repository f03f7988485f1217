//! docs/operator.md keeps up with the code: every daemon flag is in its configuration table with
//! its environment variable and the default `--help` states, and every metric the daemon
//! exports is in its metrics table. Read from the clap definitions and the metrics registry, so
//! a new setting or metric without documentation fails here.

use std::path::Path;

use clap::CommandFactory;
use enipool_server::config::Cli;
use enipool_server::metrics::Metrics;

fn operator_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The cells of the table row that starts with `first` (a code span).
fn row<'a>(doc: &'a str, first: &str) -> Option<Vec<&'a str>> {
    doc.lines()
        .find(|l| l.starts_with(&format!("| {first} |")))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
}

#[test]
fn every_flag_is_documented_with_its_environment_variable_and_default() {
    let doc = operator_md();
    let mut checked = 0;
    for arg in Cli::command().get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else { continue };
        let env = env.to_str().unwrap();
        let cells = row(&doc, &format!("`--{long}`"))
            .unwrap_or_else(|| panic!("docs/operator.md has no configuration row for --{long} ({env})"));
        assert_eq!(cells.len(), 5, "--{long}: flag | environment | default | meaning | reference daemon");
        assert_eq!(cells[1], format!("`{env}`"), "--{long}: the environment variable");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let default = help.split("[default: ").nth(1).and_then(|d| d.split(']').next()).unwrap_or("none");
        assert_eq!(cells[2], default, "--{long}: the default --help states");
        assert!(!cells[3].is_empty() && !cells[4].is_empty(), "--{long}: meaning and reference daemon's name");
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} flags found");
}

/// Every metric name registered in server/src/metrics.rs (`registry.register("name", ...)`),
/// prefixed: families only appear in the exposition once they have a sample, so the source says
/// what exists.
fn registered_metrics() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs");
    let src = std::fs::read_to_string(path).unwrap();
    src.split("registry.register(")
        .skip(1)
        .map(|rest| rest.trim_start().trim_start_matches('"').split('"').next().unwrap().to_string())
        .map(|name| format!("enipool_{name}"))
        .collect()
}

#[test]
fn every_metric_is_documented() {
    let doc = operator_md();
    let registered = registered_metrics();
    assert!(registered.len() >= 15, "only {} metrics found: {registered:?}", registered.len());
    // Counters' samples carry _total (OpenMetrics); that is the name users query and the docs use.
    let documented_as = |name: &str| {
        [name.to_string(), format!("{name}_total")].into_iter().find(|n| row(&doc, &format!("`{n}`")).is_some())
    };
    for name in &registered {
        assert!(documented_as(name).is_some(), "docs/operator.md has no metrics row for {name}");
    }
    let documented: Vec<&str> =
        doc.lines().filter_map(|l| l.strip_prefix("| `enipool_")).map(|l| l.split('`').next().unwrap()).collect();
    for name in documented {
        let name = format!("enipool_{name}");
        let base = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            registered.iter().any(|r| *r == name || r == base),
            "docs/operator.md documents {name}, which the daemon does not export"
        );
    }
    // The types, for the metrics that have samples once touched.
    let metrics = Metrics::new();
    metrics.provider_call("assign_ips", std::time::Duration::from_millis(1), false);
    enipool_ec2::CallObserver::attempt(&metrics, "AssignPrivateIpAddresses", Default::default(), Some("Throttling"));
    let subnet = enipool_provider::CandidateSubnet {
        id: "subnet-1".into(),
        cidr: "10.0.0.0/24".parse().unwrap(),
        zone: "us-east-1a".into(),
        free: 10,
        node: true,
        skipped: None,
        refusals: 1,
    };
    let text = metrics.render(&Default::default(), 0, &Default::default(), &[subnet]);
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        let shown = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        let cells = row(&doc, &format!("`{shown}`")).unwrap_or_else(|| panic!("no metrics row for {shown} ({kind})"));
        assert_eq!(cells[1], kind, "{shown}: the type");
    }
}
