//! The daemon's integration tests, in one test binary: each of the modules below was a test
//! binary of its own, and each linked the daemon with aws-sdk-ec2. One binary links it once.
//! nextest still runs every test in its own process; `.config/nextest.toml` picks the moto
//! tests (modules `moto_*`) by test name for their hard timeout.

mod common;

mod api;
mod bad_input;
mod churn;
mod cli;
mod cni_conf;
mod deploy;
mod full_disk;
mod layout;
mod limits;
mod moto_daemon;
mod moto_host;
mod node;
mod openapi_file;
mod operator_docs;
mod pool;
mod privileges;
mod restart;
mod status_page;
