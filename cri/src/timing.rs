//! What the `cni-timer` wrapper records: one JSON line per plugin call, appended to
//! `timings.jsonl` in the wrapper's own directory (one write per line, O_APPEND, so concurrent
//! calls never interleave).

use std::path::Path;

use serde_json::Value;

pub const TIMINGS_FILE: &str = "timings.jsonl";

/// One plugin call as containerd made it.
#[derive(Clone, Debug)]
pub struct Call {
    pub plugin: String,
    pub network: String,
    pub command: String,
    pub container_id: String,
    /// `CNI_NETNS` as given (empty on the second DEL, on RemovePodSandbox).
    pub netns: String,
    /// `CNI_NETNS` was set (the second DEL on RemovePodSandbox has none).
    pub with_netns: bool,
    /// When the call started, Unix microseconds.
    pub started_us: u64,
    pub exit: i32,
    pub micros: u64,
}

impl Call {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "plugin": self.plugin, "network": self.network, "command": self.command,
            "container_id": self.container_id, "netns": self.netns, "with_netns": self.with_netns,
            "started_us": self.started_us,
            "exit": self.exit, "micros": self.micros,
        })
        .to_string()
    }

    fn from_json(v: &Value) -> Option<Call> {
        Some(Call {
            plugin: v["plugin"].as_str()?.into(),
            network: v["network"].as_str()?.into(),
            command: v["command"].as_str()?.into(),
            container_id: v["container_id"].as_str()?.into(),
            netns: v["netns"].as_str()?.into(),
            with_netns: v["with_netns"].as_bool()?,
            started_us: v["started_us"].as_u64()?,
            exit: i32::try_from(v["exit"].as_i64()?).ok()?,
            micros: v["micros"].as_u64()?,
        })
    }
}

/// Every call recorded in `bin_dir` so far.
pub fn read_calls(bin_dir: &Path) -> Vec<Call> {
    std::fs::read_to_string(bin_dir.join(TIMINGS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Call::from_json(&v))
        .collect()
}

/// Now, Unix microseconds (what [`Call::started_us`] is compared with).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
