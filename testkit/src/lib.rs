//! Fakes of the outside world and harnesses for mainloop's tests and for `mainloop dev --demo`:
//! a fake Anthropic Messages API, a fake GitHub, a fake Kubernetes API server (with a kubelet
//! that runs pods as local processes), a fake Cloudflare Access team (its keys and tokens), the demo built on the fakes (`demo`), a Temporal
//! dev-server harness, a throwaway PostgreSQL server, and helpers for child processes and
//! free ports.
//!
//! Nothing here depends on mainloop's own crates: the fakes speak only the wire protocols of
//! the services they stand in for.

pub mod anthropic;
pub mod cloudflare;
pub mod demo;
pub mod github;
pub mod kubernetes;
pub mod ports;
pub mod postgres;
pub mod process;
mod server;
pub mod sse;
pub mod temporal;
