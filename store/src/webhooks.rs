//! GitHub webhook deliveries: each is taken once (by its delivery id) and becomes a `github`
//! nudge in the outbox for every open task it concerns, so the task looks at GitHub now
//! instead of at its next poll.

use chrono::Duration as ChronoDuration;
use serde_json::json;

use crate::outbox::insert_outbox;
use crate::tasks::task_workflow_id;
use crate::{Result, Store, begin_write, db, now};

/// The outbox signal that tells a task something happened on GitHub.
pub const SIGNAL_GITHUB: &str = "github";

/// How long a delivery id is remembered; GitHub redelivers within days, not weeks.
const DELIVERY_MEMORY_DAYS: i64 = 14;

/// What a webhook delivery is about: a repository and the issue, PR or branch it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `owner/name`.
    pub repo: String,
    /// Issue and PR numbers the event names.
    pub numbers: Vec<i64>,
    /// Branches the event names (CI events name the head branch).
    pub branches: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct OpenTask {
    id: String,
    user_id: String,
    issue_number: Option<i64>,
    pr_number: Option<i64>,
    branch: Option<String>,
}

/// The result of taking a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Seen before: nothing was done again.
    Duplicate,
    /// Taken: the ids of the tasks that were nudged.
    Accepted { tasks: Vec<String> },
}

impl Store {
    /// Takes a delivery once: records its id and queues a nudge for every task that is not
    /// over and whose repository and issue, PR or branch the event names.
    pub async fn accept_github_delivery(
        &self,
        delivery: &str,
        event: &str,
        target: &WebhookTarget,
    ) -> Result<WebhookOutcome> {
        let outcome = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                .bind(at - ChronoDuration::days(DELIVERY_MEMORY_DAYS))
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO webhook_deliveries (id, event, received_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(delivery)
            .bind(event)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                WebhookOutcome::Duplicate
            } else {
                let candidates: Vec<OpenTask> = sqlx::query_as(
                    "SELECT id, user_id, issue_number, pr_number, branch FROM tasks \
                         WHERE LOWER(repo) = LOWER($1) \
                         AND status NOT IN ('merged', 'closed', 'cancelled')",
                )
                .bind(&target.repo)
                .fetch_all(&mut *tx)
                .await?;
                let mut tasks = Vec::new();
                for OpenTask {
                    id,
                    user_id: user,
                    issue_number: issue,
                    pr_number: pr,
                    branch,
                } in candidates
                {
                    let named = [issue, pr]
                        .into_iter()
                        .flatten()
                        .any(|n| target.numbers.contains(&n))
                        || branch.is_some_and(|b| target.branches.contains(&b));
                    if !named {
                        continue;
                    }
                    let payload = json!({ "event": event, "delivery": delivery }).to_string();
                    insert_outbox!(
                        tx,
                        &user,
                        &task_workflow_id(&id),
                        SIGNAL_GITHUB,
                        &payload,
                        at
                    );
                    tasks.push(id);
                }
                tx.commit().await?;
                WebhookOutcome::Accepted { tasks }
            }
        });
        if matches!(&outcome, WebhookOutcome::Accepted { tasks } if !tasks.is_empty()) {
            self.wake_outbox();
        }
        Ok(outcome)
    }
}
