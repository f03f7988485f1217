//! deploy/10-enipool.conflist, the file the daemon installs on every node, is accepted by the
//! plugin's own config parser: each entry of type enipool-cni, with the `name` and `cniVersion`
//! the runtime copies into it from the list, parses and yields the settings the DaemonSet
//! expects. The parser is the plugin's source itself, compiled into this test.

#[allow(dead_code)]
#[path = "../src/protocol.rs"]
mod protocol;

#[allow(dead_code)]
#[path = "../src/config.rs"]
mod config;

use std::path::PathBuf;

use serde_json::Value;

#[test]
fn the_deployed_conflist_parses_with_the_plugins_parser() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-enipool.conflist");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let list: Value = serde_json::from_str(&text).expect("the conflist is JSON");
    let ours: Vec<&Value> =
        list["plugins"].as_array().expect("plugins").iter().filter(|p| p["type"] == "enipool-cni").collect();
    assert_eq!(ours.len(), 1, "one enipool-cni entry");
    assert_eq!(list["plugins"][0]["type"], "enipool-cni", "first in the chain: later plugins read its result");

    // What libcni hands the plugin: the entry plus the list's name and cniVersion.
    let mut entry = ours[0].clone();
    entry["name"] = list["name"].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    let conf = config::parse(&serde_json::to_vec(&entry).unwrap())
        .unwrap_or_else(|e| panic!("the plugin refuses deploy/10-enipool.conflist: code {} {}", e.code, e.msg));
    assert_eq!(conf.network().unwrap(), "aws-cni");
    assert_eq!(conf.socket, PathBuf::from(config::DEFAULT_SOCKET), "the socket the DaemonSet's daemon binds");
    assert_eq!(conf.state_dir, PathBuf::from("/run/enipool"));
    assert_eq!(conf.veth_prefix, "eni");
    assert_eq!(conf.log_file, Some(PathBuf::from("/var/log/enipool-cni.log")));
    assert!(protocol::is_supported(list["cniVersion"].as_str().unwrap()));
}
