//! Worker tasks and the people around them: questions answered from the app (also while the
//! worker is down), a plan revised before it is approved, and a task cancelled mid-job.

use anyhow::{Context, Result};
use mainloop_store::{InboxKind, TaskStatus};
use mainloop_testkit::anthropic::{RecordedRequest, Reply};
use mainloop_testkit::github::IssueState;
use serde_json::{Value, json};

use crate::harness::USER;
use crate::tasks::{JobKind, REPO, TaskStack, approve_plan, job_kind, scripted_model, wait_until};

/// The scripted model, except that a plan job without answers asks two questions, and a plan
/// job with answers writes them into its plan.
pub fn asks_first(request: &RecordedRequest) -> Reply {
    if job_kind(request) != Some(JobKind::Plan) {
        return scripted_model(request);
    }
    let text = request.first_user_text();
    if !text.contains("Answers to your earlier questions") {
        return Reply::tool_use(
            "AskUserQuestion",
            json!({"questions": [
                {
                    "question": "Which greeting should greet() return?",
                    "header": "Greeting",
                    "options": [
                        {"label": "Hello", "description": "Formal"},
                        {"label": "Hi", "description": "Casual"}
                    ],
                    "multiSelect": false
                },
                {
                    "question": "Where should it live?",
                    "header": "Module",
                    "options": [{"label": "src/greet.rs"}, {"label": "src/lib.rs"}],
                    "multiSelect": false
                }
            ]}),
        )
        .with_usage(300, 60);
    }
    // The plan carries the answers the prompt gave, so the test can see they arrived.
    let answers: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("A: "))
        .collect();
    Reply::tool_use(
        "ExitPlanMode",
        json!({ "plan": format!("1. greet() returns the answer: {}\n2. Test it", answers.join(", ")) }),
    )
    .with_usage(300, 60)
}

async fn answer(ts: &TaskStack, id: &str, answers: Value) -> Result<(u16, Value)> {
    ts.task_input(id, "answer", json!({ "answers": answers }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn questions_answered_through_the_api_reach_the_next_plan() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.stack.anthropic.set_default(asks_first);
    let id = ts.confirmed_task(json!({})).await?;

    let task = ts.wait_status(&id, TaskStatus::WaitingQuestions).await?;
    let ids: Vec<&str> = task.questions.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(ids, ["greeting", "module"], "{:?}", task.questions);
    assert_eq!(task.questions[0].options.len(), 2);
    let inbox = ts.stack.store.list_inbox(USER, 50).await?;
    assert!(
        inbox
            .iter()
            .any(|i| i.kind == InboxKind::Questions && !i.resolved),
        "{inbox:?}"
    );
    // The questions are on the issue too, for whoever answers there.
    let issue = task.issue_number.context("no issue")? as u64;
    assert!(
        ts.github
            .comments(REPO, issue)
            .iter()
            .any(|c| c.body.contains("Which greeting")),
        "no questions comment"
    );

    // Every question needs an answer; a partial set is refused and changes nothing.
    let (status, body) = answer(&ts, &id, json!({"greeting": "Hi"})).await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(ts.task(&id).await?.status, TaskStatus::WaitingQuestions);

    let (status, body) =
        answer(&ts, &id, json!({"greeting": "Hi", "module": "src/lib.rs"})).await?;
    assert_eq!(status, 202, "{body}");
    let task = ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let plan = task.plan.unwrap_or_default();
    assert!(plan.contains("Hi") && plan.contains("src/lib.rs"), "{plan}");
    assert_eq!(ts.runs(&id, "plan").await?, 2);
    // Answering twice is refused now that nothing waits for answers.
    let (status, _) = answer(&ts, &id, json!({"greeting": "Hello", "module": "x"})).await?;
    assert_eq!(status, 409);
    let inbox = ts.stack.store.list_inbox(USER, 50).await?;
    assert!(
        inbox
            .iter()
            .filter(|i| i.kind == InboxKind::Questions)
            .all(|i| i.resolved),
        "{inbox:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_posted_while_the_worker_is_down_is_applied_when_it_comes_back() -> Result<()> {
    let mut ts = TaskStack::start().await?;
    ts.stack.anthropic.set_default(asks_first);
    let id = ts.confirmed_task(json!({})).await?;
    ts.wait_status(&id, TaskStatus::WaitingQuestions).await?;

    ts.stack.kill_worker().await?;
    let (status, body) = answer(
        &ts,
        &id,
        json!({"greeting": "Hello", "module": "src/greet.rs"}),
    )
    .await?;
    assert_eq!(status, 202, "{body}");
    // The answer is kept (by the outbox and then by Temporal) while nothing can act on it.
    assert_eq!(ts.task(&id).await?.status, TaskStatus::WaitingQuestions);

    ts.stack.start_worker().await?;
    let task = ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let plan = task.plan.unwrap_or_default();
    assert!(
        plan.contains("Hello") && plan.contains("src/greet.rs"),
        "{plan}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_revised_once_with_text_then_approved_is_implemented() -> Result<()> {
    let ts = TaskStack::start().await?;
    let id = ts.confirmed_task(json!({})).await?;
    let task = ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let first_plan = task.plan.clone().unwrap_or_default();
    let issue = task.issue_number.context("no issue")? as u64;

    // A revision needs text.
    let (status, _) = ts
        .task_input(&id, "review-plan", json!({"action": "revise"}))
        .await?;
    assert_eq!(status, 422);
    let (status, body) = ts
        .task_input(
            &id,
            "review-plan",
            json!({"action": "revise", "text": "Please use CSS variables for the colours"}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    let revised = ts
        .wait_for(|| async {
            let task = ts.task(&id).await?;
            let plan = task.plan.clone().unwrap_or_default();
            Ok(
                (task.status == TaskStatus::WaitingPlanReview && plan.contains("CSS variables"))
                    .then_some(task),
            )
        })
        .await?;
    assert_ne!(revised.plan.as_deref(), Some(first_plan.as_str()));
    assert_eq!(ts.runs(&id, "plan").await?, 2);
    // The revision job was told the previous plan and the change asked for.
    let revision_prompts = ts
        .stack
        .anthropic
        .requests()
        .iter()
        .filter(|r| job_kind(r) == Some(JobKind::Plan))
        .map(RecordedRequest::first_user_text)
        .filter(|p| p.contains("Changes the user asked for"))
        .collect::<Vec<_>>();
    assert_eq!(revision_prompts.len(), 1);
    assert!(revision_prompts[0].contains("Please use CSS variables"));
    assert!(revision_prompts[0].contains(&first_plan));
    // The issue shows the plan now in force.
    let body = ts.issue_body(issue)?;
    assert!(body.contains("CSS variables"), "{body}");

    approve_plan(&ts, &id).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(ts.runs(&id, "implement").await?, 1);
    // The implementation job was given the revised plan.
    assert!(
        ts.stack
            .anthropic
            .requests()
            .iter()
            .filter(|r| job_kind(r) == Some(JobKind::Implement))
            .all(|r| r.first_user_text().contains("CSS variables"))
    );
    assert!(task.pr_number.is_some());
    Ok(())
}

/// Whether any process on the machine has `needle` in its command line.
fn process_running(needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|cmdline| {
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_implementation_stops_the_job_and_closes_the_issue() -> Result<()> {
    let ts = TaskStack::start().await?;
    let marker = ts.implement_runs_until_killed("cancel-gate");
    let id = ts.confirmed_task(json!({})).await?;
    approve_plan(&ts, &id).await?;
    ts.wait_status(&id, TaskStatus::Implementing).await?;
    // The job is running once the agent has asked for the long command.
    ts.wait_for_log(&id, &marker).await?;
    wait_until(|| process_running(&marker)).await?;

    let (status, body) = ts
        .task_input(&id, "cancel", json!({"reason": "changed my mind"}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let task = ts.wait_status(&id, TaskStatus::Cancelled).await?;
    wait_until(|| !process_running(&marker))
        .await
        .context("the job's command still runs after the cancel")?;
    let issue = task.issue_number.context("no issue")? as u64;
    let issue = ts.github.issue(REPO, issue).context("issue")?;
    assert_eq!(issue.state, IssueState::Closed);
    assert!(
        ts.github
            .comments(REPO, issue.number)
            .iter()
            .any(|c| c.body.contains("cancelled") && c.body.contains("changed my mind")),
        "no cancel comment"
    );
    assert!(ts.github.pulls(REPO).is_empty(), "a PR was opened");
    let runs = ts.stack.store.task_runs(USER, &id).await?;
    assert!(runs.iter().all(|r| r.status != "running"), "{runs:?}");
    // Nothing more can be asked of a cancelled task.
    let (status, _) = ts
        .request("POST", &format!("/api/tasks/{id}/retry"), None)
        .await?;
    assert_eq!(status, 409);
    Ok(())
}
