//! Worker tasks that survive what happens to them: the worker killed mid-job, a failed task
//! retried or reset by an operator with the `temporal` CLI, a review that asks for changes
//! after the PR was ready, and a worker that caches no workflow at all. Also that a test's
//! stack, dropped while a job is held, leaves no job running.

use anyhow::{Context, Result};
use mainloop_store::TaskStatus;
use mainloop_testkit::anthropic::RecordedRequest;
use mainloop_testkit::github::{CiScript, Permission, ReviewState};
use serde_json::json;

use crate::tasks::{
    JobKind, REPO, TaskStack, approve_plan, bash, job_kind, scripted_model, wait_until,
};

/// No comment body appears twice on the issue or on the PR.
fn assert_no_duplicate_comments(ts: &TaskStack, numbers: &[u64]) {
    for number in numbers {
        let bodies: Vec<String> = ts
            .github
            .comments(REPO, *number)
            .into_iter()
            .map(|c| c.body)
            .collect();
        let mut unique = bodies.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            bodies.len(),
            "duplicated comments: {bodies:#?}"
        );
    }
}

/// Issues that are not PRs.
fn plain_issues(ts: &TaskStack) -> usize {
    let pulls: Vec<u64> = ts.github.pulls(REPO).iter().map(|p| p.number).collect();
    ts.github
        .issues(REPO)
        .iter()
        .filter(|i| !pulls.contains(&i.number))
        .count()
}

/// A task (CI always passes) whose implementation job notes each time it runs, then holds
/// until [`HeldJob::release`].
pub(crate) struct HeldJob {
    pub(crate) task: String,
    started: std::path::PathBuf,
    go: std::path::PathBuf,
    _gate: tempfile::TempDir,
}

impl HeldJob {
    /// Confirms the task, approves its plan and returns once its implementation job runs.
    pub(crate) async fn start(ts: &TaskStack) -> Result<HeldJob> {
        ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
        let gate = tempfile::tempdir()?;
        let started = gate.path().join("started");
        let go = gate.path().join("go");
        let command = format!(
            "echo ran >> {started}; while [ ! -f {go} ]; do sleep 0.05; done; \
             printf 'pub fn greet() {{}}\\n' >> src/greet.rs",
            started = started.display(),
            go = go.display()
        );
        ts.stack.anthropic.set_default(move |request| {
            if job_kind(request) == Some(JobKind::Implement) {
                return bash(&command);
            }
            scripted_model(request)
        });
        let task = ts.confirmed_task(json!({})).await?;
        approve_plan(ts, &task).await?;
        wait_until(|| started.exists()).await?;
        Ok(HeldJob {
            task,
            started,
            go,
            _gate: gate,
        })
    }

    pub(crate) fn release(&self) -> Result<()> {
        Ok(std::fs::write(&self.go, "")?)
    }

    /// How many times the job's command has run.
    fn executions(&self) -> Result<usize> {
        Ok(std::fs::read_to_string(&self.started)?.lines().count())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_job_still_finishes_with_one_issue_one_pr_and_no_duplicates()
-> Result<()> {
    let mut ts = TaskStack::start().await?;
    let job = HeldJob::start(&ts).await?;

    ts.stack.kill_worker().await?;
    job.release()?;
    ts.stack.start_worker().await?;

    let task = ts
        .wait_status(&job.task, TaskStatus::ReadyForReview)
        .await?;
    // The job outlived the worker and was picked up again, not started a second time.
    assert_eq!(job.executions()?, 1);
    assert_eq!(ts.runs(&job.task, "implement").await?, 1);
    assert_eq!(plain_issues(&ts), 1);
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    let issue = task.issue_number.context("issue")? as u64;
    let pr = task.pr_number.context("PR")? as u64;
    assert_no_duplicate_comments(&ts, &[issue, pr]);
    let commits = ts
        .github
        .commits(REPO, &task.branch.context("branch")?)
        .await?;
    assert_eq!(commits.len(), 2, "{commits:?}");
    Ok(())
}

/// The plan comment reached GitHub, but the worker was killed before the answer came back.
/// Another attempt of `github.update_issue_and_comment` (once the step's timeout,
/// `MAINLOOP_GITHUB_TIMEOUT`, has passed) writes the body again, finds the comment by its
/// marker instead of posting a second one, and the task goes on to its plan review.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_while_its_plan_comment_is_in_flight_leaves_one_plan_comment() -> Result<()>
{
    let mut ts = TaskStack::start_with(&[("MAINLOOP_GITHUB_TIMEOUT", "3s")]).await?;
    // The task's issue is the repository's first, and the plan is its first comment.
    let held = ts
        .github
        .hold_next("POST", &format!("/repos/{REPO}/issues/1/comments"));
    let id = ts.confirmed_task(json!({})).await?;
    held.arrived(crate::tasks::TASK_WAIT).await?;
    ts.stack.kill_worker().await?;
    held.release();
    let planned = |v: &mainloop_testkit::github::GitHubView<'_>| {
        v.comments(REPO, 1).iter().any(|c| c.body.contains("📋"))
    };
    ts.github
        .wait_until(crate::tasks::TASK_WAIT, planned)
        .await?;
    ts.stack.start_worker().await?;

    ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let plans = ts
        .github
        .comments(REPO, 1)
        .iter()
        .filter(|c| c.body.contains("📋"))
        .count();
    assert_eq!(plans, 1);
    assert_eq!(plain_issues(&ts), 1);
    assert_no_duplicate_comments(&ts, &[1]);
    Ok(())
}

/// Temporal gives up on a job's activity attempt (no heartbeat in time: here the worker is
/// frozen; after a Temporal restart, a heartbeat it never persisted) and schedules the next
/// attempt. The job itself is fine: the next attempt re-attaches to it under the same name, and
/// the abandoned attempt, cancelled by the SDK when its next heartbeat is refused, leaves it
/// running. It used to stop the job, whose agent then wrote a retryable failure that the next
/// attempt read, and the task ran the job again under a new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_attempt_temporal_gave_up_on_is_re_attached_not_run_again() -> Result<()> {
    let ts = TaskStack::start_with(&[("MAINLOOP_JOB_HEARTBEAT_TIMEOUT", "2s")]).await?;
    let job = HeldJob::start(&ts).await?;

    ts.stack.freeze_worker(true)?;
    let next_attempt = job_attempt_after(&ts, &job.task, 1).await;
    ts.stack.freeze_worker(false)?;
    next_attempt?;
    job.release()?;

    ts.wait_status(&job.task, TaskStatus::ReadyForReview)
        .await?;
    assert_eq!(job.executions()?, 1);
    assert_eq!(ts.runs(&job.task, "implement").await?, 1);
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    Ok(())
}

/// Waits until Temporal has scheduled the task's `jobs.run` for an attempt after `attempt`.
async fn job_attempt_after(ts: &TaskStack, id: &str, attempt: u64) -> Result<()> {
    let workflow = mainloop_store::task_workflow_id(id);
    let deadline = tokio::time::Instant::now() + crate::tasks::TASK_WAIT;
    loop {
        let described = ts
            .stack
            .temporal
            .cli(&["workflow", "describe", "-w", &workflow, "-o", "json"])
            .await?;
        let described: serde_json::Value = serde_json::from_str(&described)?;
        let later = described["pendingActivities"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["activityType"]["name"] == "jobs.run"
                    && a["attempt"].as_u64().is_some_and(|n| n > attempt)
            });
        if later {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "jobs.run stayed at attempt {attempt}: {described}"
        );
        // Only the server knows the attempt; asking is the only way to see it change.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A task whose CI never passes, failed after one fix.
async fn failed_task(ts: &TaskStack) -> Result<String> {
    ts.github.set_ci(REPO, CiScript::NeverPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    ts.wait_status(&id, TaskStatus::Failed).await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_task_retried_with_temporal_workflow_signal_resumes() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_MAX_CI_FIXES", "1"),
        // No CI-attempts budget, so the phase limit fails the task.
        ("MAINLOOP_TASK_MAX_CI_ATTEMPTS", "0"),
    ])
    .await?;
    let id = failed_task(&ts).await?;
    let failed = ts.task(&id).await?;
    let issues = plain_issues(&ts);
    let workflow = format!("task/{id}");
    ts.stack
        .temporal
        .cli(&[
            "workflow",
            "signal",
            "-w",
            &workflow,
            "--name",
            "retry",
            "--input",
            r#"{"id": "operator-retry-1"}"#,
        ])
        .await?;
    ts.wait_for(|| async { Ok((ts.task(&id).await?.status != TaskStatus::Failed).then_some(())) })
        .await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(task.pr_number, failed.pr_number);
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    assert_eq!(plain_issues(&ts), issues);
    assert_eq!(ts.runs(&id, "implement").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_task_reset_with_temporal_workflow_reset_resumes() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_MAX_CI_FIXES", "1"),
        // No CI-attempts budget, so the phase limit fails the task.
        ("MAINLOOP_TASK_MAX_CI_ATTEMPTS", "0"),
    ])
    .await?;
    let id = failed_task(&ts).await?;
    let failed = ts.task(&id).await?;
    let workflow = format!("task/{id}");
    // The task left the intake queue with a continue-as-new when CI began; starting over
    // means resetting its first run (docs/operations.md).
    let runs = crate::histories::runs_of(&ts.stack, &workflow).await?;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let first = runs[0]["execution"]["runId"]
        .as_str()
        .context("run id")?
        .to_string();
    ts.stack
        .temporal
        .cli(&[
            "workflow",
            "reset",
            "-w",
            &workflow,
            "-r",
            &first,
            "--type",
            "FirstWorkflowTask",
            "--reason",
            "start over now that CI is fixed",
        ])
        .await?;
    ts.wait_for(|| async { Ok((ts.task(&id).await?.status != TaskStatus::Failed).then_some(())) })
        .await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    // Everything the first run made is found again, not made twice.
    assert_eq!(task.pr_number, failed.pr_number);
    assert_eq!(task.issue_number, failed.issue_number);
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    assert_eq!(plain_issues(&ts), 0);
    let pr = task.pr_number.context("PR")? as u64;
    assert_no_duplicate_comments(&ts, &[pr]);
    // The reset run did the work anew (a job of the old run is not taken for one of the new),
    // and its commit passed.
    assert_eq!(ts.runs(&id, "implement").await?, 2);
    assert_eq!(ts.runs(&id, "fix").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_requested_in_a_review_lead_to_a_feedback_job_and_ready_again() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    ts.github.add_user("maria");
    ts.github
        .add_collaborator(REPO, "maria", Permission::Write)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = ready.pr_number.context("PR")? as u64;
    let branch = ready.branch.context("branch")?;
    let before = ts.github.commits(REPO, &branch).await?.len();

    ts.github
        .submit_review(
            "maria",
            REPO,
            pr,
            ReviewState::ChangesRequested,
            "Please call it hello()",
            vec![("src/greet.rs", 1, "rename this one")],
        )
        .await?;
    let task = ts
        .wait_for(|| async {
            let task = ts.task(&id).await?;
            Ok(
                (task.status == TaskStatus::ReadyForReview && ts.runs(&id, "feedback").await? == 1)
                    .then_some(task),
            )
        })
        .await?;
    assert_eq!(task.pr_number, ready.pr_number);
    assert_eq!(ts.github.commits(REPO, &branch).await?.len(), before + 1);
    let feedback: Vec<String> = ts
        .stack
        .anthropic
        .requests()
        .iter()
        .filter(|r| job_kind(r) == Some(JobKind::Feedback))
        .map(RecordedRequest::first_user_text)
        .collect();
    assert_eq!(feedback.len(), 1);
    assert!(
        feedback[0].contains("Please call it hello()") && feedback[0].contains("rename this one"),
        "{}",
        feedback[0]
    );
    // The inline comment was acknowledged on GitHub.
    assert!(
        ts.github
            .requests()
            .iter()
            .any(|(method, path, status)| method == "POST"
                && path.contains("/pulls/comments/")
                && path.ends_with("/reactions")
                && *status < 300),
        "no reaction on the review comment"
    );
    assert!(!ts.github.pull(REPO, pr).context("PR")?.draft);
    Ok(())
}

/// With no workflow cache (`MAINLOOP_WORKFLOW_CACHE=0`) every workflow task replays the task's
/// history from its start, as happens to a parked task evicted from a full cache when it is
/// answered: the task still goes from plan to merged with one PR, and no workflow task went
/// to a sticky queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_replayed_at_every_step_without_a_workflow_cache_still_merges() -> Result<()> {
    let ts =
        TaskStack::start_with_roles(&[], &[("worker", "MAINLOOP_WORKFLOW_CACHE", "0")]).await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let id = ts.confirmed_task(json!({})).await?;
    ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    approve_plan(&ts, &id).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = task.pr_number.context("no PR")? as u64;
    ts.github.merge_pr(REPO, pr).await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;
    assert_eq!(ts.github.view(|v| v.pulls(REPO).len()), 1);

    let mut queues = std::collections::BTreeMap::<String, usize>::new();
    for run in crate::histories::histories(&ts.stack, &format!("task/{id}")).await? {
        let history: serde_json::Value = serde_json::from_slice(&run)?;
        for event in history["events"].as_array().into_iter().flatten() {
            let scheduled = &event["attributes"]["WorkflowTaskScheduledEventAttributes"];
            if let Some(kind) = scheduled["task_queue"]["kind"].as_i64() {
                // 1: the task queue every worker polls; 2: one worker's sticky queue.
                let kind = if kind == 2 { "sticky" } else { "normal" };
                *queues.entry(kind.to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(queues.get("sticky"), None, "{queues:?}");
    assert!(queues.get("normal").is_some_and(|n| *n > 10), "{queues:?}");
    Ok(())
}

/// A running task reset by an operator within the minute of the run it resets (back to the
/// workflow task that scheduled its job) runs the job anew under a name of its own, rather
/// than taking over the job the old run left behind, whose result belongs to no run now.
/// Job names carry a hash of the whole run id: the Temporal server 1.29 gives reset runs
/// random ids, but first runs time-ordered ones whose first characters change only every
/// minute (`task::tests::runs_started_in_the_same_minute_name_their_jobs_apart`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_task_reset_within_the_minute_runs_its_job_anew() -> Result<()> {
    let ts = TaskStack::start().await?;
    let job = HeldJob::start(&ts).await?;
    let workflow = format!("task/{}", job.task);
    let runs = crate::histories::runs_of(&ts.stack, &workflow).await?;
    let latest = runs
        .last()
        .and_then(|run| run["execution"]["runId"].as_str())
        .context("run id")?
        .to_string();
    let implement_jobs = |root: &std::path::Path| -> Vec<(std::path::PathBuf, serde_json::Value)> {
        crate::tasks::job_records(root)
            .into_iter()
            .filter(|(dir, _)| dir.to_string_lossy().ends_with("-implement"))
            .collect()
    };
    let before = implement_jobs(ts.jobs_dir());
    assert_eq!(before.len(), 1, "{before:?}");
    // Back to the workflow task that scheduled the job: the reset run schedules it again.
    ts.stack
        .temporal
        .cli(&[
            "workflow",
            "reset",
            "-w",
            &workflow,
            "-r",
            &latest,
            "--type",
            "LastWorkflowTask",
            "--reason",
            "run the implementation again",
        ])
        .await?;
    wait_until(|| job.executions().is_ok_and(|n| n == 2)).await?;
    let after = implement_jobs(ts.jobs_dir());
    assert_eq!(
        after.len(),
        2,
        "the reset run's job has a directory of its own: {after:?}"
    );

    // The old run's job is nobody's now: stop it, as an operator would, so that only the new
    // one pushes.
    let pid = before[0].1["pid"].as_u64().context("pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()?;
    assert!(killed.success());
    job.release()?;
    let task = ts
        .wait_status(&job.task, TaskStatus::ReadyForReview)
        .await?;
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    assert_eq!(plain_issues(&ts), 1);
    assert_no_duplicate_comments(&ts, &[task.pr_number.context("PR")? as u64]);
    Ok(())
}

/// A process that is gone or has ended (a zombie waiting for its parent).
fn ended(pid: u32) -> bool {
    crate::tasks::proc_stat_field(pid, 3).is_none_or(|state| state == "Z" || state == "X")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stack_dropped_while_a_job_is_held_leaves_no_job_running() -> Result<()> {
    let ts = TaskStack::start().await?;
    let _job = HeldJob::start(&ts).await?;
    let pids: Vec<u32> = crate::tasks::job_records(ts.jobs_dir())
        .iter()
        .filter_map(|(_, record)| u32::try_from(record["pid"].as_u64()?).ok())
        .collect();
    let mut held: Vec<u32> = pids.into_iter().filter(|pid| !ended(*pid)).collect();
    anyhow::ensure!(!held.is_empty(), "no job runs while held");
    // Every process of the jobs: the agent, Claude Code, and the held command its Bash tool
    // runs in a session of its own.
    let tree: Vec<u32> = held
        .iter()
        .flat_map(|pid| crate::tasks::descendants(*pid))
        .collect();
    anyhow::ensure!(tree.len() >= 2, "the held job's processes: {tree:?}");
    held.extend(tree);
    drop(ts);
    wait_until(|| held.iter().all(|pid| ended(*pid))).await?;
    Ok(())
}
