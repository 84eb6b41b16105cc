//! What goes into a job and what comes out of it. Both sides (the agent and the runners that
//! start it) use these types, so the wire format is defined once.
//!
//! In: [`AgentSpec`] as JSON in [`SPEC_ENV`]; secrets only in their own variables
//! ([`GITHUB_TOKEN_ENV`], `ANTHROPIC_API_KEY` or `CLAUDE_CODE_OAUTH_TOKEN`), never in the spec,
//! so the spec may be logged and stored.
//! Out: one [`AgentEvent`] per line on stdout, ending with exactly one [`AgentEvent::Result`].
//! The exit code is 0 when the result is a success and non-zero otherwise.

use serde::{Deserialize, Serialize};

/// Environment variable holding the [`AgentSpec`] as JSON.
pub const SPEC_ENV: &str = "MAINLOOP_AGENT_SPEC";
/// Environment variable holding the GitHub token used for git over HTTPS.
pub const GITHUB_TOKEN_ENV: &str = "GITHUB_TOKEN";

/// Which step of the task the job performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Explore the repository read-only and write a plan, or ask questions first.
    Plan,
    /// Implement the approved plan on a new branch and push it.
    Implement,
    /// Fix failing CI checks on the task's branch and push.
    Fix,
    /// Address review comments on the task's branch and push.
    Feedback,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plan => "plan",
            Mode::Implement => "implement",
            Mode::Fix => "fix",
            Mode::Feedback => "feedback",
        }
    }
}

/// Everything the agent needs to do one step. Contains no secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub task_id: String,
    pub mode: Mode,
    /// `owner/name`.
    pub repo: String,
    /// HTTPS (or, in tests, file://) URL to clone and push to. Credentials come from
    /// [`GITHUB_TOKEN_ENV`] and are sent as an HTTP header, never written into the URL.
    pub clone_url: String,
    /// Branch the work starts from (the repository's default branch).
    pub base_branch: String,
    /// The task's branch: created by `implement`, updated by `fix` and `feedback`.
    /// Absent for `plan`.
    #[serde(default)]
    pub branch: Option<String>,
    pub title: String,
    pub description: String,
    /// The plan issue, when there is one.
    #[serde(default)]
    pub issue_number: Option<u64>,
    /// The task's pull request (`fix`, `feedback`).
    #[serde(default)]
    pub pr_number: Option<u64>,
    /// `plan` with a revision request: the previous plan. `implement`/`fix`/`feedback`: the
    /// approved plan.
    #[serde(default)]
    pub plan: Option<String>,
    /// Answers to questions a previous plan job asked.
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// `plan`: what the user asked to change in the previous plan.
    #[serde(default)]
    pub revision: Option<String>,
    /// `fix`: the failed checks and their (truncated) logs.
    #[serde(default)]
    pub ci_failures: Option<String>,
    /// `feedback`: the review comments to address.
    #[serde(default)]
    pub review_feedback: Option<String>,
    /// Claude model for the CLI's `--model`.
    pub model: String,
    /// Identity for the commits the agent makes.
    pub git_author_name: String,
    pub git_author_email: String,
}

impl AgentSpec {
    /// Checks what the JSON shape cannot: required text present, the fields each mode needs,
    /// and branch names git accepts and cannot mistake for options.
    ///
    /// # Errors
    /// Every problem found, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let required = [
            ("task_id", &self.task_id),
            ("repo", &self.repo),
            ("clone_url", &self.clone_url),
            ("base_branch", &self.base_branch),
            ("title", &self.title),
            ("model", &self.model),
            ("git_author_name", &self.git_author_name),
            ("git_author_email", &self.git_author_email),
        ];
        for (name, value) in required {
            if value.trim().is_empty() {
                problems.push(format!("`{name}` is empty"));
            }
        }
        if !self.clone_url.trim().is_empty() && self.clone_url.starts_with('-') {
            problems.push("`clone_url` must not start with `-`".to_owned());
        }
        if let Err(problem) = check_branch_name(&self.base_branch) {
            problems.push(format!("`base_branch` {problem}"));
        }
        let blank = |value: &Option<String>| value.as_deref().is_none_or(|v| v.trim().is_empty());
        match (self.mode, &self.branch) {
            (Mode::Plan, _) => {}
            (_, None) => problems.push(format!(
                "`branch` is required in {} mode",
                self.mode.as_str()
            )),
            (_, Some(branch)) => {
                if let Err(problem) = check_branch_name(branch) {
                    problems.push(format!("`branch` {problem}"));
                } else if branch == &self.base_branch {
                    problems.push("`branch` must differ from `base_branch`".to_owned());
                }
            }
        }
        match self.mode {
            Mode::Plan if self.revision.is_some() && blank(&self.plan) => {
                problems.push("a plan `revision` needs the previous `plan`".to_owned());
            }
            Mode::Implement if blank(&self.plan) => {
                problems
                    .push("`plan` (the approved plan) is required in implement mode".to_owned());
            }
            Mode::Fix if blank(&self.ci_failures) => {
                problems.push("`ci_failures` is required in fix mode".to_owned());
            }
            Mode::Feedback if blank(&self.review_feedback) => {
                problems.push("`review_feedback` is required in feedback mode".to_owned());
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Longest branch name taken: git has no limit, but a ref is a file and file names stop at 255.
const MAX_BRANCH_BYTES: usize = 200;

/// Zero-width and bidirectional-control characters: git takes them, but they make a name
/// show as another (`main\u{202e}` and friends) in logs, the app and GitHub.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// The rules of `git check-ref-format --branch` that matter here, plus no leading `-` so a
/// name can never be read as an option, no invisible characters and a length limit.
fn check_branch_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_BRANCH_BYTES {
        return Err("is longer than 200 bytes");
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') {
        return Err("must not start with `-` or `/`, or end with `/`");
    }
    // git refuses `.lock` at the end of any component, not only of the whole name: a ref is a
    // file, and `x.lock` is the name of the lock file for ref `x`.
    if name.split('/').any(|part| part.ends_with(".lock")) || name.ends_with('.') || name == "@" {
        return Err("is not a valid branch name");
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") || name.contains("/.") {
        return Err("is not a valid branch name");
    }
    if name.starts_with('.')
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c) || invisible(c))
    {
        return Err("contains characters git does not allow in branch names");
    }
    Ok(())
}

/// A question the model asked before it can plan (from Claude Code's `AskUserQuestion`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Stable within a task: derived from the header, so a re-run asks with the same ids.
    pub id: String,
    pub header: String,
    pub question: String,
    #[serde(default)]
    pub options: Vec<QuestionOption>,
    #[serde(default)]
    pub multi_select: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionOption {
    pub label: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A user's answer to one [`Question`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub question_id: String,
    /// The question's text, so the prompt reads naturally.
    pub question: String,
    pub answer: String,
}

/// Tokens and cost the model reported for the job (Claude Code's final `result` message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// As reported by the CLI (`total_cost_usd`); 0 when it reports none.
    #[serde(default)]
    pub cost_usd: f64,
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `plan`: either questions to answer first (then `plan` may be a draft) or a plan.
    Plan {
        plan: String,
        #[serde(default)]
        questions: Vec<Question>,
    },
    /// `implement`/`fix`/`feedback`: the branch was pushed; `commit` is its head.
    /// `changed` is false when the model made no change (nothing new was committed).
    Pushed {
        branch: String,
        commit: String,
        changed: bool,
    },
    /// The step failed. `retryable` is false when running it again cannot help
    /// (bad spec, repository missing, authentication refused).
    Failed { error: String, retryable: bool },
}

/// The last line of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// A few sentences on what was done, for the task's timeline and the PR summary.
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub usage: Usage,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The agent itself (cloning, git, setup).
    Agent,
    /// Text and tool use from Claude.
    Claude,
}

/// One line of the agent's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    Log { source: LogSource, text: String },
    Result(AgentResult),
}

impl AgentEvent {
    /// Parses one output line. Lines that are not protocol events (a stray print from a tool)
    /// are returned as `None` so a runner can forward them as plain log text.
    pub fn parse_line(line: &str) -> Option<AgentEvent> {
        serde_json::from_str(line).ok()
    }

    pub fn to_line(&self) -> String {
        // Serialising these types cannot fail: every field is a plain string, number or list.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: Mode) -> AgentSpec {
        AgentSpec {
            task_id: "t1".into(),
            mode,
            repo: "acme/widgets".into(),
            clone_url: "https://github.com/acme/widgets.git".into(),
            base_branch: "main".into(),
            branch: Some("mainloop/t1-dark-mode".into()),
            title: "Add dark mode".into(),
            description: "Please".into(),
            issue_number: Some(7),
            pr_number: None,
            plan: Some("1. Do it".into()),
            answers: Vec::new(),
            revision: None,
            ci_failures: Some("test failed".into()),
            review_feedback: Some("rename it".into()),
            model: "claude-sonnet-4-5".into(),
            git_author_name: "mainloop".into(),
            git_author_email: "bot@example.com".into(),
        }
    }

    #[test]
    fn valid_specs_pass_and_each_mode_needs_its_context() {
        for mode in [Mode::Plan, Mode::Implement, Mode::Fix, Mode::Feedback] {
            assert_eq!(spec(mode).validate(), Ok(()), "{mode:?}");
        }
        let mut implement = spec(Mode::Implement);
        implement.plan = None;
        implement.branch = None;
        let problems = implement.validate().unwrap_err();
        assert!(problems.contains("`branch` is required"), "{problems}");
        assert!(problems.contains("`plan`"), "{problems}");

        let mut fix = spec(Mode::Fix);
        fix.ci_failures = Some("  ".into());
        assert!(fix.validate().unwrap_err().contains("ci_failures"));

        let mut plan = spec(Mode::Plan);
        plan.branch = None;
        plan.revision = Some("shorter".into());
        plan.plan = None;
        assert!(plan.validate().unwrap_err().contains("revision"));
    }

    #[test]
    fn branch_names_git_rejects_or_that_look_like_options_are_refused() {
        for bad in [
            "-f", "a..b", "a b", "a~1", "x.lock", "a.lock/@", "x.lock/y", "/x", "x/", "a:b",
            ".hidden",
        ] {
            let mut s = spec(Mode::Fix);
            s.branch = Some(bad.into());
            assert!(s.validate().is_err(), "{bad} was accepted");
        }
        let mut same = spec(Mode::Implement);
        same.branch = Some("main".into());
        assert!(same.validate().unwrap_err().contains("differ"));
    }

    #[test]
    fn result_line_round_trips() {
        let event = AgentEvent::Result(AgentResult {
            outcome: Outcome::Pushed {
                branch: "feature/42-add-dark-mode".into(),
                commit: "abc123".into(),
                changed: true,
            },
            summary: "Added a toggle".into(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
        });
        let line = event.to_line();
        assert!(line.contains(r#""type":"result""#), "{line}");
        assert!(line.contains(r#""outcome":"pushed""#), "{line}");
        assert_eq!(AgentEvent::parse_line(&line), Some(event));
        assert_eq!(AgentEvent::parse_line("npm WARN something"), None);
    }
}
