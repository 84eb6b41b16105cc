//! The fault suite (`make test-faults`): repeated, counted crashes and outages, each test
//! writing its figures through [`figures::record`]. The tests are `#[ignore]`d so `make test`
//! stays fast; `make test-faults` runs them with `--ignored` and renders the figures as the
//! Markdown table pasted into docs/reliability.md.

pub mod figures;

mod api_kills;
mod idempotency;
mod outages;
mod parked;
mod temporal_kill;
mod worker_kills;
