//! deploy/ agrees with the code it deploys: the manifests pass the Kubernetes schema (the
//! `kubernetes-validate` tool, strict) and give the daemon every path, port and setting it needs;
//! the IAM policy allows exactly the EC2 calls the provider's source makes plus the implied
//! actions docs/operator.md documents; the conflist and the Dockerfile agree with the daemon's
//! defaults. (The plugin's own parser reads the conflist in cni-client/tests/conflist.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use enipool_server::config::{Cli, Config};
use serde::Deserialize;
use serde_json::{Value, json};

/// The Kubernetes version the manifests are validated against (the oldest we support).
const KUBERNETES_VERSION: &str = "1.31.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("server/ has a parent").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every document of a multi-document YAML file, as JSON values.
fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}")))
        .collect()
}

fn daemonset() -> Value {
    let docs = yaml_documents("deploy/daemonset.yaml");
    docs.into_iter().find(|d| d["kind"] == "DaemonSet").expect("deploy/daemonset.yaml holds a DaemonSet")
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

/// The node path a container path lands on, through the container's hostPath mounts.
fn host_path(pod: &Value, container: &Value, path: &Path) -> Option<PathBuf> {
    let volumes = pod["volumes"].as_array()?;
    container["volumeMounts"].as_array()?.iter().find_map(|m| {
        let rest = path.strip_prefix(m["mountPath"].as_str()?).ok()?;
        let volume = volumes.iter().find(|v| v["name"] == m["name"])?;
        Some(Path::new(volume["hostPath"]["path"].as_str()?).join(rest))
    })
}

/// Every (long flag, environment variable) of the daemon, from its clap definitions.
fn daemon_settings() -> Vec<(String, String)> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_env()?.to_str()?.to_string())))
        .collect()
}

/// The daemon's configuration as the DaemonSet's environment gives it.
fn config_from_env(env: &BTreeMap<String, String>) -> Config {
    let settings = daemon_settings();
    let mut argv = vec!["enipoold".to_string()];
    for (name, value) in env {
        let (flag, _) = settings
            .iter()
            .find(|(_, e)| e == name)
            .unwrap_or_else(|| panic!("the DaemonSet sets {name}, which enipoold does not read"));
        argv.push(format!("--{flag}"));
        argv.push(value.clone());
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("the DaemonSet's environment: {e}"));
    cli.daemon.resolve().unwrap_or_else(|e| panic!("the DaemonSet's environment does not resolve: {e:#}"))
}

fn kubernetes_validate() -> PathBuf {
    let tool = std::env::var_os("ENIPOOL_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/kubernetes-validate"));
    if !tool.exists() {
        panic!(
            "kubernetes-validate is not installed at {}: the manifest test needs it. Run scripts/test (it installs \
             it in .venv), or: .venv/bin/pip install kubernetes-validate==1.37.0 (or point \
             ENIPOOL_KUBERNETES_VALIDATE at it)",
            tool.display()
        );
    }
    tool
}

fn validate_manifest(file: &Path) -> std::process::Output {
    Command::new(kubernetes_validate())
        .args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("running kubernetes-validate")
}

#[test]
fn manifests_pass_the_kubernetes_schema_strictly() {
    let manifest = repo().join("deploy/daemonset.yaml");
    let out = validate_manifest(&manifest);
    assert!(
        out.status.success(),
        "kubernetes-validate refused deploy/daemonset.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator is really strict: a misspelt field in a copy is refused.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    let text = read("deploy/daemonset.yaml").replace("hostNetwork: true", "hostNetwrk: true");
    std::fs::write(&broken, text).unwrap();
    assert!(!validate_manifest(&broken).status.success(), "a misspelt field must be refused");
}

#[test]
fn daemonset_gives_the_daemon_its_paths_ports_and_settings() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the daemon runs in the node's network namespace");
    assert_eq!(pod["automountServiceAccountToken"], false, "the daemon never reads the Kubernetes API");
    let daemon = container(pod, "containers", "enipoold");

    // Every setting the daemon reads is in the manifest (set, or commented out with why), and
    // every one set is one the daemon reads and resolves.
    let text = read("deploy/daemonset.yaml");
    for (flag, env) in daemon_settings() {
        assert!(text.contains(&format!("name: {env}")), "deploy/daemonset.yaml does not mention {env} (--{flag})");
    }
    let env: BTreeMap<String, String> = daemon["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().expect("literal values").to_string()))
        .collect();
    let config = config_from_env(&env);
    assert_eq!(config.provider, enipool_server::config::ProviderKind::Ec2);

    // State on the node, where the plugin and the next daemon find it.
    let on_node = |p: &Path| host_path(pod, daemon, p).unwrap_or_else(|| panic!("{} is on no hostPath", p.display()));
    assert!(on_node(&config.data_dir).starts_with("/var/lib/enipool"), "the ledger on the node under /var/lib/enipool");
    let socket_on_node = on_node(&config.socket);
    assert!(socket_on_node.starts_with("/run/enipool"), "the socket on the node under /run/enipool");
    let conf_dir = config.cni_conf_dir.as_deref().expect("ENIPOOL_CNI_CONF_DIR is set");
    assert_eq!(on_node(conf_dir), Path::new("/etc/cni/net.d"), "the conflist is written into the node's net.d");

    // Node reconciliation judges a lease by its pod's namespace file: the runtimes' namespace
    // directory is mounted, and with the host's later mounts propagated (else a live pod's
    // namespace looks like a plain file, and its lease would be released).
    let netns = daemon["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            host_path(pod, daemon, Path::new(m["mountPath"].as_str().unwrap())).as_deref()
                == Some(Path::new("/run/netns"))
        })
        .expect("the node's /run/netns is mounted");
    assert_eq!(netns["mountPath"], "/run/netns", "at the path the runtime records (/var/run is /run)");
    assert_eq!(netns["mountPropagation"], "HostToContainer");

    // The conflist the image ships is the one the daemon installs, and names the same socket.
    let conflist: Value = serde_json::from_str(&read("deploy/10-enipool.conflist")).unwrap();
    assert_eq!(conflist["plugins"][0]["socket"].as_str().map(PathBuf::from), Some(socket_on_node));
    let dockerfile = read("deploy/Dockerfile");
    let shipped = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY deploy/10-enipool.conflist "))
        .expect("the Dockerfile copies deploy/10-enipool.conflist into the image");
    assert_eq!(Path::new(shipped.trim()), config.cni_conflist);
    assert_eq!(config.cni_conflist, Path::new(enipool_server::config::DEFAULT_CONFLIST));

    // Probes on the read-only listener, which is on the node's loopback.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &daemon[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], config.listen.port(), "{probe} port is --listen's");
        assert_eq!(get["host"], config.listen.ip().to_string(), "{probe} host is --listen's address");
    }

    // Prometheus scrapes --metrics-listen.
    let metrics = config.metrics_listen.expect("metrics on");
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics.port().to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let port = daemon["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").expect("a metrics port");
    assert_eq!(port["containerPort"], metrics.port());

    // The init container installs the plugin (and every other plugin the conflist chains)
    // into the node's /opt/cni/bin, from the same image.
    let init = container(pod, "initContainers", "install-cni");
    assert_eq!(init["image"], daemon["image"], "one image for both");
    let script = init["command"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect::<Vec<_>>().join(" ");
    let bin = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| {
            let host = host_path(pod, init, Path::new(m["mountPath"].as_str()?))?;
            (host == Path::new("/opt/cni/bin")).then(|| m["mountPath"].as_str().unwrap().to_string())
        })
        .expect("the init container mounts the node's /opt/cni/bin");
    for plugin in conflist["plugins"].as_array().unwrap() {
        let t = plugin["type"].as_str().unwrap();
        assert!(script.contains(&format!("{bin}/{t}")), "the init container installs {t} into {bin}: {script}");
    }
}

/// The long-running daemon is not privileged: CAP_NET_ADMIN is its one capability
/// (tests/privileges.rs runs it so confined); the sysctls, which need a writable /proc/sys, are
/// set by the init container (`enipoold node-sysctls`), which exits before the daemon starts.
/// docs/security.md says what each capability is for.
#[test]
fn the_daemon_holds_net_admin_alone_and_the_init_container_sets_the_sysctls() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    for shared in ["hostPID", "hostIPC"] {
        assert!(pod[shared].is_null() || pod[shared] == false, "{shared}: the daemon needs no other node namespace");
    }
    let daemon = container(pod, "containers", "enipoold");
    let sc = &daemon["securityContext"];
    assert_eq!(sc["privileged"], false, "the daemon is not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true, "it writes only to its hostPath volumes");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let added: Vec<&str> = sc["capabilities"]["add"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(added, ["NET_ADMIN"]);

    let init = container(pod, "initContainers", "install-cni");
    assert_eq!(init["securityContext"]["privileged"], true, "the init container writes /proc/sys");
    let script = init["command"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect::<Vec<_>>().join(" ");
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("/out/enipoold") && dockerfile.contains("/usr/local/bin/"), "the image has enipoold");
    let first = script.lines().find(|l| !l.trim().is_empty() && !l.starts_with('-')).unwrap_or_default();
    assert!(
        script.contains("/usr/local/bin/enipoold node-sysctls\n") && first.contains("enipoold node-sysctls"),
        "the init container sets the sysctls first: {script}"
    );
    assert!(Cli::command().find_subcommand("node-sysctls").is_some(), "enipoold has the node-sysctls command");

    // Each capability granted is explained in docs/security.md, and the init's privilege too.
    let security = read("docs/security.md");
    let section = security.split("## Capabilities").nth(1).expect("docs/security.md has '## Capabilities'");
    let section = section.split("\n## ").next().unwrap();
    for cap in &added {
        assert!(section.contains(&format!("`CAP_{cap}`")), "docs/security.md explains CAP_{cap}");
    }
    assert!(section.contains("node-sysctls"), "docs/security.md explains the privileged init container");
}

/// A cold cluster: CoreDNS runs in pods, which get their IPs from us. The daemon must not
/// resolve names through cluster DNS (ClusterFirstWithHostNet), or the first nodes of a new
/// cluster wait for a CoreDNS that waits for them: it uses the node's resolver.
#[test]
fn the_daemon_resolves_names_with_the_nodes_resolver_not_cluster_dns() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(pod["dnsPolicy"].as_str(), Some("Default"), "dnsPolicy must be Default (the node's resolver)");
}

#[test]
fn no_rbac_because_the_daemon_never_reads_the_kubernetes_api() {
    // No Kubernetes client is linked into the workspace...
    let lock = read("Cargo.lock");
    for client in ["kube", "kube-client", "k8s-openapi"] {
        assert!(
            !lock.contains(&format!("name = \"{client}\"\n")),
            "{client} is in Cargo.lock: the daemon may read the API"
        );
    }
    // ...so the manifests grant nothing.
    for doc in yaml_documents("deploy/daemonset.yaml") {
        let kind = doc["kind"].as_str().unwrap();
        assert!(["ServiceAccount", "DaemonSet"].contains(&kind), "unexpected {kind} in deploy/daemonset.yaml");
    }
}

/// One HTTP and TLS stack: the versions of each crate of it in Cargo.lock. aws-sdk-ec2's
/// default features add a second, older one (hyper 0.14, rustls 0.21: the root Cargo.toml says
/// why they are off); cargo-deny (deny.toml, run by scripts/test) bans duplicates in general,
/// this names the ones that matter most and fails whoever turns those features back on.
#[test]
fn one_http_and_tls_stack_in_the_lock_file() {
    let lock: toml::Value = toml::from_str(&read("Cargo.lock")).expect("Cargo.lock is TOML");
    let packages = lock["package"].as_array().expect("packages");
    let versions = |name: &str| -> Vec<String> {
        packages
            .iter()
            .filter(|p| p["name"].as_str() == Some(name))
            .map(|p| p["version"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(versions("hyper").len(), 1, "the server's hyper is in the lock file");
    for name in ["hyper", "http", "http-body", "h2", "rustls", "rustls-webpki", "tokio-rustls", "hyper-rustls"] {
        let v = versions(name);
        assert!(v.len() <= 1, "{name} {v:?}: a second HTTP/TLS stack");
    }
    for name in ["openssl", "openssl-sys", "native-tls"] {
        assert!(versions(name).is_empty(), "{name}: one TLS stack (rustls)");
    }
    // The config cargo-deny runs with exists and bans duplicates.
    let deny: toml::Value = toml::from_str(&read("deny.toml")).expect("deny.toml is TOML");
    assert_eq!(deny["bans"]["multiple-versions"].as_str(), Some("deny"));
    for skip in deny["bans"]["skip"].as_array().expect("bans.skip") {
        assert!(skip["reason"].as_str().is_some_and(|r| !r.is_empty()), "every allowed duplicate says why: {skip}");
    }
    assert!(read("scripts/test").contains("cargo deny --offline"), "scripts/test runs cargo deny offline");
}

/// `create_network_interface` -> `CreateNetworkInterface`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The EC2 operations the provider's code calls: every aws-sdk-ec2 fluent call (`client.op()`
/// or `client\n.op()` ending in `.send()`) in ec2/src, less the modules compiled only for tests.
/// Also returns the action names given to the `Caller` (`.call("Op", ...)`), for a cross-check.
fn provider_calls() -> (BTreeSet<String>, BTreeSet<String>) {
    let src = repo().join("ec2/src");
    let lib = read("ec2/src/lib.rs");
    let lines: Vec<&str> = lib.lines().collect();
    let test_only: BTreeSet<String> = lines
        .windows(2)
        .filter(|w| w[0].trim() == "#[cfg(feature = \"testing\")]")
        .filter_map(|w| {
            w[1].trim().strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')).map(|m| format!("{m}.rs"))
        })
        .collect();
    assert!(test_only.contains("testing.rs"), "ec2/src/lib.rs gates its testing module behind the feature");
    let (mut fluent, mut named) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".rs") || test_only.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut at = 0;
        while let Some(i) = text[at..].find("client") {
            let start = at + i;
            at = start + "client".len();
            let rest = text[at..].trim_start();
            let Some(rest) = rest.strip_prefix('.') else { continue };
            let rest = rest.trim_start();
            let op: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if op.is_empty() || !rest[op.len()..].starts_with('(') {
                continue;
            }
            // An SDK operation's builder ends in .send() before the statement ends.
            let chain = &rest[op.len()..];
            let send = chain.find(".send()");
            let end = chain.find(';');
            if send.is_some_and(|s| end.is_none_or(|e| s < e)) {
                fluent.insert(pascal(&op));
            }
        }
        let mut at = 0;
        while let Some(i) = text[at..].find(".call(\"") {
            let start = at + i + ".call(\"".len();
            let end = start + text[start..].find('"').unwrap();
            named.insert(text[start..end].to_string());
            at = end;
        }
    }
    (fluent, named)
}

/// The implied actions docs/operator.md documents: rows `| ec2:Action | why |` of its
/// "Implied IAM actions" section.
fn documented_implied_actions() -> BTreeSet<String> {
    let doc = read("docs/operator.md");
    let section = doc.split("### Implied IAM actions").nth(1).expect("docs/operator.md has '### Implied IAM actions'");
    let section = section.split("\n#").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `ec2:"))
        .map(|l| l.split('`').next().unwrap().to_string())
        .collect()
}

#[test]
fn iam_policy_allows_exactly_what_the_provider_calls_and_the_documented_implied_actions() {
    let (fluent, named) = provider_calls();
    assert!(fluent.contains("CreateNetworkInterface") && fluent.len() >= 10, "the scan finds the calls: {fluent:?}");
    assert_eq!(fluent, named, "every EC2 call goes through the Caller under its own action name");

    let policy: Value = serde_json::from_str(&read("deploy/iam-policy.json")).unwrap();
    let mut allowed = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        let implied_statement = statement["Sid"].as_str().unwrap().starts_with("Implied");
        for action in statement["Action"].as_array().unwrap() {
            let action = action.as_str().unwrap().strip_prefix("ec2:").expect("EC2 actions only").to_string();
            assert!(!action.contains('*'), "no wildcards: {action}");
            assert_eq!(
                implied_statement,
                !fluent.contains(&action),
                "{action}: implied ones sit in Implied* statements"
            );
            allowed.insert(action);
        }
    }
    let implied = documented_implied_actions();
    assert!(
        implied.is_disjoint(&fluent),
        "an action the code calls is not implied: {:?}",
        implied.intersection(&fluent)
    );
    let expected: BTreeSet<String> = fluent.union(&implied).cloned().collect();
    assert_eq!(
        allowed,
        expected,
        "deploy/iam-policy.json vs the provider's calls + documented implied actions: missing {:?}, extra {:?}",
        expected.difference(&allowed).collect::<Vec<_>>(),
        allowed.difference(&expected).collect::<Vec<_>>()
    );
    // Tagging on create needs ec2:CreateTags; it is implied exactly when the code does it.
    let tags_on_create = read("ec2/src/lib.rs").contains(".tag_specifications(");
    assert_eq!(implied.contains("CreateTags"), tags_on_create);
}

const ENI: &str = "arn:aws:ec2:*:*:network-interface/*";
const INSTANCE: &str = "arn:aws:ec2:*:*:instance/*";
const SUBNET: &str = "arn:aws:ec2:*:*:subnet/*";
const SECURITY_GROUP: &str = "arn:aws:ec2:*:*:security-group/*";

/// Every (action, resource, condition) the policy allows; "Resource" as a list.
fn grants(policy: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for st in policy["Statement"].as_array().expect("Statement") {
        let resources: Vec<String> = match &st["Resource"] {
            Value::String(r) => vec![r.clone()],
            Value::Array(rs) => rs.iter().map(|r| r.as_str().unwrap().to_string()).collect(),
            other => panic!("Resource {other}"),
        };
        for action in st["Action"].as_array().expect("Action") {
            let action = action.as_str().unwrap().trim_start_matches("ec2:").to_string();
            for r in &resources {
                out.push((action.clone(), r.clone(), st["Condition"].clone()));
            }
        }
    }
    out
}

/// Least privilege, statement by statement (IAM itself is not run here: docs/security.md):
/// - ENIs are changed (attach, detach, modify, delete) only when they carry our tag, the one
///   the code puts on every ENI it creates; on an instance resource (the node) without condition;
/// - an ENI is created only with our tag in the request; the subnet and security groups it goes
///   in are not conditioned (they are not ours);
/// - addresses are assigned and unassigned on any ENI of the node (pods use the primary ENI too,
///   which EC2 made without our tag);
/// - reads on everything (EC2's Describe* take no resource-level permissions);
/// - no allow-list of tag keys (`aws:TagKeys`): operators will add their own tags to ENIs.
fn policy_is_least_privilege(policy: &Value, our_tag: &str) -> Result<(), String> {
    let resource_tag = json!({ "Null": { format!("aws:ResourceTag/{our_tag}"): "false" } });
    let request_tag = json!({ "Null": { format!("aws:RequestTag/{our_tag}"): "false" } });
    let create_action = json!({ "StringEquals": { "ec2:CreateAction": "CreateNetworkInterface" } });
    if serde_json::to_string(policy).unwrap().contains("aws:TagKeys") {
        return Err("an allow-list of tag keys (aws:TagKeys)".into());
    }
    for (action, resource, condition) in grants(policy) {
        let ok = match action.as_str() {
            a if a.starts_with("Describe") => resource == "*" && condition.is_null(),
            "AssignPrivateIpAddresses" | "UnassignPrivateIpAddresses" => resource == "*" && condition.is_null(),
            "CreateNetworkInterface" => {
                (resource == ENI && condition == request_tag)
                    || ([SUBNET, SECURITY_GROUP].contains(&resource.as_str()) && condition.is_null())
            }
            "DeleteNetworkInterface" => resource == ENI && condition == resource_tag,
            "AttachNetworkInterface" | "DetachNetworkInterface" | "ModifyNetworkInterfaceAttribute" => {
                (resource == ENI && condition == resource_tag) || (resource == INSTANCE && condition.is_null())
            }
            "CreateTags" => resource == ENI && condition == create_action,
            _ => false,
        };
        if !ok {
            return Err(format!("ec2:{action} on {resource} with condition {condition}"));
        }
    }
    // Each action is allowed on every resource type EC2 authorises it on (the Service
    // Authorization Reference's required types), else the daemon cannot work.
    let all = grants(policy);
    let required = [
        ("CreateNetworkInterface", ENI),
        ("CreateNetworkInterface", SUBNET),
        ("CreateNetworkInterface", SECURITY_GROUP),
        ("AttachNetworkInterface", ENI),
        ("AttachNetworkInterface", INSTANCE),
        ("DetachNetworkInterface", ENI),
        ("DetachNetworkInterface", INSTANCE),
        ("ModifyNetworkInterfaceAttribute", ENI),
        ("DeleteNetworkInterface", ENI),
        ("CreateTags", ENI),
    ];
    for (action, resource) in required {
        if !all.iter().any(|(a, r, _)| a == action && (r == resource || r == "*")) {
            return Err(format!("nothing: ec2:{action} is not allowed on {resource}"));
        }
    }
    Ok(())
}

/// A change to a copy of the policy's statements.
type Mutation<'a> = Box<dyn Fn(&mut Vec<Value>) + 'a>;

#[test]
fn iam_policy_changes_only_our_enis_and_creates_them_only_with_our_tag() {
    let policy: Value = serde_json::from_str(&read("deploy/iam-policy.json")).unwrap();
    let our_tag = enipool_ec2::TAG_INSTANCE_ID;
    // The tag the conditions name is the one the code puts on every ENI it creates.
    let code = read("ec2/src/lib.rs");
    let tags_fn = code.split("fn tags(&self").nth(1).expect("the provider's tags()");
    let always = tags_fn.split("];").next().unwrap();
    assert!(always.contains("key(TAG_INSTANCE_ID)"), "every ENI we create carries {our_tag}: {always}");
    policy_is_least_privilege(&policy, our_tag).unwrap_or_else(|e| panic!("deploy/iam-policy.json allows {e}"));

    // The check refuses each way the policy could be too wide, or too narrow to work.
    let statements = policy["Statement"].as_array().unwrap().clone();
    let sid = |s: &Value, name: &str| s["Sid"].as_str() == Some(name);
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "deletes untagged ENIs",
            Box::new(|st| {
                st.iter_mut()
                    .filter(|s| sid(s, "EnipoolChangeOnlyEnisWithOurTag"))
                    .for_each(|s| s["Condition"] = Value::Null)
            }),
        ),
        (
            "creates ENIs without our tag",
            Box::new(|st| {
                st.iter_mut()
                    .filter(|s| sid(s, "EnipoolCreateEnisOnlyWithOurTag"))
                    .for_each(|s| s["Resource"] = "*".into())
            }),
        ),
        (
            "an allow-list of tag keys",
            Box::new(|st| {
                st.iter_mut()
                    .filter(|s| sid(s, "EnipoolCreateEnisOnlyWithOurTag"))
                    .for_each(|s| s["Condition"]["ForAllValues:StringEquals"] = json!({ "aws:TagKeys": [our_tag] }))
            }),
        ),
        (
            "Delete on any resource",
            Box::new(|st| {
                st.push(json!({ "Effect": "Allow", "Action": ["ec2:DeleteNetworkInterface"], "Resource": "*" }))
            }),
        ),
        (
            "cannot attach (no instance resource)",
            Box::new(|st| st.retain(|s| !sid(s, "EnipoolAttachAndDetachOnInstances"))),
        ),
        (
            "cannot create (no subnet resource)",
            Box::new(|st| st.retain(|s| !sid(s, "EnipoolCreateEnisInSubnetsAndSecurityGroups"))),
        ),
        (
            "tags anything",
            Box::new(|st| {
                st.iter_mut()
                    .filter(|s| sid(s, "ImpliedTagOnCreateNetworkInterface"))
                    .for_each(|s| s["Condition"] = Value::Null)
            }),
        ),
    ];
    for (what, mutate) in mutations {
        let mut wider = statements.clone();
        mutate(&mut wider);
        assert_ne!(wider, statements, "the mutation '{what}' changed the policy");
        let wider = json!({ "Version": policy["Version"], "Statement": wider });
        assert!(policy_is_least_privilege(&wider, our_tag).is_err(), "the check lets through a policy that {what}");
    }
}

#[test]
fn dockerfile_builds_both_binaries_in_a_separate_stage() {
    let d = read("deploy/Dockerfile");
    let stages: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2 && stages[0].contains(" AS build"), "a build stage and a runtime stage: {stages:?}");
    let build = d.lines().find(|l| l.contains("cargo build")).expect("a cargo build");
    for part in ["--release", "--locked", "-p enipool-server"] {
        assert!(build.contains(part), "the build runs with {part}: {build}");
    }
    // The plugin as the benchmarks measure it: static, from the same script.
    assert!(
        d.contains("install -D -m 0755 \"$(scripts/build-plugin --release)\" /out/enipool-cni"),
        "the image's enipool-cni comes from scripts/build-plugin --release"
    );
    assert!(read("scripts/build-plugin").contains("target-feature=+crt-static"));
    // The image's daemon has the EC2 provider (the server's default feature `ec2`).
    assert!(!build.contains("--no-default-features"), "the image's enipoold must keep --provider ec2: {build}");
    assert!(d.contains("COPY --from=build /out/enipoold /out/enipool-cni /usr/local/bin/"));
    assert!(d.contains("ENTRYPOINT [\"/usr/local/bin/enipoold\"]"));
    // The toolchain is at least the workspace's rust-version.
    let image = stages[0].split_whitespace().nth(1).unwrap();
    let version = image.strip_prefix("rust:").and_then(|v| v.split('-').next()).expect("a rust:<version> image");
    let minimum = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \"").map(|v| v.trim_end_matches('"').to_string()))
        .unwrap();
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(parse(version) >= parse(&minimum), "rust:{version} is older than rust-version {minimum}");
}
