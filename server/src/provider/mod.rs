//! Providers: the trait and its types come from `enipool-provider`; the built-in `static`
//! provider lives here.

pub mod static_provider;

pub use enipool_provider::*;
