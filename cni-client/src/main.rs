//! enipool-cni is not built yet (see the CNI issue). Until then it answers every command with a
//! CNI error object, code 100+ ("ours"), rather than pretending to set up a pod.

fn main() -> std::process::ExitCode {
    println!(r#"{{"cniVersion":"1.1.0","code":100,"msg":"enipool-cni is not implemented yet"}}"#);
    std::process::ExitCode::from(1)
}
