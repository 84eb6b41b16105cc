//! Worker tasks end to end: the real `mainloop` processes, Temporal, PostgreSQL, the real
//! `mainloop-agent` running the real Claude Code CLI against the fake Anthropic API, and the
//! fake GitHub with real git repositories. Only the outside world is fake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_store::{Task, TaskStatus};
use mainloop_testkit::anthropic::{RecordedRequest, Reply};
use mainloop_testkit::github::{CiScript, FakeGitHub, Permission};
use serde_json::{Value, json};

use crate::harness::{Stack, USER};

pub const REPO: &str = "acme/web";
pub const TASK_WAIT: Duration = Duration::from_secs(120);

/// The Claude Code CLI the tests run: `MAINLOOP_CLAUDE_BIN`, else the one `scripts/setup`
/// installs, else `claude` on PATH.
pub fn claude_bin() -> PathBuf {
    if let Ok(path) = std::env::var("MAINLOOP_CLAUDE_BIN") {
        return PathBuf::from(path);
    }
    let tools =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/claude-code/node_modules/.bin/claude");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("claude")
}

/// `mainloop-agent`, built beside `mainloop` (built here if a single-package test run did not).
pub fn agent_bin() -> Result<PathBuf> {
    let beside = Path::new(env!("CARGO_BIN_EXE_mainloop")).with_file_name("mainloop-agent");
    if !beside.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "mainloop-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("building mainloop-agent")?;
        if !status.success() {
            bail!("building mainloop-agent failed");
        }
    }
    Ok(beside)
}

/// Which job a worker agent's prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Plan,
    Implement,
    Fix,
    Feedback,
}

/// The job a request comes from, when it comes from the worker agent's first call.
pub fn job_kind(request: &RecordedRequest) -> Option<JobKind> {
    if request.tool_names().iter().any(|t| t == "propose_task") || request.after_tool() {
        return None;
    }
    let text = request.first_user_text();
    Some(if text.contains("Implement the approved plan") {
        JobKind::Implement
    } else if text.contains("Failed CI checks") {
        JobKind::Fix
    } else if text.contains("Review feedback to address") {
        JobKind::Feedback
    } else {
        JobKind::Plan
    })
}

/// How often the task has read issue `issue`'s comments: each read is one poll for a human.
pub fn comment_reads(view: &mainloop_testkit::github::GitHubView<'_>, issue: u64) -> usize {
    view.requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains(&format!("/issues/{issue}/comments")))
        .count()
}

/// A reply that runs `command` with the Bash tool in the clone.
pub fn bash(command: &str) -> Reply {
    Reply::tool_use(
        "Bash",
        json!({ "command": command, "description": "Edit the code" }),
    )
    .with_usage(200, 40)
}

/// A model that proposes one task in the chat, and as the worker agent plans, implements,
/// fixes and addresses feedback by appending to files in the clone.
pub fn scripted_model(request: &RecordedRequest) -> Reply {
    if request.tool_names().iter().any(|t| t == "propose_task") {
        if request.after_tool() {
            return Reply::text("I proposed it: confirm to start.");
        }
        return Reply::tool_use(
            "propose_task",
            json!({
                "title": "Add a greeting",
                "description": "Add a greet() function to the library",
                "repo": REPO,
            }),
        )
        .with_usage(30, 12);
    }
    if request.after_tool() {
        return Reply::text("Done: the change is in place.").with_usage(50, 10);
    }
    let text = request.first_user_text();
    let work = |line: &str| bash(&format!("printf '{line}\\n' >> src/greet.rs"));
    match job_kind(request) {
        Some(JobKind::Implement) => work("pub fn greet() {}"),
        Some(JobKind::Fix) => work("// fixed"),
        Some(JobKind::Feedback) => work("// review addressed"),
        _ => {
            let plan = if text.contains("Changes the user asked for") {
                "1. Add greet() in src/greet.rs\n2. Use CSS variables\n3. Test it"
            } else {
                "1. Add greet() in src/greet.rs\n2. Test it"
            };
            Reply::tool_use("ExitPlanMode", json!({ "plan": plan })).with_usage(300, 60)
        }
    }
}

/// Polls a condition only the OS can answer (a process or a file appearing or going), for up
/// to a minute.
pub async fn wait_until(mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out");
        }
        tick.tick().await;
    }
    Ok(())
}

pub struct TaskStack {
    pub stack: Stack,
    pub github: FakeGitHub,
    _jobs: tempfile::TempDir,
}

/// Jobs are process groups of their own that outlive the worker by design; a test that ends,
/// or fails, while a job is still held must not leave it running on the machine, where it
/// loads the tests after it (held stub jobs of a failed fault test used to).
impl Drop for TaskStack {
    fn drop(&mut self) {
        stop_jobs_under(self._jobs.path());
    }
}

/// Field `n` of `/proc/{pid}/stat`, counted from 1 as in proc(5); the fields after the
/// command name are found after its closing parenthesis (the name may hold spaces).
pub fn proc_stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace()
        .nth(n.checked_sub(3)?)
        .map(str::to_string)
}

/// The `(job directory, job.json)` of every job the local runner started under `root`
/// (`{task}/{job}/job.json`).
pub fn job_records(root: &Path) -> Vec<(PathBuf, Value)> {
    let dirs = |path: &Path| {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect::<Vec<_>>()
    };
    dirs(root)
        .iter()
        .flat_map(|task| dirs(task))
        .filter_map(|job| {
            let record = serde_json::from_slice(&std::fs::read(job.join("job.json")).ok()?).ok()?;
            Some((job, record))
        })
        .collect()
}

/// Kills the process group of every job under `root` whose leader still runs, read from the
/// runner's `job.json` (pid and start time, so a reused pid is left alone).
fn stop_jobs_under(root: &Path) {
    for (job, record) in job_records(root) {
        let (Some(pid), Some(start_time)) = (
            record["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            record["start_time"].as_u64(),
        ) else {
            continue;
        };
        let running = proc_stat_field(pid, 22) == Some(start_time.to_string());
        if running {
            // The whole tree, found before anything dies: Claude Code runs its Bash tool's
            // commands in sessions of their own, outside the job's process group, and once
            // their parent is gone they hang from init, out of reach.
            let mut targets = vec![format!("-{pid}")];
            targets.extend(descendants(pid).iter().map(u32::to_string));
            // Some of the tree may end on its own meanwhile: `kill` then fails for those pids.
            if let Err(error) = std::process::Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .args(&targets)
                .status()
            {
                eprintln!("could not stop job {}: {error}", job.display());
            }
        }
    }
}

/// Every process below `root`, from the parent links in `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let links: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let parent: u32 = proc_stat_field(pid, 4)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in links.iter().filter(|(_, p)| *p == parent) {
            if !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

impl TaskStack {
    pub async fn start() -> Result<TaskStack> {
        TaskStack::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Result<TaskStack> {
        TaskStack::start_with_roles(extra, &[]).await
    }

    /// As [`TaskStack::start_with`], with settings of one role: see
    /// [`Stack::start_with_roles`].
    pub async fn start_with_roles(
        extra: &[(&str, &str)],
        role_env: &[(&str, &str, &str)],
    ) -> Result<TaskStack> {
        let github = FakeGitHub::start().await?;
        github.create_repo("acme", "web").await?;
        let agent = agent_bin()?.display().to_string();
        let claude = claude_bin().display().to_string();
        let api = github.base_url();
        let token = github.token();
        let jobs_dir = tempfile::Builder::new()
            .prefix("mainloop-jobs-")
            .tempdir()?;
        let jobs = jobs_dir.path().display().to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("GITHUB_API_URL", api.as_str()),
            ("GITHUB_TOKEN", token.as_str()),
            ("MAINLOOP_AGENT_BIN", agent.as_str()),
            ("MAINLOOP_CLAUDE_BIN", claude.as_str()),
            ("MAINLOOP_WORKER_MODEL", "claude-sonnet-4-5"),
            ("MAINLOOP_CI_POLL", "50ms"),
            ("MAINLOOP_CI_POLL_MAX", "200ms"),
            ("MAINLOOP_HUMAN_POLL", "100ms"),
            ("MAINLOOP_HUMAN_POLL_MAX", "300ms"),
            ("MAINLOOP_REVIEW_POLL", "100ms"),
            ("MAINLOOP_REVIEW_POLL_MAX", "300ms"),
            ("MAINLOOP_RETRY_INITIAL", "100ms"),
            ("MAINLOOP_RETRY_MAX", "1s"),
            ("MAINLOOP_JOB_HEARTBEAT_TIMEOUT", "3s"),
            ("MAINLOOP_JOB_TIMEOUT", "5m"),
            ("MAINLOOP_JOBS_DIR", jobs.as_str()),
            // Claude Code refuses to skip permission prompts as root unless told it is
            // sandboxed; CI machines run tests as root.
            ("IS_SANDBOX", "1"),
        ];
        env.extend_from_slice(extra);
        let stack = Stack::start_with_roles(&env, role_env).await?;
        stack.anthropic.set_default(scripted_model);
        Ok(TaskStack {
            stack,
            github,
            _jobs: jobs_dir,
        })
    }

    /// Where the worker's local job runner keeps its jobs (`MAINLOOP_JOBS_DIR`).
    pub fn jobs_dir(&self) -> &Path {
        self._jobs.path()
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let http = reqwest::Client::new();
        let url = self.stack.url(path);
        let builder = match method {
            "GET" => http.get(url),
            _ => http.post(url),
        };
        let builder = match body {
            Some(body) => builder.json(&body),
            None => builder,
        };
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Posts input for task `id` to `POST /api/tasks/{id}/{what}` (`answer`, `review-plan`,
    /// `retry`, `cancel`); returns the status and body.
    pub async fn task_input(&self, id: &str, what: &str, body: Value) -> Result<(u16, Value)> {
        self.request("POST", &format!("/api/tasks/{id}/{what}"), Some(body))
            .await
    }

    /// Waits for the model's proposal in the thread; returns its id.
    pub async fn proposal_id(&self) -> Result<String> {
        self.wait_for(|| async {
            let page: Value = reqwest::get(self.stack.url("/api/messages"))
                .await?
                .json()
                .await?;
            Ok(page["messages"].as_array().and_then(|messages| {
                messages
                    .iter()
                    .flat_map(|m| m["proposals"].as_array().cloned().unwrap_or_default())
                    .find_map(|p| p["id"].as_str().map(str::to_string))
            }))
        })
        .await
    }

    /// Chats until the model proposes the task, confirms it, and returns the task id.
    pub async fn confirmed_task(&self, body: Value) -> Result<String> {
        self.stack
            .post("please add a greeting to acme/web", "task-1")
            .await?;
        let proposal_id = self.proposal_id().await?;
        self.confirm(&proposal_id, body).await
    }

    /// Confirms `proposal` through the API (`body`: the user's changes) and returns the new
    /// task's id; anything but `202` is an error.
    pub async fn confirm(&self, proposal: &str, body: Value) -> Result<String> {
        let path = format!("/api/proposals/{proposal}/confirm");
        let (status, confirmed) = self.request("POST", &path, Some(body)).await?;
        if status != 202 {
            bail!("confirm answered {status}: {confirmed}");
        }
        Ok(confirmed["task"]["id"]
            .as_str()
            .context("no task id")?
            .to_string())
    }

    /// Makes every implement job run a shell loop until it is killed (Claude Code refuses a
    /// bare long `sleep`). Returns the marker in its command line, unique to this process and
    /// `name`, by which a test tells whether it still runs.
    pub fn implement_runs_until_killed(&self, name: &str) -> String {
        let marker = format!("{name}-{}", std::process::id());
        let command = format!("while [ ! -f /nonexistent/{marker} ]; do sleep 0.1; done");
        self.stack.anthropic.set_default(move |request| {
            if job_kind(request) == Some(JobKind::Implement) {
                return bash(&command);
            }
            scripted_model(request)
        });
        marker
    }

    /// Makes `reviewer` a collaborator with write access, confirms a task that plans, and
    /// waits until its plan awaits review; returns the task id and its issue number.
    pub async fn plan_under_review(&self, reviewer: &str) -> Result<(String, u64)> {
        self.github.add_user(reviewer);
        self.github
            .add_collaborator(REPO, reviewer, Permission::Write)?;
        let id = self.confirmed_task(json!({})).await?;
        let task = self.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
        let issue = task.issue_number.context("no issue")? as u64;
        Ok((id, issue))
    }

    /// Waits until a line of the task's job log contains `text`.
    pub async fn wait_for_log(&self, id: &str, text: &str) -> Result<()> {
        self.wait_for(|| async {
            let logs = self.stack.store.task_logs(USER, id, 2000).await?;
            Ok(logs
                .iter()
                .any(|line| line.text.contains(text))
                .then_some(()))
        })
        .await
    }

    /// Re-evaluates `check` after every committed event until it yields something.
    pub async fn wait_for<T, F, Fut>(&self, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let mut wake = self.stack.store.subscribe_events();
        let deadline = tokio::time::Instant::now() + TASK_WAIT;
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, wake.recv()).await {
                Ok(_) => {}
                Err(_) => bail!("timed out waiting"),
            }
        }
    }

    /// The body of issue `number` in [`REPO`] on the fake GitHub.
    pub fn issue_body(&self, number: u64) -> Result<String> {
        Ok(self
            .github
            .issue(REPO, number)
            .context("issue")?
            .body
            .unwrap_or_default())
    }

    pub async fn task(&self, id: &str) -> Result<Task> {
        Ok(self.stack.store.get_task(USER, id).await?)
    }

    /// Waits until the task reaches `status`; fails early if it fails instead.
    pub async fn wait_status(&self, id: &str, status: TaskStatus) -> Result<Task> {
        let found = self
            .wait_for(|| async {
                let task = self.task(id).await?;
                if task.status == status {
                    return Ok(Some(Ok(task)));
                }
                if task.status == TaskStatus::Failed && status != TaskStatus::Failed {
                    return Ok(Some(Err(anyhow::anyhow!(
                        "the task failed: {:?}",
                        task.error
                    ))));
                }
                Ok(None)
            })
            .await;
        match found {
            Ok(result) => result,
            Err(error) => {
                let task = self.task(id).await?;
                bail!(
                    "{error} for {status:?}; the task is {:?} ({}) {:?}\nworker log:\n{}",
                    task.status,
                    task.detail,
                    task.error,
                    self.stack.worker_log_tail(60)
                )
            }
        }
    }

    /// Jobs of a mode the task ran, from its recorded runs.
    pub async fn runs(&self, id: &str, mode: &str) -> Result<usize> {
        Ok(self
            .stack
            .store
            .task_runs(USER, id)
            .await?
            .iter()
            .filter(|r| r.mode == mode)
            .count())
    }
}

pub async fn approve_plan(ts: &TaskStack, id: &str) -> Result<()> {
    ts.wait_status(id, TaskStatus::WaitingPlanReview).await?;
    let (status, body) = ts
        .task_input(id, "review-plan", json!({"action": "approve"}))
        .await?;
    if status != 202 {
        bail!("review-plan answered {status}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_proposal_goes_from_plan_to_a_merged_pr() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github
        .set_ci(REPO, CiScript::AlwaysPass.pending_polls(1))?;
    let id = ts.confirmed_task(json!({})).await?;

    // Planning: one issue with the plan in its body and a plan comment.
    let task = ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let issue = task.issue_number.context("no issue")? as u64;
    assert!(
        task.plan.as_deref().unwrap_or("").contains("greet()"),
        "{task:?}"
    );
    let body = ts.issue_body(issue)?;
    assert!(body.contains("Implementation plan"), "{body}");
    assert!(
        ts.github
            .comments(REPO, issue)
            .iter()
            .any(|c| c.body.contains("📋"))
    );
    // A wrong action is refused at once, and so is an answer while no question waits.
    let (status, _) = ts
        .task_input(&id, "review-plan", json!({"action": "maybe"}))
        .await?;
    assert_eq!(status, 422);
    let (status, _) = ts
        .task_input(&id, "answer", json!({"answers": {"x": "y"}}))
        .await?;
    assert_eq!(status, 409);

    approve_plan(&ts, &id).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr_number = task.pr_number.context("no PR")? as u64;
    let pull = ts.github.pull(REPO, pr_number).context("the PR")?;
    assert!(!pull.draft, "the PR is still a draft");
    assert!(
        pull.body
            .unwrap_or_default()
            .contains(&format!("Closes #{issue}"))
    );
    let branch = task.branch.clone().context("no branch")?;
    assert!(branch.starts_with(&format!("feature/{issue}-")), "{branch}");
    let commits = ts.github.commits(REPO, &branch).await?;
    assert!(commits.len() >= 2, "{commits:?}");
    assert_eq!(ts.github.graphql_calls().len(), 1);
    assert!(
        ts.github
            .comments(REPO, pr_number)
            .iter()
            .any(|c| c.body.contains("Ready for review") && c.body.contains("| implement |")),
        "no summary comment with the ledger"
    );
    assert_eq!(
        ts.github
            .issues(REPO)
            .iter()
            .filter(|i| i.number != pr_number)
            .count(),
        1
    );
    assert!(
        task.cost.input_tokens > 0 && task.cost.output_tokens > 0,
        "{:?}",
        task.cost
    );

    ts.github.merge_pr(REPO, pr_number).await?;
    let task = ts.wait_status(&id, TaskStatus::Merged).await?;
    assert!(task.completed_at.is_some());
    // The chat was told: each task event is said once.
    let notes = ts
        .wait_for(|| async {
            let notes: Vec<String> = ts
                .stack
                .store
                .list_messages(USER, None, 200)
                .await?
                .into_iter()
                .filter(|m| m.kind == mainloop_store::MessageKind::Note)
                .map(|m| m.content)
                .collect();
            Ok(notes.iter().any(|n| n.contains("merged")).then_some(notes))
        })
        .await?;
    assert!(notes.iter().any(|n| n.contains("Plan ready")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("ready for review")),
        "{notes:?}"
    );
    assert_eq!(notes.len(), 3, "{notes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ci_failing_twice_takes_exactly_two_fix_jobs() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::FailTimes(2))?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(ts.runs(&id, "fix").await?, 2);
    assert_eq!(ts.runs(&id, "plan").await?, 0);
    let branch = task.branch.context("branch")?;
    let commits = ts.github.commits(REPO, &branch).await?;
    // The base commit, the implementation and two fixes.
    assert_eq!(commits.len(), 4, "{commits:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_ci_budget_ci_that_never_passes_fails_after_five_fixes_and_retry_resumes_the_ci_phase()
-> Result<()> {
    // With a CI-attempts budget (the default) the task pauses instead: see
    // `histories_paths::task_out_of_ci_attempts_pauses_at_the_default_limits`.
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_MAX_CI_FIXES", "5"),
        ("MAINLOOP_TASK_MAX_CI_ATTEMPTS", "0"),
    ])
    .await?;
    ts.github.set_ci(REPO, CiScript::NeverPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let failed = ts.wait_status(&id, TaskStatus::Failed).await?;
    assert_eq!(ts.runs(&id, "fix").await?, 5);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("5 fix attempts"),
        "{failed:?}"
    );
    let inbox = ts.stack.store.list_inbox(USER, 50).await?;
    assert!(
        inbox
            .iter()
            .any(|i| i.kind == mainloop_store::InboxKind::Failed && !i.resolved)
    );
    let pulls_before = ts.github.pulls(REPO).len();
    let issues_before = ts.github.issues(REPO).len();

    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let (status, body) = ts
        .request("POST", &format!("/api/tasks/{id}/retry"), None)
        .await?;
    assert_eq!(status, 202, "{body}");
    ts.wait_for(|| async { Ok((ts.task(&id).await?.status != TaskStatus::Failed).then_some(())) })
        .await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(task.pr_number, failed.pr_number);
    assert_eq!(task.branch, failed.branch);
    assert_eq!(ts.github.pulls(REPO).len(), pulls_before);
    assert_eq!(ts.github.issues(REPO).len(), issues_before);
    assert_eq!(ts.runs(&id, "implement").await?, 1);
    Ok(())
}

/// The plan goes on GitHub in one activity (`github.update_issue_and_comment`): the issue's
/// body, then the plan comment. When the comment is refused after the body was written, the
/// task's error names the step, and a retry writes both again and leaves one plan comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_plan_comment_names_its_step_and_a_retry_posts_the_plan_once() -> Result<()> {
    let ts = TaskStack::start().await?;
    // The task's issue is the repository's first; its comments are first read when the plan
    // comment is written (the upsert looks for its marker).
    ts.github
        .fail_next(&format!("/repos/{REPO}/issues/1/comments"), 422);
    let id = ts.confirmed_task(json!({})).await?;
    let failed = ts.wait_status(&id, TaskStatus::Failed).await?;
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("writing to the issue failed: commenting: GitHub:"),
        "{error}"
    );
    let issue = failed.issue_number.context("no issue")? as u64;
    let body = ts.issue_body(issue)?;
    assert!(
        body.contains("Implementation plan"),
        "the body went first: {body}"
    );
    assert!(ts.github.comments(REPO, issue).is_empty());

    let (status, body) = ts
        .request("POST", &format!("/api/tasks/{id}/retry"), None)
        .await?;
    assert_eq!(status, 202, "{body}");
    ts.wait_for(|| async { Ok((ts.task(&id).await?.status != TaskStatus::Failed).then_some(())) })
        .await?;
    ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let plans = ts
        .github
        .comments(REPO, issue)
        .iter()
        .filter(|c| c.body.contains("📋"))
        .count();
    assert_eq!(plans, 1);
    assert_eq!(ts.github.issues(REPO).len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lgtm_from_a_user_without_write_access_approves_nothing() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.add_user("mallory");
    let (id, issue) = ts.plan_under_review("maria").await?;
    ts.github.comment_as("mallory", REPO, issue, "lgtm")?;
    // Let the task read the issue's comments a few times after mallory's comment.
    let reads = |v: &mainloop_testkit::github::GitHubView<'_>| comment_reads(v, issue);
    let seen = ts.github.view(reads);
    ts.github
        .wait_until(TASK_WAIT, |v| reads(v) >= seen + 3)
        .await?;
    assert_eq!(ts.task(&id).await?.status, TaskStatus::WaitingPlanReview);
    ts.github
        .comment_as("maria", REPO, issue, "LGTM, ship it")?;
    ts.wait_status(&id, TaskStatus::Implementing).await?;
    Ok(())
}

/// GitHub dates comments to the second: a reply in the same second as the plan still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_within_the_second_of_the_plan_is_read() -> Result<()> {
    let ts = TaskStack::start().await?;
    let (id, issue) = ts.plan_under_review("maria").await?;
    let plan = ts
        .github
        .comments(REPO, issue)
        .into_iter()
        .last()
        .context("no plan comment")?;
    ts.github
        .comment_as_at("maria", REPO, issue, "LGTM, ship it", plan.created_at)?;
    ts.wait_status(&id, TaskStatus::Implementing).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_we_cannot_use_is_refused_at_confirmation() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.stack
        .post("please add a greeting to acme/web", "task-1")
        .await?;
    let proposal_id = ts.proposal_id().await?;
    let (status, body) = ts
        .request(
            "POST",
            &format!("/api/proposals/{proposal_id}/confirm"),
            Some(json!({"repo": "acme/missing"})),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_repo");
    // Nothing was decided: the proposal can still be confirmed as proposed.
    let (status, body) = ts
        .request(
            "POST",
            &format!("/api/proposals/{proposal_id}/confirm"),
            Some(json!({})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    Ok(())
}
