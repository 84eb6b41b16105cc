//! Whole-system tests: the `mainloop` binary against a real Temporal dev server and a real
//! PostgreSQL, with only the Anthropic API faked at its wire.

mod budgets;
mod chat;
mod counters;
mod dev;
mod fault_suite;
mod faults;
mod governor;
mod harness;
mod histories;
mod histories_paths;
mod long_thread;
mod metrics;
mod pg_cut;
mod subscription;
mod task_humans;
mod task_recovery;
mod tasks;
mod webhooks;
