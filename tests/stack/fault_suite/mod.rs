//! The fault suite (`make test-faults`): repeated, counted crashes and outages, each test
//! writing its figures through [`figures::record`]. The tests are `#[ignore]`d because the
//! whole suite takes about 30 minutes; `make test-faults` runs them with `--ignored` and
//! renders the figures as the Markdown table pasted into docs/reliability.md, and `make test`
//! runs the shorter ones, scaled down, through `make test-faults-short`.

pub mod figures;

mod api_kills;
mod idempotency;
mod outages;
mod parked;
mod temporal_kill;
mod worker_kills;
