//! The worker SIGKILLed mid-activity, again and again on one stack: chat turns killed before
//! the model is called, once the request reached the model, and mid-stream; task jobs killed
//! right after the task was confirmed, as the implementation job starts, and while it runs.
//! After every kill the worker restarts; at the end every message has exactly one reply and
//! every task exactly one job run, one PR and no duplicated issue, comment or commit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mainloop_store::{Message, MessageKind, MessageStatus, Role, TaskStatus};
use mainloop_testkit::anthropic::{RecordedRequest, Reply};
use mainloop_testkit::github::CiScript;
use serde_json::json;

use super::figures;
use crate::harness::{USER, WAIT, is_summary, replies_to};
use crate::tasks::{JobKind, REPO, TaskStack, bash, job_kind, scripted_model, wait_until};

const CHAT_REPLY: &str = "one two three four five six seven eight nine ten eleven twelve";

/// The number after `prefix` in `text`, e.g. 7 in "Fault trial 7".
fn trial_number(text: &str, prefix: &str) -> Option<usize> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Chat turns stream slowly enough to be killed mid-stream; "task trial N" makes the model
/// propose task "Fault trial N", whose implementation job notes each start in `started-N` and
/// holds until `go-N` exists.
fn fault_model(gates: PathBuf) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    move |request| {
        if is_summary(request) {
            return Reply::text("The user is testing crashes.");
        }
        if request.tool_names().iter().any(|t| t == "propose_task") {
            if request.after_tool() {
                return Reply::text("Proposed: confirm to start.");
            }
            let asked = request.last_user_text().unwrap_or_default();
            if let Some(n) = trial_number(&asked, "task trial ") {
                return Reply::tool_use(
                    "propose_task",
                    json!({
                        "title": format!("Fault trial {n}"),
                        "description": "Add a greet() function to the library",
                        "repo": REPO,
                        "skip_planning": true,
                    }),
                );
            }
            return Reply::text(CHAT_REPLY)
                .with_first_token_delay(Duration::from_millis(300))
                .with_token_delay(Duration::from_millis(60));
        }
        if job_kind(request) == Some(JobKind::Implement)
            && let Some(n) = trial_number(&request.first_user_text(), "Fault trial ")
        {
            return bash(&format!(
                "echo ran >> {dir}/started-{n}; while [ ! -f {dir}/go-{n} ]; do sleep 0.05; done; \
                 printf 'pub fn greet() {{}}\\n' >> src/greet.rs",
                dir = gates.display()
            ));
        }
        scripted_model(request)
    }
}

/// Where a chat turn is killed.
#[derive(Debug, Clone, Copy)]
enum ChatKill {
    /// As soon as the message is accepted: the turn may not have started.
    BeforeRequest,
    /// Once the model has the request, before it streams.
    RequestReceived,
    /// After the first streamed delta.
    MidStream,
}

/// Where a task trial is killed.
#[derive(Debug, Clone, Copy)]
enum JobKill {
    /// As soon as the proposal is confirmed.
    AfterConfirm,
    /// As the task enters `implementing`: the job is being started.
    JobStarting,
    /// While the job runs (its command has started).
    MidJob,
}

/// Waits until a completed reply to `message_id` is stored.
async fn reply_completed(ts: &TaskStack, message_id: &str) -> Result<()> {
    ts.wait_for(|| async {
        let thread = ts.stack.thread().await?;
        Ok(replies_to(&thread, message_id)
            .iter()
            .any(|m| m.status == MessageStatus::Complete)
            .then_some(()))
    })
    .await
}

/// Waits until the fake Anthropic API has received a chat request asking `content`.
async fn model_asked(ts: &TaskStack, content: &str) -> Result<()> {
    let mut seen = ts.stack.anthropic.requests().len();
    loop {
        let requests = ts.stack.anthropic.wait_for_requests(seen + 1, WAIT).await?;
        if requests
            .iter()
            .any(|r| r.last_user_text().as_deref() == Some(content))
        {
            return Ok(());
        }
        seen = requests.len();
    }
}

/// One chat trial: post, kill at `kill`, restart; returns restart → reply stored.
async fn chat_trial(ts: &mut TaskStack, n: usize, kill: ChatKill) -> Result<Duration> {
    let content = format!("chat trial {n}");
    let mut events = ts.stack.events(ts.stack.last_event_id().await?).await?;
    let posted = ts.stack.post(&content, &format!("chat-{n}")).await?;
    let id = posted["id"].as_str().context("no message id")?.to_string();
    match kill {
        ChatKill::BeforeRequest => {}
        ChatKill::RequestReceived => model_asked(ts, &content).await?,
        ChatKill::MidStream => {
            events
                .collect_until(WAIT, |e| e.event == "message.delta")
                .await?;
        }
    }
    ts.stack.kill_worker().await?;
    let restarted = Instant::now();
    ts.stack.start_worker().await?;
    reply_completed(ts, &id).await?;
    Ok(restarted.elapsed())
}

/// The id of the proposal titled `title`, once the model has made it.
async fn proposal_titled(ts: &TaskStack, title: &str) -> Result<String> {
    ts.wait_for(|| async {
        let thread = ts.stack.thread().await?;
        Ok(thread
            .iter()
            .flat_map(|m| m.proposals.iter())
            .find(|p| p.title == title)
            .map(|p| p.id.clone()))
    })
    .await
}

/// One task trial: propose, confirm, kill at `kill`, let the job go, restart; returns the
/// task id and restart → ready for review.
async fn job_trial(
    ts: &mut TaskStack,
    gates: &Path,
    n: usize,
    kill: JobKill,
) -> Result<(String, Duration)> {
    ts.stack
        .post(&format!("task trial {n}"), &format!("task-{n}"))
        .await?;
    let proposal = proposal_titled(ts, &format!("Fault trial {n}")).await?;
    let id = ts
        .confirm(&proposal, json!({ "skip_planning": true }))
        .await?;
    match kill {
        JobKill::AfterConfirm => {}
        JobKill::JobStarting => {
            ts.wait_for(|| async {
                let task = ts.task(&id).await?;
                Ok((task.status == TaskStatus::Implementing).then_some(()))
            })
            .await?;
        }
        JobKill::MidJob => {
            let started = gates.join(format!("started-{n}"));
            wait_until(|| started.exists()).await?;
        }
    }
    ts.stack.kill_worker().await?;
    std::fs::write(gates.join(format!("go-{n}")), "")?;
    let restarted = Instant::now();
    ts.stack.start_worker().await?;
    ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    Ok((id, restarted.elapsed()))
}

/// Counts, by resource, what was lost and what was made twice.
#[derive(Debug, Default)]
struct Tally {
    lost: Vec<String>,
    duplicated: Vec<String>,
    replies: usize,
    jobs: usize,
    prs: usize,
    issues: usize,
    comments: usize,
}

/// Every user message has exactly one complete chat reply, and no reply answers nothing.
fn tally_replies(thread: &[Message], tally: &mut Tally) {
    for message in thread.iter().filter(|m| m.role == Role::User) {
        let replies = replies_to(thread, &message.id);
        let complete = replies
            .iter()
            .filter(|r| r.kind == MessageKind::Chat && r.status == MessageStatus::Complete)
            .count();
        tally.replies += complete;
        if complete == 0 {
            tally.lost.push(format!("reply to {:?}", message.content));
        }
        if replies.len() > 1 {
            tally.duplicated.push(format!(
                "{} replies to {:?}",
                replies.len(),
                message.content
            ));
        }
        let proposals: usize = replies.iter().map(|r| r.proposals.len()).sum();
        if message.content.starts_with("task trial") && proposals != 1 {
            tally
                .duplicated
                .push(format!("{proposals} proposals for {:?}", message.content));
        }
    }
    let strays = thread
        .iter()
        .filter(|m| {
            m.role == Role::Assistant && m.kind == MessageKind::Chat && m.reply_to.is_none()
        })
        .count();
    if strays > 0 {
        tally
            .duplicated
            .push(format!("{strays} chat replies answering nothing"));
    }
}

/// Each task trial made one task that ran its job once, with one PR of two commits, at most
/// one issue, and no comment twice.
async fn tally_tasks(ts: &TaskStack, gates: &Path, trials: usize, tally: &mut Tally) -> Result<()> {
    let tasks = ts.stack.store.list_tasks(USER, None, 10_000).await?;
    let pulls = ts.github.pulls(REPO);
    let pull_numbers: Vec<u64> = pulls.iter().map(|p| p.number).collect();
    let plain_issues: Vec<u64> = ts
        .github
        .issues(REPO)
        .iter()
        .map(|i| i.number)
        .filter(|n| !pull_numbers.contains(n))
        .collect();
    let mut task_issues = Vec::new();
    for n in 0..trials {
        let title = format!("Fault trial {n}");
        let made: Vec<_> = tasks.iter().filter(|t| t.title == title).collect();
        let Some(task) = made.first() else {
            tally.lost.push(format!("task {title}"));
            continue;
        };
        if made.len() > 1 {
            tally
                .duplicated
                .push(format!("{} tasks {title}", made.len()));
        }
        let runs = ts.runs(&task.id, "implement").await?;
        let ran = std::fs::read_to_string(gates.join(format!("started-{n}")))
            .unwrap_or_default()
            .lines()
            .count();
        tally.jobs += runs.min(1);
        if runs == 0 || ran == 0 {
            tally
                .lost
                .push(format!("job of {title} (runs {runs}, ran {ran})"));
        }
        if runs > 1 || ran > 1 {
            tally
                .duplicated
                .push(format!("job of {title} (runs {runs}, ran {ran})"));
        }
        let branch = task.branch.clone().unwrap_or_default();
        let prs: Vec<u64> = pulls
            .iter()
            .filter(|p| p.head_ref == branch)
            .map(|p| p.number)
            .collect();
        tally.prs += prs.len().min(1);
        match prs.len() {
            0 => tally.lost.push(format!("PR of {title}")),
            1 => {}
            more => tally.duplicated.push(format!("{more} PRs of {title}")),
        }
        let commits = ts.github.commits(REPO, &branch).await?.len();
        if commits != 2 {
            tally
                .duplicated
                .push(format!("{commits} commits on {branch}, not 2"));
        }
        let mut numbers = prs.clone();
        if let Some(issue) = task.issue_number {
            task_issues.push(issue as u64);
            numbers.push(issue as u64);
        }
        for number in numbers {
            let mut bodies: Vec<String> = ts
                .github
                .comments(REPO, number)
                .into_iter()
                .map(|c| c.body)
                .collect();
            let all = bodies.len();
            bodies.sort();
            bodies.dedup();
            tally.comments += bodies.len();
            if bodies.len() != all {
                tally.duplicated.push(format!(
                    "{} duplicated comments on #{number}",
                    all - bodies.len()
                ));
            }
        }
    }
    tally.issues = plain_issues.len();
    let mut distinct = task_issues.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if plain_issues.len() != distinct.len() || distinct.len() != task_issues.len() {
        tally.duplicated.push(format!(
            "{} issues for {} task issues",
            plain_issues.len(),
            task_issues.len()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: kills the worker 50 times through the real Claude Code CLI (about 7 min); run by `make test-faults`, results in docs/reliability.md"]
async fn the_worker_killed_mid_activity_50_times_loses_and_duplicates_nothing() -> Result<()> {
    let chat_trials = figures::count("MAINLOOP_FAULT_CHAT_TRIALS", 38);
    let job_trials = figures::count("MAINLOOP_FAULT_JOB_TRIALS", 12);
    let started = Instant::now();
    let mut ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let gates = tempfile::tempdir()?;
    ts.stack
        .anthropic
        .set_default(fault_model(gates.path().to_path_buf()));

    let chat_kills = [
        ChatKill::BeforeRequest,
        ChatKill::RequestReceived,
        ChatKill::MidStream,
    ];
    let job_kills = [JobKill::AfterConfirm, JobKill::JobStarting, JobKill::MidJob];
    let mut chat_recovery = Vec::new();
    let mut job_recovery = Vec::new();
    let mut chat_by_kill = [0u64; 3];
    let mut job_by_kill = [0u64; 3];
    // Interleaved, so chat turns also run while tasks are in flight and vice versa.
    for i in 0..chat_trials.max(job_trials) {
        if i < chat_trials {
            let kill = i % chat_kills.len();
            chat_recovery.push(chat_trial(&mut ts, i, chat_kills[kill]).await?);
            chat_by_kill[kill] += 1;
        }
        if i < job_trials {
            let kill = i % job_kills.len();
            let (_, took) = job_trial(&mut ts, gates.path(), i, job_kills[kill]).await?;
            job_recovery.push(took);
            job_by_kill[kill] += 1;
        }
    }

    let mut tally = Tally::default();
    tally_replies(&ts.stack.thread().await?, &mut tally);
    tally_tasks(&ts, gates.path(), job_trials, &mut tally).await?;
    figures::record(
        "worker_kills",
        "the worker SIGKILLed mid-activity: 0 lost and 0 duplicated replies, issues, PRs, \
         comments or jobs",
        (chat_trials + job_trials) as u64,
        json!({
            "chat_trials": { "before_request": chat_by_kill[0], "request_received": chat_by_kill[1],
                             "mid_stream": chat_by_kill[2] },
            "job_trials": { "after_confirm": job_by_kill[0], "job_starting": job_by_kill[1],
                            "mid_job": job_by_kill[2] },
            "replies": tally.replies,
            "jobs": tally.jobs,
            "prs": tally.prs,
            "issues": tally.issues,
            "comments": tally.comments,
            "lost": tally.lost.len(),
            "duplicated": tally.duplicated.len(),
            "chat_restart_to_reply": figures::millis(&chat_recovery),
            "job_restart_to_ready": figures::millis(&job_recovery),
            "wall_s": started.elapsed().as_secs(),
        }),
    )?;
    assert!(tally.lost.is_empty(), "lost: {:#?}", tally.lost);
    assert!(
        tally.duplicated.is_empty(),
        "duplicated: {:#?}",
        tally.duplicated
    );
    Ok(())
}
