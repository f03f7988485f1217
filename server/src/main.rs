//! enipoold is not built yet (see the daemon issue); this binary says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!("enipoold: the daemon is not implemented yet; only the ledger (crate enipool-storage) exists");
    std::process::ExitCode::from(2)
}
