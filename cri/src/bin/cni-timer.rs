//! Stands in for a CNI plugin in a bin dir and times each call of it as the runtime makes it:
//! `<bin>/NAME` is this binary, `<bin>/real/NAME` the plugin. It passes stdin, stdout and the
//! exit status through and appends one JSON line per call to `<bin>/timings.jsonl`
//! (enipool_cri::timing). Its own fork and exec are outside the timed span, and are the same for
//! every network.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use enipool_cri::timing::{Call, TIMINGS_FILE, now_us};

/// Fails the call the way a plugin does: a CNI error object on stdout, code 100 and up ours.
fn fail(msg: &str) -> ! {
    let error = serde_json::json!({"cniVersion": "1.0.0", "code": 100, "msg": format!("cni-timer: {msg}")});
    println!("{error}");
    std::process::exit(1);
}

fn main() {
    let argv0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
    let (Some(name), Some(bin_dir)) = (argv0.file_name(), argv0.parent()) else {
        fail(&format!("cannot tell which plugin {} stands for", argv0.display()));
    };
    let real = bin_dir.join("real").join(name);
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let network = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|c| c["name"].as_str().map(str::to_string))
        .unwrap_or_default();

    let started_us = now_us();
    let start = Instant::now();
    let outcome =
        Command::new(&real).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().and_then(
            |mut child| {
                // A plugin may exit before reading all of stdin (VERSION): that is not our failure.
                let _ = child.stdin.take().map(|mut s| s.write_all(&stdin));
                child.wait_with_output()
            },
        );
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let output = match outcome {
        Ok(o) => o,
        Err(e) => fail(&format!("running {}: {e}", real.display())),
    };
    let Some(exit) = output.status.code() else {
        fail(&format!("{} was killed: {}", real.display(), output.status));
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let call = Call {
        plugin: name.to_string_lossy().into_owned(),
        network,
        command: env("CNI_COMMAND"),
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        with_netns: !env("CNI_NETNS").is_empty(),
        started_us,
        exit,
        micros,
    };
    if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(bin_dir.join(TIMINGS_FILE)) {
        let _ = log.write_all(format!("{}\n", call.to_json()).as_bytes());
    }
    let _ = std::io::stdout().write_all(&output.stdout);
    std::process::exit(exit);
}
