//! One job from spec to result: check the spec, clone, check out the branch the mode needs,
//! run Claude, then commit and push what it did. Every way out is an [`AgentResult`]; a
//! failure says whether running the job again could help.

use std::path::{Path, PathBuf};

use mainloop_agent::protocol::{AgentResult, AgentSpec, GITHUB_TOKEN_ENV, Mode, Outcome, Usage};

use crate::args::Args;
use crate::claude::{self, ChildSlot, Session, SessionError, Transcript};
use crate::git::{Git, GitError, Repo};
use crate::output;
use crate::prompt::{self, Checkout};

/// Longest summary kept from the model's final text.
const SUMMARY_CHARS: usize = 2000;

/// A failed step.
#[derive(Debug)]
struct Failure {
    error: String,
    retryable: bool,
}

impl Failure {
    fn new(error: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            error: error.into(),
            retryable,
        }
    }

    fn git(what: &str, error: &GitError) -> Failure {
        Failure::new(format!("{what}: {error}"), error.retryable())
    }
}

/// Runs the job described by `args`.
pub fn run(args: &Args, slot: &ChildSlot) -> AgentResult {
    let spec: AgentSpec = match serde_json::from_str(&args.spec_json) {
        Ok(spec) => spec,
        Err(error) => return output::failed(format!("invalid spec: {error}"), false),
    };
    if let Err(problems) = spec.validate() {
        return output::failed(format!("invalid spec: {problems}"), false);
    }
    let mut usage = Usage::default();
    match step(&spec, args, slot, &mut usage) {
        Ok(result) => result,
        Err(failure) => AgentResult {
            outcome: Outcome::Failed {
                error: failure.error,
                retryable: failure.retryable,
            },
            summary: String::new(),
            usage,
        },
    }
}

fn step(
    spec: &AgentSpec,
    args: &Args,
    slot: &ChildSlot,
    usage: &mut Usage,
) -> Result<AgentResult, Failure> {
    output::agent(format!(
        "mainloop-agent {}: {} step of task {} on {}",
        env!("CARGO_PKG_VERSION"),
        spec.mode.as_str(),
        spec.task_id,
        spec.repo
    ));
    let token = std::env::var(GITHUB_TOKEN_ENV).ok();
    let git = Git::new(&spec.clone_url, token.as_deref());
    let dir = prepare_workspace(&args.workspace, &spec.repo)?;
    let (repo, checkout, start) = check_out(spec, git, &dir)?;

    let prompt = prompt::build(spec, &checkout);
    output::agent(format!(
        "Running Claude Code ({}, {} mode)",
        spec.model,
        spec.mode.as_str()
    ));
    let session = Session {
        bin: &args.claude_bin,
        cwd: &repo.dir,
        model: &spec.model,
        mode: spec.mode,
        prompt: &prompt,
    };
    let transcript = claude::run(&session, slot).map_err(|error| match error {
        SessionError::Spawn(message) | SessionError::Refused(message) => {
            Failure::new(message, false)
        }
        SessionError::NoResult(message) => Failure::new(message, true),
    })?;
    *usage = transcript.usage();
    if let Some(finished) = transcript.finished.as_ref().filter(|f| f.is_error) {
        let detail = if finished.text.trim().is_empty() {
            finished.subtype.clone()
        } else {
            finished.text.clone()
        };
        return Err(Failure::new(format!("Claude Code failed: {detail}"), true));
    }

    let (outcome, summary) = if spec.mode == Mode::Plan {
        plan_outcome(&transcript)?
    } else {
        publish(spec, &repo, &start, &transcript)?
    };
    Ok(AgentResult {
        outcome,
        summary,
        usage: *usage,
    })
}

/// Creates the workspace and returns a fresh directory in it for the clone.
fn prepare_workspace(workspace: &Path, repo: &str) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(workspace).map_err(|error| {
        Failure::new(
            format!(
                "cannot create the workspace {}: {error}",
                workspace.display()
            ),
            false,
        )
    })?;
    let dir = workspace.join(clone_dir_name(repo));
    if dir.exists() {
        // Left by an earlier run in the same workspace: a clone must start from the remote.
        output::agent(format!("Removing the old clone in {}", dir.display()));
        std::fs::remove_dir_all(&dir).map_err(|error| {
            Failure::new(
                format!("cannot remove the old clone {}: {error}", dir.display()),
                false,
            )
        })?;
    }
    Ok(dir)
}

/// The repository's name as a directory name (`acme/widgets` → `widgets`).
fn clone_dir_name(repo: &str) -> String {
    let name = repo
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".git");
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() || name.starts_with('.') {
        "repo".to_owned()
    } else {
        name
    }
}

/// Clones and checks out the branch the mode works on. Returns the clone, what the prompt
/// needs to know about it, and HEAD before Claude runs.
fn check_out(spec: &AgentSpec, git: Git, dir: &Path) -> Result<(Repo, Checkout, String), Failure> {
    let base = spec.base_branch.as_str();
    let branch = spec.branch.as_deref().unwrap_or_default();
    let cannot_clone =
        |error: GitError| Failure::git(&format!("cannot clone {}", spec.repo), &error);
    let mut checkout = Checkout::default();
    let repo = if spec.mode == Mode::Plan {
        output::agent(format!("Cloning {} (`{base}`, shallow)", spec.repo));
        Repo::clone(git, &spec.clone_url, dir, Some(base)).map_err(cannot_clone)?
    } else {
        output::agent(format!("Cloning {}", spec.repo));
        let repo = Repo::clone(git, &spec.clone_url, dir, None).map_err(cannot_clone)?;
        let exists = |name: &str| {
            repo.remote_branch_exists(name)
                .map_err(|e| Failure::git("cannot inspect the clone", &e))
        };
        if !exists(base)? {
            return Err(Failure::new(
                format!("the base branch `{base}` does not exist in {}", spec.repo),
                false,
            ));
        }
        let checked_out = |result: Result<(), GitError>| {
            result.map_err(|e| Failure::git(&format!("cannot check out `{branch}`"), &e))
        };
        if exists(branch)? {
            checked_out(repo.checkout(branch, &format!("origin/{branch}"), true))?;
            checkout.commits_ahead = repo
                .count_commits(&format!("origin/{base}"))
                .map_err(|e| Failure::git("cannot inspect the clone", &e))?;
            output::agent(format!(
                "Checked out `{branch}` from the remote ({} commit(s) ahead of `{base}`)",
                checkout.commits_ahead
            ));
        } else if spec.mode == Mode::Implement {
            checked_out(repo.checkout(branch, &format!("origin/{base}"), false))?;
            output::agent(format!("Created `{branch}` from `{base}`"));
        } else {
            return Err(Failure::new(
                format!(
                    "the branch `{branch}` does not exist in {}: nothing to {}",
                    spec.repo,
                    spec.mode.as_str()
                ),
                false,
            ));
        }
        repo
    };
    repo.set_identity(&spec.git_author_name, &spec.git_author_email)
        .map_err(|e| Failure::git("cannot configure the commit identity", &e))?;
    let start = repo
        .head()
        .map_err(|e| Failure::git("cannot read HEAD", &e))?;
    Ok((repo, checkout, start))
}

fn plan_outcome(transcript: &Transcript) -> Result<(Outcome, String), Failure> {
    let questions = transcript.questions.clone();
    let plan = transcript.plan().unwrap_or_default();
    if plan.trim().is_empty() && questions.is_empty() {
        return Err(Failure::new(
            "the model ended without a plan or questions",
            true,
        ));
    }
    if !transcript.exit_plan_called && questions.is_empty() {
        output::agent("The model did not call ExitPlanMode; its final text is the plan");
    }
    let summary = if !questions.is_empty() {
        format!("{} question(s) to answer before planning", questions.len())
    } else {
        match transcript.final_text() {
            Some(text) if !text.trim().is_empty() && text.trim() != plan.trim() => {
                output::truncate(text.trim(), SUMMARY_CHARS)
            }
            _ => "Wrote an implementation plan".to_owned(),
        }
    };
    Ok((Outcome::Plan { plan, questions }, summary))
}

/// Commits what the model left, counts what it committed itself, and pushes the branch.
fn publish(
    spec: &AgentSpec,
    repo: &Repo,
    start: &str,
    transcript: &Transcript,
) -> Result<(Outcome, String), Failure> {
    let branch = spec.branch.clone().unwrap_or_default();
    let summary = transcript
        .final_text()
        .map(|text| output::truncate(text.trim(), SUMMARY_CHARS))
        .unwrap_or_default();
    let message = commit_message(spec, &summary);
    let committed = repo
        .commit_all(&message)
        .map_err(|e| Failure::git("cannot commit the changes", &e))?;
    if committed {
        output::agent("Committed the changes left in the working tree");
    }
    let new_commits = repo
        .count_commits(start)
        .map_err(|e| Failure::git("cannot count the new commits", &e))?;
    let changed = new_commits > 0;
    if spec.mode == Mode::Implement {
        let ahead = repo
            .count_commits(&format!("origin/{}", spec.base_branch))
            .map_err(|e| Failure::git("cannot count the branch's commits", &e))?;
        if ahead == 0 {
            return Err(Failure::new("the model made no change", true));
        }
    }
    // Pushing an unchanged branch is a no-op, except that it creates a branch that exists
    // only here, which is what an implement step must leave behind.
    if changed || spec.mode == Mode::Implement {
        repo.push(&branch)
            .map_err(|e| Failure::git(&format!("cannot push `{branch}`"), &e))?;
    }
    let commit = repo
        .head()
        .map_err(|e| Failure::git("cannot read HEAD", &e))?;
    if changed {
        output::agent(format!(
            "Pushed {new_commits} new commit(s) to `{branch}` ({commit})"
        ));
    } else {
        output::agent(format!("No change to push; `{branch}` stays at {commit}"));
    }
    Ok((
        Outcome::Pushed {
            branch,
            commit,
            changed,
        },
        summary,
    ))
}

fn commit_message(spec: &AgentSpec, summary: &str) -> String {
    let subject = match spec.mode {
        Mode::Fix => format!("Fix CI: {}", spec.title.trim()),
        Mode::Feedback => "Address review feedback".to_owned(),
        Mode::Plan | Mode::Implement => spec.title.trim().to_owned(),
    };
    let mut message = subject;
    if !summary.trim().is_empty() {
        message.push_str("\n\n");
        message.push_str(summary.trim());
    }
    if spec.mode == Mode::Implement
        && let Some(issue) = spec.issue_number
    {
        message.push_str(&format!("\n\nRefs #{issue}"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_directories_are_plain_names() {
        assert_eq!(clone_dir_name("acme/widgets"), "widgets");
        assert_eq!(clone_dir_name("acme/widgets.git"), "widgets");
        assert_eq!(clone_dir_name("acme/.."), "repo");
        assert_eq!(clone_dir_name("acme/we ird$"), "weird");
    }
}
