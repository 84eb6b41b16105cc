//! The benchmarks' stand-in for `mainloop-agent`: a job that finishes at once with a canned
//! result, so that task figures measure mainloop and not Claude. The worker's local job runner
//! starts it exactly as it starts the real agent (`MAINLOOP_AGENT_BIN` points at this very
//! benchmark binary; the spec in `MAINLOOP_AGENT_SPEC` selects this mode), so the process
//! boundary, the output protocol and the runner are the real ones.
//!
//! A plan job prints a fixed plan. Implement, fix and feedback jobs must leave a pushed branch
//! (the fake GitHub, like GitHub, refuses a pull request without commits), so they make one
//! empty commit on top of the fetched head with real git and push it over the fake GitHub's
//! smart HTTP: three git processes, the least a job that pushes can do. Their time is
//! reported apart from mainloop's own (see F2).
//!
//! Used only by the benchmarks; never built into a product binary.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use mainloop_agent::protocol::{
    AgentEvent, AgentResult, AgentSpec, GITHUB_TOKEN_ENV, Mode, Outcome, SPEC_ENV, Usage,
};

/// Whether this process was started as a job (the runner sets the spec).
pub fn is_job() -> bool {
    std::env::var_os(SPEC_ENV).is_some()
}

/// Runs the job; the exit code says whether it succeeded, as the real agent's does.
pub fn main() -> std::process::ExitCode {
    let outcome = match run() {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Failed {
            error,
            retryable: false,
        },
    };
    let failed = matches!(outcome, Outcome::Failed { .. });
    let result = AgentEvent::Result(AgentResult {
        outcome,
        summary: "instant benchmark job".into(),
        usage: Usage::default(),
    });
    println!("{}", result.to_line());
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn run() -> Result<Outcome, String> {
    let raw = std::env::var(SPEC_ENV).map_err(|e| format!("{SPEC_ENV}: {e}"))?;
    let spec: AgentSpec = serde_json::from_str(&raw).map_err(|e| format!("the spec: {e}"))?;
    if spec.mode == Mode::Plan {
        return Ok(Outcome::Plan {
            plan: "1. Add greet() in src/greet.rs\n2. Test it".into(),
            questions: Vec::new(),
        });
    }
    let branch = spec
        .branch
        .clone()
        .unwrap_or_else(|| format!("bench/{}", spec.task_id));
    let from = if spec.mode == Mode::Implement {
        spec.base_branch.clone()
    } else {
        branch.clone()
    };
    let dir = std::env::var_os(mainloop_activities::jobs::WORKSPACE_ENV)
        .map(PathBuf::from)
        .map_or_else(std::env::current_dir, Ok)
        .map_err(|e| format!("the workspace: {e}"))?;
    let git = Git::new(&spec, dir);
    git.run(&["init", "--quiet"])?;
    git.run(&["fetch", "--quiet", "--depth=1", &spec.clone_url, &from])?;
    // The task's id keeps two tasks' commits apart: tasks with one title, started in the same
    // second on the same main, would otherwise push the very same commit, and once one of
    // them merged, the other's branch had nothing left to open a pull request with.
    let message = format!(
        "{} ({}, task {})",
        spec.title,
        spec.mode.as_str(),
        spec.task_id
    );
    let commit = git.run(&[
        "commit-tree",
        "FETCH_HEAD^{tree}",
        "-p",
        "FETCH_HEAD",
        "-m",
        &message,
    ])?;
    git.run(&[
        "push",
        "--quiet",
        &spec.clone_url,
        &format!("{commit}:refs/heads/{branch}"),
    ])?;
    Ok(Outcome::Pushed {
        branch,
        commit,
        changed: true,
    })
}

struct Git {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Git {
    fn new(spec: &AgentSpec, dir: PathBuf) -> Git {
        let mut env = vec![
            ("GIT_AUTHOR_NAME".to_string(), spec.git_author_name.clone()),
            (
                "GIT_AUTHOR_EMAIL".to_string(),
                spec.git_author_email.clone(),
            ),
            (
                "GIT_COMMITTER_NAME".to_string(),
                spec.git_author_name.clone(),
            ),
            (
                "GIT_COMMITTER_EMAIL".to_string(),
                spec.git_author_email.clone(),
            ),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
        ];
        // As the real agent sends it: a header for the clone URL's origin only.
        if let Ok(token) = std::env::var(GITHUB_TOKEN_ENV)
            && let Ok(url) = url::Url::parse(&spec.clone_url)
        {
            let origin = url.origin().ascii_serialization();
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            env.extend([
                ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
                (
                    "GIT_CONFIG_KEY_0".to_string(),
                    format!("http.{origin}/.extraHeader"),
                ),
                (
                    "GIT_CONFIG_VALUE_0".to_string(),
                    format!("Authorization: Basic {basic}"),
                ),
            ]);
        }
        Git { dir, env }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|e| format!("starting git: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git {} failed: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
