//! mainloop's Temporal workflows, the wire types of their inputs, signals and queries, and
//! the assembly of a worker that runs them with their activities.
//!
//! Workflows decide, activities do: nothing here performs I/O, reads a clock or draws a
//! random number except through the workflow context.

pub mod connect;
pub mod defaults;
pub mod main_thread;
pub mod options;
pub mod payload;
pub mod replay;
pub mod task;
pub mod worker;

use temporalio_common::search_attributes::SearchAttributeKey;

pub use connect::TemporalSettings;
pub use main_thread::{MainThreadInput, MainThreadWorkflow};
pub use task::{TaskInput, WorkerTaskWorkflow};

/// Task queue of mainloop's workflows and activities unless configured otherwise.
pub const DEFAULT_TASK_QUEUE: &str = "mainloop";

/// The task queue of the jobs (`jobs.run`) of the workflows on `task_queue`. Its own worker
/// polls it only while it has a job slot free (`MAINLOOP_MAX_JOBS`), so jobs waiting their turn
/// wait in Temporal, not in the worker's activity slots that chat turns and the other task
/// activities need at once.
pub fn job_task_queue(task_queue: &str) -> String {
    format!("{task_queue}-jobs")
}

/// The task queue of the main threads (and so their chat turns) of the workflows on
/// `task_queue`. Its own worker polls it, so a reply or a confirmed proposal never queues
/// behind the workflow tasks of hundreds of tasks reporting at once.
pub fn chat_task_queue(task_queue: &str) -> String {
    format!("{task_queue}-chat")
}

/// The task queue new tasks start on, for the workflows on `task_queue`. A task leaves it for
/// `task_queue` when it first waits (for a person or for CI), so what waits here is only tasks
/// at their start: a new task is never queued behind the replays of hundreds of parked tasks
/// that were all answered while no worker ran.
pub fn intake_task_queue(task_queue: &str) -> String {
    format!("{task_queue}-intake")
}

/// Search attributes (registered on the namespace; see `temporal/`).
pub const SEARCH_ATTRIBUTE_USER: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("MainloopUser");
pub const SEARCH_ATTRIBUTE_TASK_STATUS: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("MainloopTaskStatus");
pub const SEARCH_ATTRIBUTE_REPO: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("MainloopRepo");

/// Every search attribute with its type, for registering them on a namespace.
pub const SEARCH_ATTRIBUTES: &[(&str, &str)] = &[
    ("MainloopUser", "Keyword"),
    ("MainloopTaskStatus", "Keyword"),
    ("MainloopRepo", "Keyword"),
];

/// Workflow id of a user's main thread.
pub fn main_thread_id(user: &str) -> String {
    format!("main-thread/{user}")
}
