//! The sandbox ("pause") image, built locally so no registry is needed: a `gcc -static` binary
//! that sleeps until SIGTERM, packed as an OCI image layout tar that `ctr images import` takes.
//! Built once per source text and cached under the temp dir (written whole, then renamed).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::run;

/// The name containerd's `sandbox_image` refers to.
pub const SANDBOX_IMAGE: &str = "enipool.test/pause:1";

const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
"#;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Bumped whenever `build` changes what it makes: part of the cache key with the source and name.
const BUILD_VERSION: u32 = 1;

/// The OCI name of this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image tar, built if missing.
pub fn sandbox_image_tar() -> PathBuf {
    let key = format!("{BUILD_VERSION}\n{SANDBOX_IMAGE}\n{}\n{PAUSE_C}", oci_arch());
    let cache = std::env::temp_dir().join(format!("enipool-cri-pause-{}.tar", &sha256_hex(key.as_bytes())[..16]));
    if cache.exists() {
        return cache;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let built = build(work.path());
    // Another test process may have won the race; both wrote the same bytes.
    std::fs::rename(&built, &cache)
        .unwrap_or_else(|e| panic!("renaming {} into {}: {e}", built.display(), cache.display()));
    cache
}

fn build(work: &Path) -> PathBuf {
    let src = work.join("pause.c");
    std::fs::write(&src, PAUSE_C).unwrap();
    let rootfs = work.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run(Command::new("gcc").args(["-static", "-Os", "-o"]).arg(rootfs.join("pause")).arg(&src));
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("pause"));

    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256_hex(bytes);
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&std::fs::read(&layer).unwrap());
    let config = json!({
        "architecture": oci_arch(), "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let (name, tag) = SANDBOX_IMAGE.rsplit_once(':').unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": format!("{name}:{tag}"), "org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = work.join("image.tar");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg("."));
    tar
}
