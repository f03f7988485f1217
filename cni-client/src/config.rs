//! The network configuration on stdin: one entry of a `.conflist` with the runtime's additions
//! (`name`, `cniVersion`, `prevResult`, `runtimeConfig`, `cni.dev/valid-attachments`).
//! Unknown keys are tolerated (runtimes and other tools add their own); a known key with an
//! invalid value is code 7 and the message names the key.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::protocol::{self, CniError, code};

pub const DEFAULT_SOCKET: &str = "/run/enipool/enipool.sock";
pub const DEFAULT_STATE_DIR: &str = "/run/enipool";
pub const DEFAULT_VETH_PREFIX: &str = "eni";
/// 10 MiB, then one rotation to `<logFile>.1`: at most ~20 MiB on the node.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// A runtime's ADD times out after minutes; a lock held this long is a stuck process.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest stdin we read: configs are a few KiB; a runaway writer must not exhaust memory.
pub const MAX_STDIN_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// One valid attachment from GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// Which iptables the node's rules live in (`iptablesMode`): the one the node's `iptables`
/// alternative points at, or the legacy or nf_tables one by name (a node whose kube-proxy uses
/// the other backend than the default alternative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Iptables {
    #[default]
    Auto,
    Legacy,
    Nft,
}

impl Iptables {
    pub fn parse(s: &str) -> Option<Iptables> {
        match s {
            "auto" => Some(Iptables::Auto),
            "legacy" => Some(Iptables::Legacy),
            "nft" => Some(Iptables::Nft),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    /// The network name; ADD, DEL, CHECK and GC need it (the lease key starts with it).
    pub name: Option<String>,
    /// The daemon's unix socket.
    pub socket: PathBuf,
    /// Host veth names are this plus 11 hex digits; at most 4 characters.
    pub veth_prefix: String,
    pub log_file: Option<PathBuf>,
    /// `logMaxBytes`: past this size the log is rotated to `<logFile>.1` (one old file kept).
    pub log_max_bytes: u64,
    pub log_level: LogLevel,
    /// `lockTimeout` (seconds): the longest wait for a node-wide lock (the plugin's SNAT lock,
    /// the iptables lock); past it the command fails with code 11.
    pub lock_timeout: std::time::Duration,
    /// `iptablesMode`: `auto` (the node's `iptables` alternative), `legacy` or `nft`.
    pub iptables: Iptables,
    /// Where node-wide markers and locks live (the SNAT marker and lock). A tmpfs, so a reboot clears it.
    pub state_dir: PathBuf,
    pub prev_result: Option<Value>,
    /// Why `prevResult` was dropped, when it was given but not an object.
    pub prev_result_error: Option<String>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(CniError::config(key, "must be a string")),
    }
}

fn absolute_path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match string(obj, key)? {
        None => Ok(None),
        Some(s) if s.starts_with('/') && !s.contains('\0') && s.len() < 4096 => Ok(Some(PathBuf::from(s))),
        Some(s) => Err(CniError::config(key, format!("must be an absolute path, not {s:?}"))),
    }
}

/// Parses stdin. Not JSON is code 6; not an object, or a known key with a bad value, is code 7;
/// a cniVersion we do not speak is code 1.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("network config on stdin is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network config: must be a JSON object"));
    };
    let cni_version = string(&obj, "cniVersion")?.ok_or_else(|| CniError::config("cniVersion", "is required"))?;
    if !protocol::is_supported(cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {cni_version:?}: this plugin supports {}",
                protocol::SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let name = string(&obj, "name")?.map(str::to_string);
    if let Some(n) = &name {
        enipool_api::check_network(n).map_err(|e| CniError::config("name", e.reason))?;
    }
    string(&obj, "type")?;
    let socket = absolute_path(&obj, "socket")?.unwrap_or_else(|| DEFAULT_SOCKET.into());
    let state_dir = absolute_path(&obj, "stateDir")?.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let log_file = absolute_path(&obj, "logFile")?;
    let log_max_bytes = match obj.get("logMaxBytes") {
        None | Some(Value::Null) => DEFAULT_LOG_MAX_BYTES,
        Some(v) => v
            .as_u64()
            .filter(|n| (4096..=1 << 30).contains(n))
            .ok_or_else(|| CniError::config("logMaxBytes", "must be a whole number from 4096 to 1073741824"))?,
    };
    let iptables = match string(&obj, "iptablesMode")? {
        None => Iptables::default(),
        Some(m) => Iptables::parse(m)
            .ok_or_else(|| CniError::config("iptablesMode", format!("must be auto, legacy or nft, not {m:?}")))?,
    };
    let lock_timeout = match obj.get("lockTimeout") {
        None | Some(Value::Null) => DEFAULT_LOCK_TIMEOUT,
        Some(v) => {
            v.as_f64().filter(|s| *s > 0.0 && *s <= 300.0).map(std::time::Duration::from_secs_f64).ok_or_else(|| {
                CniError::config("lockTimeout", "must be a number of seconds, more than 0 and at most 300")
            })?
        }
    };
    let veth_prefix = match string(&obj, "vethPrefix")? {
        None => DEFAULT_VETH_PREFIX.to_string(),
        Some(p) => {
            if p.is_empty() || p.len() > 4 || !p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(CniError::config(
                    "vethPrefix",
                    format!("must be 1-4 characters of letters, digits, '-', '_' or '.', not {p:?}"),
                ));
            }
            p.to_string()
        }
    };
    let log_level = match string(&obj, "logLevel")?.map(str::to_ascii_lowercase).as_deref() {
        None => LogLevel::Info,
        Some("error") => LogLevel::Error,
        Some("warn" | "warning") => LogLevel::Warn,
        Some("info") => LogLevel::Info,
        Some("debug" | "trace") => LogLevel::Debug,
        Some(other) => {
            return Err(CniError::config("logLevel", format!("must be error, warn, info or debug, not {other:?}")));
        }
    };
    // A malformed prevResult fails ADD and CHECK (`NetConf::checked_prev_result`), but DEL must
    // still clean up, so it is not refused here.
    let (prev_result, prev_result_error) = match obj.get("prevResult") {
        None | Some(Value::Null) => (None, None),
        Some(v @ Value::Object(_)) => (Some(v.clone()), None),
        Some(other) => (None, Some(format!("must be an object, not {}", json_kind(other)))),
    };
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let key = "cni.dev/valid-attachments";
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Value::Object(a) = item else {
                    return Err(CniError::config(key, "entries must be objects"));
                };
                let field = |f: &str| -> Result<String, CniError> {
                    match a.get(f) {
                        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(CniError::config(key, format!("entries need a non-empty string {f:?}"))),
                    }
                };
                out.push(ValidAttachment { container_id: field("containerID")?, ifname: field("ifname")? });
            }
            Some(out)
        }
        Some(_) => return Err(CniError::config("cni.dev/valid-attachments", "must be an array")),
    };
    Ok(NetConf {
        cni_version: cni_version.to_string(),
        name,
        socket,
        veth_prefix,
        log_file,
        log_max_bytes,
        lock_timeout,
        iptables,
        log_level,
        state_dir,
        prev_result,
        prev_result_error,
        valid_attachments,
    })
}

/// The cniVersion of stdin if it can be read at all, for error objects and VERSION.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// "an object", "an array", ... for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl NetConf {
    /// `prevResult`, refusing a malformed one (ADD and CHECK; DEL logs it and carries on).
    pub fn checked_prev_result(&self) -> Result<Option<&Value>, CniError> {
        match &self.prev_result_error {
            Some(why) => Err(CniError::config("prevResult", why.clone())),
            None => Ok(self.prev_result.as_ref()),
        }
    }

    pub fn network(&self) -> Result<&str, CniError> {
        self.name.as_deref().ok_or_else(|| CniError::config("name", "is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_keys_are_tolerated() {
        let c =
            parse(br#"{"cniVersion":"1.0.0","name":"aws-cni","type":"enipool-cni","somethingElse":{"x":1}}"#).unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.veth_prefix, "eni");
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.network().unwrap(), "aws-cni");
    }

    #[test]
    fn bad_values_are_code_7_naming_the_key() {
        for (input, key) in [
            (r#"{"cniVersion":"1.0.0","vethPrefix":"toolong"}"#, "vethPrefix"),
            (r#"{"cniVersion":"1.0.0","vethPrefix":""}"#, "vethPrefix"),
            (r#"{"cniVersion":"1.0.0","vethPrefix":"a/b"}"#, "vethPrefix"),
            (r#"{"cniVersion":"1.0.0","socket":"relative.sock"}"#, "socket"),
            (r#"{"cniVersion":"1.0.0","socket":5}"#, "socket"),
            (r#"{"cniVersion":"1.0.0","logLevel":"loud"}"#, "logLevel"),
            (r#"{"cniVersion":"1.0.0","iptablesMode":"ebtables"}"#, "iptablesMode"),
            (r#"{"cniVersion":"1.0.0","lockTimeout":0}"#, "lockTimeout"),
            (r#"{"cniVersion":"1.0.0","lockTimeout":"10"}"#, "lockTimeout"),
            (r#"{"cniVersion":"1.0.0","logMaxBytes":100}"#, "logMaxBytes"),
            (r#"{"cniVersion":"1.0.0","logFile":"x.log"}"#, "logFile"),
            (r#"{"cniVersion":"1.0.0","name":"bad name"}"#, "name"),
            (
                r#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
                "cni.dev/valid-attachments",
            ),
            (r#"{"name":"n"}"#, "cniVersion"),
        ] {
            let e = parse(input.as_bytes()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{input}: {e}");
            assert!(e.msg.contains(key), "{input}: {e}");
        }
    }

    #[test]
    fn decode_and_version_failures_have_their_codes() {
        assert_eq!(parse(b"{not json").unwrap_err().code, code::DECODE_FAILURE);
        assert_eq!(parse(b"").unwrap_err().code, code::DECODE_FAILURE);
        assert_eq!(parse(b"[1]").unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(parse(br#"{"cniVersion":"0.3.1"}"#).unwrap_err().code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn valid_attachments_are_read() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment { container_id: "c1".into(), ifname: "eth0".into() }]
        );
    }

    #[test]
    fn a_malformed_prev_result_is_kept_as_an_error_not_refused() {
        let conf = parse(br#"{"cniVersion":"1.0.0","name":"n","prevResult":[]}"#).unwrap();
        assert_eq!(conf.prev_result, None);
        let e = conf.checked_prev_result().unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("prevResult") && e.msg.contains("an array"), "{e}");
    }
}
