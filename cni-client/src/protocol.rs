//! The CNI protocol as the spec (1.1.0) words it: the environment, CNI_ARGS, error objects and
//! results, encoded for the version the runtime asked for. Written with serde; nothing here
//! touches the system.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The versions we speak, oldest first. 0.4.0 is the oldest with CHECK; 1.1.0 adds STATUS and GC.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes. 1-99 are the spec's; 100 and up are ours.
pub mod code {
    /// The config's cniVersion is not one we speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The container (its network namespace) does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A CNI_* environment variable is missing or invalid (CNI_ARGS included).
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or a file failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not JSON (or not UTF-8).
    pub const DECODE_FAILURE: u32 = 6;
    /// The network configuration is invalid; the message names the key.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the daemon is unreachable or the pool has no free IP.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot ADD now (daemon unreachable or not ready).
    pub const NOT_READY: u32 = 50;
    /// A netlink (kernel) operation failed.
    pub const KERNEL: u32 = 100;
    /// Installing the SNAT rules (iptables) failed.
    pub const IPTABLES: u32 = 101;
    /// ADD: the interface already exists in the pod's namespace.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// The daemon answered something we did not expect.
    pub const DAEMON: u32 = 103;
    /// CHECK: the actual state differs from the expected one.
    pub const CHECK_MISMATCH: u32 = 104;
    /// A bug: the plugin panicked.
    pub const INTERNAL: u32 = 199;
}

/// A CNI error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_ENV, msg)
    }

    pub fn config(key: &str, reason: impl fmt::Display) -> CniError {
        CniError::new(code::INVALID_CONFIG, format!("invalid network config: {key:?} {reason}"))
    }

    pub fn kernel(what: impl fmt::Display, e: impl fmt::Display) -> CniError {
        CniError::new(code::KERNEL, format!("{what}: {e}"))
    }

    /// The error object for stdout, in `version` (the request's, or the latest when unknown).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// The answer to VERSION.
pub fn version_info(request_version: Option<&str>) -> Value {
    let version = request_version.filter(|v| is_supported(v)).unwrap_or(LATEST_VERSION);
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The process environment as the plugin sees it: only the CNI_* variables, already checked to be
/// UTF-8 (a non-UTF-8 value is kept as an error so the command that needs it can report it).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: BTreeMap<String, Result<String, ()>>,
}

impl Env {
    pub fn from_process() -> Env {
        let mut vars = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            if k.starts_with("CNI_") {
                vars.insert(k.to_string(), v.into_string().map_err(|_| ()));
            }
        }
        Env { vars }
    }

    #[cfg(test)]
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.to_string(), Ok(v.to_string()))).collect() }
    }

    /// A variable that may be absent; present but empty counts as absent (as libcni sends it).
    pub fn optional(&self, name: &str) -> Result<Option<&str>, CniError> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(Err(())) => Err(CniError::env(format!("{name} is not valid UTF-8"))),
            Some(Ok(v)) if v.is_empty() => Ok(None),
            Some(Ok(v)) => Ok(Some(v.as_str())),
        }
    }

    pub fn required(&self, name: &str) -> Result<&str, CniError> {
        self.optional(name)?.ok_or_else(|| CniError::env(format!("{name} is required but not set")))
    }

    pub fn command(&self) -> Result<Command, CniError> {
        let c = self.required("CNI_COMMAND")?;
        Command::parse(c).ok_or_else(|| {
            CniError::env(format!("CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"))
        })
    }
}

/// CNI_ARGS, the keys we know. Parsed like the reference plugins' `types.LoadArgs`: `K=V` pairs
/// separated by `;`, every pair exactly one `=`, unknown keys refused unless `IgnoreUnknown` is
/// true (kubelet always sends `IgnoreUnknown=1`). Errors are code 4: CNI_ARGS is an environment
/// variable (the reference plugins answer 999, "internal", for the same input).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool, CniError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(CniError::env(format!("CNI_ARGS: {key}={v:?} is not a boolean (1, 0, true or false)"))),
    }
}

pub fn parse_cni_args(s: &str) -> Result<CniArgs, CniError> {
    let mut out = CniArgs::default();
    if s.is_empty() {
        return Ok(out);
    }
    let mut pairs = Vec::new();
    for pair in s.split(';') {
        let kv: Vec<&str> = pair.split('=').collect();
        if kv.len() != 2 {
            return Err(CniError::env(format!("CNI_ARGS: invalid pair {pair:?} (expected KEY=VALUE)")));
        }
        pairs.push((kv[0], kv[1]));
    }
    let mut ignore_unknown = false;
    for (k, v) in &pairs {
        if *k == "IgnoreUnknown" {
            ignore_unknown = parse_bool(k, v)?;
        }
    }
    let text = |k: &str, v: &str| -> Result<Option<String>, CniError> {
        if v.len() > 253 || v.chars().any(char::is_control) {
            return Err(CniError::env(format!("CNI_ARGS: {k} must be at most 253 bytes without control characters")));
        }
        Ok(Some(v.to_string()).filter(|v| !v.is_empty()))
    };
    for (k, v) in pairs {
        match k {
            "IgnoreUnknown" => {}
            "K8S_POD_NAMESPACE" => out.pod_namespace = text(k, v)?,
            "K8S_POD_NAME" => out.pod_name = text(k, v)?,
            "K8S_POD_INFRA_CONTAINER_ID" => out.pod_infra_container_id = text(k, v)?,
            "K8S_POD_UID" => out.pod_uid = text(k, v)?,
            _ if ignore_unknown => {}
            _ => {
                return Err(CniError::env(format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow it)")));
            }
        }
    }
    Ok(out)
}

/// An interface in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Since 1.1.0; dropped when encoding older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR, e.g. `10.0.1.23/32`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A result (ADD's answer, and prevResult). Unknown fields of a prevResult are ignored here;
/// pass-through works on the JSON value (see [`merge_prev_result`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    v >= min
}

/// Rewrites the `ips` and `interfaces` of a result (as JSON) for `version`: 0.4.0 results carry
/// `"version": "4"` in every IPv4 entry, 1.x results do not; `mtu` on interfaces exists since 1.1.0.
fn encode_for_version(result: &mut Map<String, Value>, version: &str) {
    let v1 = version_at_least(version, (1, 0, 0));
    let mtu_ok = version_at_least(version, (1, 1, 0));
    if let Some(Value::Array(ips)) = result.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if v1 {
                ip.remove("version");
            } else if !ip.contains_key("version") {
                let is_v6 = ip.get("address").and_then(Value::as_str).is_some_and(|a| a.contains(':'));
                ip.insert("version".into(), Value::String(if is_v6 { "6" } else { "4" }.into()));
            }
        }
    }
    if !mtu_ok && let Some(Value::Array(ifs)) = result.get_mut("interfaces") {
        for i in ifs.iter_mut().filter_map(Value::as_object_mut) {
            i.remove("mtu");
        }
    }
    result.insert("cniVersion".into(), Value::String(version.into()));
}

/// Our result as JSON in `version`, appended to `prev` (a prevResult from an earlier plugin in
/// the chain, passed through untouched except for the version encoding).
pub fn encode_result(ours: &CniResult, version: &str, prev: Option<&Value>) -> Value {
    let mut out = match prev {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let mut take_array = |key: &str| match out.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut interfaces = take_array("interfaces");
    let mut ips = take_array("ips");
    let mut routes = take_array("routes");
    let offset = interfaces.len();
    interfaces.extend(ours.interfaces.iter().map(|i| serde_json::to_value(i).unwrap_or(Value::Null)));
    ips.extend(ours.ips.iter().map(|ip| {
        let mut ip = ip.clone();
        ip.interface = ip.interface.map(|i| i + offset);
        serde_json::to_value(ip).unwrap_or(Value::Null)
    }));
    routes.extend(ours.routes.iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)));
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    if !out.contains_key("dns") {
        out.insert("dns".into(), json!({}));
    }
    encode_for_version(&mut out, version);
    Value::Object(out)
}

/// Decodes a prevResult of any supported version into the fields DEL and CHECK read.
pub fn decode_prev_result(prev: &Value) -> Result<CniResult, String> {
    serde_json::from_value(prev.clone()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_are_parsed_like_the_reference() {
        let a =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;X=y")
                .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert_eq!(a.pod_infra_container_id.as_deref(), Some("abc"));
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());

        let unknown = parse_cni_args("K8S_POD_NAME=p;FOO=bar").unwrap_err();
        assert_eq!(unknown.code, code::INVALID_ENV);
        assert!(unknown.msg.contains("FOO"), "{}", unknown.msg);
        assert_eq!(parse_cni_args("IgnoreUnknown=0;FOO=bar").unwrap_err().code, code::INVALID_ENV);
        assert!(parse_cni_args("FOO=bar;IgnoreUnknown=true").is_ok(), "IgnoreUnknown applies wherever it is");
        for bad in ["K8S_POD_NAME", "a=b=c", "K8S_POD_NAME=p;", ";", "IgnoreUnknown=maybe"] {
            assert_eq!(parse_cni_args(bad).unwrap_err().code, code::INVALID_ENV, "{bad:?}");
        }
    }

    #[test]
    fn results_carry_the_ip_version_only_in_0_4_0() {
        let ours = CniResult {
            interfaces: vec![
                Interface { name: "eni0123".into(), mac: "02:00:00:00:00:01".into(), mtu: Some(9001), sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: Some(9001),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.0.5/32".into(),
                gateway: Some("169.254.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".into(), gw: Some("169.254.1.1".into()) }],
        };
        let old = encode_result(&ours, "0.4.0", None);
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = encode_result(&ours, "1.0.0", None);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert_eq!(v1["dns"], json!({}));
        let v11 = encode_result(&ours, "1.1.0", None);
        assert_eq!(v11["interfaces"][1]["mtu"], 9001);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(v11["interfaces"][0].get("sandbox").is_none());
        // Round trip through the decoder used for prevResult.
        assert_eq!(decode_prev_result(&v11).unwrap(), ours);
    }

    #[test]
    fn a_prev_result_is_passed_through_and_extended() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "other0"}],
            "ips": [{"version": "4", "address": "192.168.0.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.0.0.2"]},
            "custom": 1
        });
        let ours = CniResult {
            interfaces: vec![Interface { name: "eth0".into(), mac: String::new(), mtu: None, sandbox: None }],
            ips: vec![IpConfig { address: "10.0.0.5/32".into(), gateway: None, interface: Some(0) }],
            routes: vec![],
        };
        let out = encode_result(&ours, "1.0.0", Some(&prev));
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(out["ips"][1]["interface"], 1, "our interface index is shifted past prevResult's");
        assert!(out["ips"][0].get("version").is_none());
        assert_eq!(out["dns"]["nameservers"][0], "10.0.0.2");
        assert_eq!(out["custom"], 1);
    }

    #[test]
    fn error_objects_follow_the_spec() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "daemon down");
        assert_eq!(e.to_json("1.0.0"), json!({"cniVersion": "1.0.0", "code": 11, "msg": "daemon down"}));
        let e = e.with_details("connect: ENOENT");
        assert_eq!(e.to_json("1.1.0")["details"], "connect: ENOENT");
    }

    #[test]
    fn version_answers_list_what_we_speak() {
        let v = version_info(Some("1.0.0"));
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version_info(Some("9.9.9"))["cniVersion"], LATEST_VERSION);
        assert_eq!(version_info(None)["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn env_treats_empty_as_unset() {
        let env = Env::from_pairs([("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")]);
        assert_eq!(env.command().unwrap(), Command::Add);
        assert_eq!(env.optional("CNI_NETNS").unwrap(), None);
        assert_eq!(env.required("CNI_IFNAME").unwrap_err().code, code::INVALID_ENV);
        let bad = Env::from_pairs([("CNI_COMMAND", "FROB")]);
        assert_eq!(bad.command().unwrap_err().code, code::INVALID_ENV);
    }
}
