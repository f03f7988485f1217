//! Installing the CNI conflist once the daemon is ready (`--cni-conf-dir`, off by default).
//!
//! kubelet reports a node Ready only once the runtime finds a network config in
//! `/etc/cni/net.d`. Writing ours only after the first successful sync with the provider means
//! the node turns Ready only when pods can get IPs (the reference daemon's "waiting for IPAM-D"
//! NotReady nodes, issue theme 8, come from the config being there before the daemon is).
//!
//! The file is written atomically (temp file in the same directory, fsync, rename, fsync of the
//! directory): the runtime re-reads the directory at any moment and must never see half a file.
//! It is left in place on shutdown: during a rolling update the node stays Ready and pods
//! started meanwhile get "try again later" (CNI code 11) until the new daemon answers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use crate::app::App;

#[derive(Debug, Error)]
pub enum CniConfError {
    #[error("reading the conflist {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the conflist {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Checks what the runtime needs before it will use a conflist at all: a JSON object with a
/// string `cniVersion`, a string `name` and a non-empty `plugins` array of objects with a `type`.
/// (The plugin's own keys are checked by the plugin; a test feeds this file to its parser.)
pub fn validate(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    for key in ["cniVersion", "name"] {
        if !obj.get(key).is_some_and(Value::is_string) {
            return Err(format!("{key:?} must be a string"));
        }
    }
    let plugins = obj.get("plugins").and_then(Value::as_array).ok_or("\"plugins\" must be an array")?;
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    for (i, p) in plugins.iter().enumerate() {
        if !p.get("type").is_some_and(Value::is_string) {
            return Err(format!("plugins[{i}] has no string \"type\""));
        }
    }
    Ok(())
}

/// Copies `conflist` into `conf_dir` under its own file name, atomically; does nothing when the
/// installed file already has the same content. Returns the installed path.
pub fn install(conf_dir: &Path, conflist: &Path) -> Result<PathBuf, CniConfError> {
    let text = std::fs::read_to_string(conflist)
        .map_err(|source| CniConfError::Read { path: conflist.to_path_buf(), source })?;
    validate(&text).map_err(|reason| CniConfError::Invalid { path: conflist.to_path_buf(), reason })?;
    let name = conflist.file_name().ok_or_else(|| CniConfError::Invalid {
        path: conflist.to_path_buf(),
        reason: "the path names no file".into(),
    })?;
    let target = conf_dir.join(name);
    if std::fs::read_to_string(&target).is_ok_and(|installed| installed == text) {
        return Ok(target);
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CniConfError::Write { path, source }
    };
    std::fs::create_dir_all(conf_dir).map_err(write_err(conf_dir))?;
    // A dot name: the runtime reads only *.conf, *.conflist and *.json, so it never sees this.
    let temp = conf_dir.join(format!(".{}.enipool-tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&temp).map_err(write_err(&temp))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(write_err(&temp))?;
    drop(file);
    std::fs::rename(&temp, &target).map_err(write_err(&target))?;
    std::fs::File::open(conf_dir).and_then(|d| d.sync_all()).map_err(write_err(conf_dir))?;
    Ok(target)
}

/// Called when the daemon turns ready: installs the conflist when `--cni-conf-dir` is set,
/// retrying every pool tick until it succeeds (or the daemon shuts down). Returns at once.
pub fn install_when_ready(app: &Arc<App>) {
    let Some(conf_dir) = app.config.cni_conf_dir.clone() else { return };
    let conflist = app.config.cni_conflist.clone();
    let app = Arc::clone(app);
    tokio::spawn(async move {
        loop {
            let (dir, src) = (conf_dir.clone(), conflist.clone());
            let outcome = tokio::task::spawn_blocking(move || install(&dir, &src)).await;
            match outcome {
                Ok(Ok(path)) => {
                    tracing::info!(path = %path.display(), "CNI conflist installed");
                    app.set_cni_conflist(Ok(path));
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "installing the CNI conflist failed; the node stays NotReady");
                    app.set_cni_conflist(Err(e.to_string()));
                }
                Err(join) => {
                    app.set_cni_conflist(Err(format!("conflist task failed: {join}")));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(app.config.pool_tick) => {}
                _ = app.shutdown_signalled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"aws-cni","plugins":[{"type":"enipool-cni"}]}"#;

    #[test]
    fn installs_atomically_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("10-enipool.conflist");
        std::fs::write(&src, GOOD).unwrap();
        let conf_dir = dir.path().join("net.d");
        let installed = install(&conf_dir, &src).unwrap();
        assert_eq!(installed, conf_dir.join("10-enipool.conflist"));
        assert_eq!(std::fs::read_to_string(&installed).unwrap(), GOOD);
        let names: Vec<_> = std::fs::read_dir(&conf_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-enipool.conflist")], "no temp file left behind");

        let mtime = std::fs::metadata(&installed).unwrap().modified().unwrap();
        install(&conf_dir, &src).unwrap();
        assert_eq!(std::fs::metadata(&installed).unwrap().modified().unwrap(), mtime, "same content: not rewritten");
    }

    #[test]
    fn refuses_what_the_runtime_would_not_use() {
        for bad in [
            "not json",
            "[]",
            r#"{"name":"n","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"socket":"/x"}]}"#,
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bad.conflist");
        std::fs::write(&src, "{}").unwrap();
        let conf_dir = dir.path().join("net.d");
        assert!(matches!(install(&conf_dir, &src), Err(CniConfError::Invalid { .. })));
        assert!(!conf_dir.join("bad.conflist").exists());
    }
}
