//! Jobs: one run of `mainloop-agent` on one step of a task, isolated from everything else.
//!
//! One trait, [`JobRunner`], two runners: [`local`] (a child process in a fresh workspace under
//! the data dir; the default for `mainloop dev`) and [`kubernetes`] (a Job in a namespace per
//! task). Both start a job idempotently by its deterministic name, follow its output from the
//! first line (so a retried activity re-attaches to a job that outlived a worker crash instead
//! of starting a second one), and kill it on cancellation.

pub mod kubernetes;
pub mod local;

use std::time::Duration;

use async_trait::async_trait;
use mainloop_agent::protocol::{AgentResult, AgentSpec, LogSource};
use tokio::sync::mpsc;

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Deterministic and unique per step attempt of a task (`task-{id8}-{mode}-{n}`), a valid
    /// DNS label (Kubernetes object names) and file name. Starting a job whose name is already
    /// running or finished attaches to it instead.
    pub name: String,
    pub task_id: String,
    pub spec: AgentSpec,
    /// Longest the job may run; the runner kills it after that.
    pub timeout: Duration,
}

/// A log line of a job, numbered from 0 in output order. A runner that re-attaches to a job
/// replays its output from the start; the index lets the caller skip lines it already has.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLine {
    pub index: u64,
    pub source: LogSource,
    pub text: String,
}

/// Secrets a job gets as environment variables (never in its spec).
#[derive(Clone, Default)]
pub struct JobSecrets {
    pub github_token: Option<String>,
    pub anthropic_api_key: Option<String>,
    pub claude_code_oauth_token: Option<String>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSecrets")
            .field("github_token", &self.github_token.as_ref().map(|_| "<set>"))
            .field(
                "anthropic_api_key",
                &self.anthropic_api_key.as_ref().map(|_| "<set>"),
            )
            .field(
                "claude_code_oauth_token",
                &self.claude_code_oauth_token.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Running the job again may succeed (the job died, the cluster was unreachable).
    #[error("{0}")]
    Retryable(String),
    /// It will not (a malformed spec, a refused manifest).
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// Starts the job unless one with `request.name` exists, then follows its output from the
    /// first line to its result, sending each log line to `lines`. A job that ends without a
    /// result line (killed, crashed) is a [`JobError::Retryable`]; a result whose outcome is
    /// `Failed` is returned as `Ok` for the caller to judge.
    async fn run(
        &self,
        request: &JobRequest,
        lines: mpsc::UnboundedSender<JobLine>,
    ) -> Result<AgentResult, JobError>;

    /// Stops the job named `name` if it runs. Idempotent.
    async fn cancel(&self, task_id: &str, name: &str) -> Result<(), JobError>;

    /// Removes everything the task's jobs left behind (workspaces, the namespace). Idempotent.
    async fn cleanup(&self, task_id: &str) -> Result<(), JobError>;
}
