//! The `mainloop` binary's library half: configuration, the wiring of the crates into
//! running services (`dev`, `serve`, `worker`, `migrate`, `mcp`) and their metrics listener.
//! `main.rs` only parses and calls in; benchmarks and tools reuse the same wiring.

pub mod config;
pub mod demo;
pub mod dev;
pub mod metrics;
pub mod probe;
pub mod run;
