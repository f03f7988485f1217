//! The code's shape, kept true by tests (ARCHITECTURE.md states both): no two modules of the
//! daemon import each other, and the node's kernel helpers exist only in `enipool-nodenet`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `api/leases.rs` -> `api::leases`, `api/mod.rs` -> `api`; None for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => None,
        _ => Some(parts.join("::")),
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may use
/// anything of the module they test).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every `a::b::c` path that follows `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    code.match_indices(prefix).map(move |(at, _)| {
        code[at + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
    })
}

/// Module -> the other modules of the crate it uses (`crate::x`, `super::x`, and a child's
/// items by their relative path).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(String, String)> = rust_files(src)
        .iter()
        .filter_map(|f| Some((module_of(src, f)?, code(&std::fs::read_to_string(f).ok()?))))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    // The longest module that `path` (a::b::Item) names.
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        (1..=parts.len()).rev().map(|k| parts[..k].join("::")).find(|m| modules.contains(m))
    };
    let mut graph = BTreeMap::new();
    for (module, code) in &files {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut uses = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            uses.extend(resolve(&path));
        }
        for path in paths_after(code, "super::") {
            let full = if parent.is_empty() { path } else { format!("{parent}::{path}") };
            // `super::Item` is the parent itself.
            uses.insert(resolve(&full).unwrap_or_else(|| parent.to_string()));
        }
        for line in code.lines().map(str::trim_start) {
            let Some(rest) = line.strip_prefix("use ").or_else(|| line.strip_prefix("pub use ")) else { continue };
            let child = format!("{module}::{rest}");
            if let Some(m) = resolve(&child).filter(|m| m != module) {
                uses.insert(m);
            }
        }
        uses.remove(module);
        uses.remove("");
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn no_two_daemon_modules_import_each_other() {
    let graph = module_graph(&workspace().join("server/src"));
    assert!(graph.contains_key("api::leases") && graph.contains_key("pool::manager"), "{graph:?}");
    assert!(graph["api::status_page"].contains("api::views"), "the reader finds relative imports");
    let mut pairs = Vec::new();
    for (a, uses) in &graph {
        for b in uses {
            if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                pairs.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(pairs.is_empty(), "modules that import each other: {pairs:?}");
}

#[test]
fn the_reader_sees_a_cycle_where_there_is_one() {
    // The negative control: two files that import each other are caught.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("api")).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "pub mod api;\npub mod app;\n").unwrap();
    std::fs::write(dir.path().join("api/mod.rs"), "mod views;\nuse crate::app::App;\n").unwrap();
    std::fs::write(dir.path().join("api/views.rs"), "use super::Thing;\n").unwrap();
    std::fs::write(dir.path().join("app.rs"), "use crate::api::views::X;\n").unwrap();
    let graph = module_graph(dir.path());
    assert!(graph["api::views"].contains("api"), "{graph:?}");
    assert!(graph["app"].contains("api::views") && graph["api"].contains("app"), "{graph:?}");
}

/// What only `enipool-nodenet` may write: entering a namespace, the nsfs magic, errno mapping
/// of netlink errors, our routing protocol number.
const KERNEL_HELPERS: &[&str] = &["libc::setns", "0x6e73_6673", "NetlinkError(", "Other(211)", "= 211", "statfs("];

#[test]
fn the_kernel_helpers_exist_only_in_nodenet() {
    let root = workspace();
    let mut copies = Vec::new();
    for dir in ["server/src", "cni-client/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = code(&std::fs::read_to_string(&file).unwrap());
            for helper in KERNEL_HELPERS {
                if text.contains(helper) {
                    copies.push(format!("{} has {helper}", file.strip_prefix(&root).unwrap().display()));
                }
            }
        }
    }
    assert!(copies.is_empty(), "kernel helpers outside nodenet/: {copies:?}");
    let nodenet =
        rust_files(&root.join("nodenet/src")).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<String>();
    for helper in ["libc::setns", "0x6e73_6673", "NetlinkError(", "statfs("] {
        assert!(nodenet.contains(helper), "nodenet/ should hold {helper}");
    }
}
