use std::process::ExitCode;

use clap::Parser;
use enipool_server::config::{Cli, Command};
use enipool_server::node::eni_setup;
use enipool_server::provider::instance_types::max_pods;
use enipool_server::{api, operator, startup};

fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enipoold: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Some(Command::Openapi) => {
                print!("{}", api::openapi_json());
                Ok(())
            }
            Some(Command::Status(c)) => operator::status(&c).await.map(|s| print!("{s}")),
            Some(Command::Leases(c)) => operator::leases(&c).await.map(|s| print!("{s}")),
            Some(Command::MaxPods(c)) => {
                let n = max_pods(&c.instance_type, c.prefix_delegation, c.custom_networking)?;
                println!("{n}");
                Ok(())
            }
            Some(Command::NodeSysctls(c)) => {
                let before = eni_setup::apply_node_sysctls(c.interface).await?;
                let after = eni_setup::NodeSysctls::read(&before.interface)?;
                println!("enipoold node-sysctls: was {before}; now {after}");
                Ok(())
            }
            None => {
                let config = args.daemon.resolve()?;
                let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
                    .map_err(|e| anyhow::anyhow!("--log {:?}: {e}", config.log))?;
                {
                    use std::io::IsTerminal;
                    let ansi = std::io::stderr().is_terminal();
                    tracing_subscriber::fmt()
                        .with_env_filter(filter)
                        .with_ansi(ansi)
                        .with_writer(std::io::stderr)
                        .init();
                }
                Ok(startup::run(config).await?)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enipoold: {e:#}");
            ExitCode::from(1)
        }
    }
}
