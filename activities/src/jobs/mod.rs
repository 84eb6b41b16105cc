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
use mainloop_agent::protocol::{AgentEvent, AgentResult, AgentSpec, GITHUB_TOKEN_ENV, LogSource};
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
/// A job that ended without a result and is started again under the same name continues the
/// numbering after the lines of the attempt it replaces, so an index never names two lines.
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

impl JobSecrets {
    /// The secrets that are set, with the environment variable each is passed in and the key
    /// it has in the Kubernetes Secret that holds it.
    pub fn vars(&self) -> Vec<SecretVar<'_>> {
        [
            (
                GITHUB_TOKEN_ENV,
                "github-token",
                self.github_token.as_deref(),
            ),
            (
                ANTHROPIC_API_KEY_ENV,
                "anthropic-api-key",
                self.anthropic_api_key.as_deref(),
            ),
            (
                CLAUDE_CODE_OAUTH_TOKEN_ENV,
                "claude-code-oauth-token",
                self.claude_code_oauth_token.as_deref(),
            ),
        ]
        .into_iter()
        .filter_map(|(env, key, value)| value.map(|value| SecretVar { env, key, value }))
        .collect()
    }
}

/// One secret of [`JobSecrets`] as a job receives it.
#[derive(Clone, Copy)]
pub struct SecretVar<'a> {
    /// The environment variable the agent reads it from.
    pub env: &'static str,
    /// Its key in the per-task Kubernetes Secret.
    pub key: &'static str,
    pub value: &'a str,
}

impl std::fmt::Debug for SecretVar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVar")
            .field("env", &self.env)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Where the agent works: the runner points it at a fresh, empty directory.
pub const WORKSPACE_ENV: &str = "MAINLOOP_AGENT_WORKSPACE";
pub const ANTHROPIC_API_KEY_ENV: &str = "ANTHROPIC_API_KEY";
pub const CLAUDE_CODE_OAUTH_TOKEN_ENV: &str = "CLAUDE_CODE_OAUTH_TOKEN";

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

/// Turns a job's output lines into [`JobLine`]s and its result, the same way for every runner:
/// protocol log events keep their source, other non-blank lines (a stray print) are the
/// agent's, and numbering counts only the lines forwarded, so a replay numbers them alike.
#[derive(Debug, Default)]
pub(crate) struct OutputParser {
    next_index: u64,
}

/// What one output line is.
#[derive(Debug)]
pub(crate) enum Parsed {
    Blank,
    Line(JobLine),
    Result(AgentResult),
}

impl OutputParser {
    /// Numbering from `first_index` (a restarted job's, see [`JobLine`]).
    pub(crate) fn starting_at(first_index: u64) -> Self {
        Self {
            next_index: first_index,
        }
    }

    /// The index the next forwarded line gets.
    pub(crate) fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Classifies one line (without its newline), numbering it if it is a log line.
    pub(crate) fn parse(&mut self, raw: &str) -> Parsed {
        let text = raw.trim_end_matches(['\r', '\n']);
        if text.trim().is_empty() {
            return Parsed::Blank;
        }
        let (source, text) = match AgentEvent::parse_line(text) {
            Some(AgentEvent::Result(result)) => return Parsed::Result(result),
            Some(AgentEvent::Log { source, text }) => (source, text),
            None => (LogSource::Agent, text.to_owned()),
        };
        let line = JobLine {
            index: self.next_index,
            source,
            text,
        };
        self.next_index += 1;
        Parsed::Line(line)
    }

    /// Handles one line (without its newline): forwards a log line, returns the result.
    pub(crate) fn line(
        &mut self,
        raw: &str,
        lines: &mpsc::UnboundedSender<JobLine>,
    ) -> Option<AgentResult> {
        let line = match self.parse(raw) {
            Parsed::Blank => return None,
            Parsed::Result(result) => return Some(result),
            Parsed::Line(line) => line,
        };
        if lines.send(line).is_err() {
            // Nobody listens any more (the activity gave up on the lines); the result still
            // matters, so keep reading.
            tracing::trace!("job line dropped: the receiver is gone");
        }
        None
    }
}

/// Job names become Kubernetes object names, label values and file names: a DNS label.
pub(crate) fn check_job_name(name: &str) -> Result<(), JobError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(JobError::Permanent(format!(
            "job name {name:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_are_numbered_and_the_result_ends_them() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut parser = OutputParser::default();
        let log = AgentEvent::Log {
            source: LogSource::Claude,
            text: "thinking".into(),
        }
        .to_line();
        assert_eq!(parser.line(&log, &tx), None);
        assert_eq!(parser.line("", &tx), None);
        assert_eq!(parser.line("npm WARN x\r", &tx), None);
        let result = parser.line(
            r#"{"type":"result","outcome":"failed","error":"no","retryable":false}"#,
            &tx,
        );
        assert!(result.is_some());
        let first = rx.try_recv().expect("first line");
        assert_eq!((first.index, first.source), (0, LogSource::Claude));
        let second = rx.try_recv().expect("second line");
        assert_eq!(
            (second.index, second.source, second.text.as_str()),
            (1, LogSource::Agent, "npm WARN x")
        );
    }

    #[test]
    fn job_names_are_dns_labels() {
        assert!(check_job_name("task-0123abcd-plan-1").is_ok());
        for bad in ["", "Task", "-a", "a-", "a_b", "a/b", &"a".repeat(64)] {
            assert!(check_job_name(bad).is_err(), "{bad}");
        }
    }
}
