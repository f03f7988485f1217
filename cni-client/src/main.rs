//! enipool-cni: the CNI plugin the container runtime execs for every pod. It leases an IP from
//! enipoold over a unix socket and wires the pod's network namespace (veth, /32 address, routes,
//! static neighbour, host route and rules, node SNAT). See ARCHITECTURE.md.

use std::io::{Read, Write};
use std::process::ExitCode;

mod arena;
mod commands;
mod config;
mod daemon_client;
mod log;
mod net;
mod protocol;
mod snat;

/// Zero-filled `.bss`: costs nothing until a page is touched.
static mut ARENA: arena::Arena<{ arena::ARENA_BYTES }> = arena::Arena([0; arena::ARENA_BYTES]);

#[global_allocator]
// SAFETY: ARENA is page-aligned and nothing but this allocator uses it.
static ALLOCATOR: arena::BumpThenSystem =
    unsafe { arena::BumpThenSystem::new((&raw mut ARENA).cast::<u8>(), arena::ARENA_BYTES) };

fn main() -> ExitCode {
    let env = protocol::Env::from_process();
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(config::MAX_STDIN_BYTES as u64 + 1).read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => error_outcome(protocol::CniError::new(protocol::code::IO_FAILURE, format!("reading stdin: {e}"))),
        Ok(_) if stdin.len() > config::MAX_STDIN_BYTES => error_outcome(protocol::CniError::new(
            protocol::code::DECODE_FAILURE,
            format!("stdin is larger than {} bytes", config::MAX_STDIN_BYTES),
        )),
        Ok(_) => {
            let fail_at = test_fault();
            std::panic::catch_unwind(|| commands::run(&env, &stdin, fail_at)).unwrap_or_else(|_| {
                error_outcome(protocol::CniError::new(protocol::code::INTERNAL, "enipool-cni panicked (a bug)"))
            })
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    ExitCode::from(outcome.exit)
}

fn error_outcome(e: protocol::CniError) -> commands::Outcome {
    let mut stdout = serde_json::to_vec(&e.to_json(protocol::LATEST_VERSION)).unwrap_or_default();
    stdout.push(b'\n');
    commands::Outcome { stdout, exit: 1 }
}

/// The test-only fault point (`ENIPOOL_CNI_TEST_FAIL_AT=after-wire`), read only in builds with
/// debug assertions (the test profile): a release plugin has no hook an environment can pull.
#[cfg(debug_assertions)]
fn test_fault() -> Option<commands::FailAt> {
    std::env::var("ENIPOOL_CNI_TEST_FAIL_AT").ok().and_then(|s| commands::FailAt::parse(&s))
}

#[cfg(not(debug_assertions))]
fn test_fault() -> Option<commands::FailAt> {
    None
}
