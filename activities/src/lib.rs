//! mainloop's Temporal activities: everything that touches the outside world on a workflow's
//! behalf (the model, the store, GitHub, worker jobs). Activities run at least once, so
//! each is idempotent; failures are classified as retryable or permanent in `errors`.

pub mod anthropic;
pub mod chat;
pub mod chat_cli;
mod errors;
pub mod github;
pub mod governor;
mod heartbeat;
pub mod jobs;
pub mod mcp;
pub mod metrics;
pub mod pricing;
pub mod repo;
pub mod task_text;
pub mod tasks;

pub use chat::{ChatActivities, ChatBackend, ChatSettings, ThreadConfig};
