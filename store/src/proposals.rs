//! Task proposals made by the model in the main thread, and the user's decisions on them.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::events::insert_events;
use crate::model::{NewEvent, Proposal, ProposalStatus, event_kind};
use crate::{Result, Store, StoreError, begin_write, db, now};

/// The outbox signal that tells the main thread about a decision on a proposal.
pub const SIGNAL_PROPOSAL_DECISION: &str = "proposal_decision";

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ProposalRow {
    id: String,
    pub(crate) message_id: String,
    title: String,
    description: String,
    repo: String,
    model: Option<String>,
    skip_planning: bool,
    status: String,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

impl ProposalRow {
    pub(crate) fn into_proposal(self) -> Result<Proposal> {
        let status = match self.status.as_str() {
            "pending" => ProposalStatus::Pending,
            "confirmed" => ProposalStatus::Confirmed,
            "rejected" => ProposalStatus::Rejected,
            other => return Err(StoreError::Corrupt(format!("proposal status {other:?}"))),
        };
        Ok(Proposal {
            id: self.id,
            message_id: self.message_id,
            title: self.title,
            description: self.description,
            repo: self.repo,
            model: self.model,
            skip_planning: self.skip_planning,
            status,
            created_at: self.created_at,
            decided_at: self.decided_at,
        })
    }
}

pub(crate) const PROPOSAL_COLUMNS: &str = "id, message_id, title, description, repo, model, skip_planning, \
     status, created_at, decided_at";

/// Loads a proposal inside the open write transaction `$tx` for deciding on it: not found,
/// or a conflict (after rolling back) if it was decided already.
macro_rules! pending_proposal {
    ($tx:expr, $pg:expr, $user:expr, $id:expr) => {{
        // Locked on PostgreSQL so racing decisions queue and the later ones see the first
        // (SQLite's write transaction already serialises them).
        let row: Option<$crate::proposals::ProposalRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM proposals WHERE id = $1 AND user_id = $2{}",
                $crate::proposals::PROPOSAL_COLUMNS,
                if $pg { " FOR UPDATE" } else { "" }
            )))
            .bind($id)
            .bind($user)
            .fetch_optional(&mut *$tx)
            .await?;
        let current = row.ok_or(StoreError::NotFound)?.into_proposal()?;
        if current.status != $crate::model::ProposalStatus::Pending {
            $tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "the proposal is already {}",
                current.status.as_str()
            )));
        }
        current
    }};
}
pub(crate) use pending_proposal;

/// A proposal as the model made it. Its id is chosen by the caller so that a retried turn
/// that makes the same tool call stores it once.
#[derive(Debug, Clone)]
pub struct NewProposal {
    pub id: String,
    pub message_id: String,
    pub title: String,
    pub description: String,
    pub repo: String,
    pub model: Option<String>,
    pub skip_planning: bool,
}

/// What the user decided about a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Reject,
}

impl Store {
    /// Stores a proposal (once per id) and announces it with `proposal.created`.
    pub async fn create_proposal(&self, user: &str, new: &NewProposal) -> Result<Proposal> {
        let created = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let inserted = sqlx::query(
                "INSERT INTO proposals (id, user_id, message_id, title, description, repo, model, \
                 skip_planning, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&new.id)
            .bind(user)
            .bind(&new.message_id)
            .bind(&new.title)
            .bind(&new.description)
            .bind(&new.repo)
            .bind(&new.model)
            .bind(new.skip_planning)
            .bind(now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row: Option<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1 AND user_id = $2"
            )))
            .bind(&new.id)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            let proposal = row.ok_or(StoreError::NotFound)?.into_proposal()?;
            if inserted > 0 {
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(event_kind::PROPOSAL_CREATED, &proposal)]
                );
            }
            tx.commit().await?;
            (proposal, inserted > 0)
        });
        if created.1 {
            self.wake_events();
        }
        Ok(created.0)
    }

    pub async fn get_proposal(&self, user: &str, id: &str) -> Result<Proposal> {
        let row: Option<ProposalRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1 AND user_id = $2"
            )))
            .bind(id)
            .bind(user)
            .fetch_optional(pool)
            .await?
        });
        row.ok_or(StoreError::NotFound)?.into_proposal()
    }

    /// Records the user's decision on a pending proposal, queues the signal that tells the
    /// main thread, and announces `proposal.updated`, all in one transaction. A proposal that
    /// was already decided is a conflict.
    pub async fn decide_proposal(
        &self,
        user: &str,
        id: &str,
        decision: Decision,
        workflow_id: &str,
    ) -> Result<Proposal> {
        let status = match decision {
            Decision::Reject => ProposalStatus::Rejected,
        };
        let proposal = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            let current = pending_proposal!(tx, pg, user, id);
            sqlx::query(
                "UPDATE proposals SET status = $1, decided_at = $2 WHERE id = $3 AND user_id = $4",
            )
            .bind(status.as_str())
            .bind(at)
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
            let proposal = Proposal {
                status,
                decided_at: Some(at),
                ..current
            };
            crate::outbox::insert_outbox!(
                tx,
                user,
                workflow_id,
                SIGNAL_PROPOSAL_DECISION,
                &json!({ "proposal_id": id, "decision": status.as_str() }).to_string(),
                at
            );
            insert_events!(
                tx,
                pg,
                user,
                &[NewEvent::new(event_kind::PROPOSAL_UPDATED, &proposal)]
            );
            tx.commit().await?;
            proposal
        });
        self.wake_events();
        self.wake_outbox();
        Ok(proposal)
    }

    /// Repositories of the user's recent proposals, most recent first, without duplicates.
    pub async fn recent_repos(&self, user: &str, limit: i64) -> Result<Vec<String>> {
        let repos: Vec<String> = db!(self, |pool, pg| {
            // Repositories tasks ran on come first; proposed ones fill in.
            sqlx::query_scalar(
                "SELECT repo FROM (\
                   SELECT repo, 1 AS rank, last_used_at AS at FROM projects WHERE user_id = $1 \
                   UNION ALL \
                   SELECT repo, 2 AS rank, MAX(created_at) AS at FROM proposals \
                   WHERE user_id = $1 GROUP BY repo\
                 ) AS used GROUP BY repo ORDER BY MIN(rank), MAX(at) DESC LIMIT $2",
            )
            .bind(user)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(repos)
    }
}
