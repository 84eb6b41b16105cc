//! The append-only event log behind `GET /api/events`.

use chrono::{DateTime, Utc};

use crate::model::{Event, NewEvent};
use crate::{Result, Store, StoreError, begin_write, db};

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: i64,
    kind: String,
    data: String,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserEventRow {
    user_id: String,
    #[sqlx(flatten)]
    event: EventRow,
}

impl EventRow {
    fn into_event(self) -> Result<Event> {
        Ok(Event {
            id: self.id,
            kind: self.kind,
            data: serde_json::from_str(&self.data)
                .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", self.id)))?,
            created_at: self.created_at,
        })
    }
}

/// Appends `$events` for `$user` inside the open transaction `$tx`, returning them with their
/// ids. Must be the last write of the transaction: on PostgreSQL it takes the `event_seq`
/// row lock, which serialises appenders until they commit (so ids follow commit order).
macro_rules! insert_events {
    ($tx:expr, $pg:expr, $user:expr, $events:expr) => {{
        let events: &[$crate::model::NewEvent] = $events;
        let user: &str = $user;
        let created_at = $crate::now();
        let mut appended = Vec::with_capacity(events.len());
        if !events.is_empty() {
            let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
            let ids: Vec<i64> = if $pg {
                // One round trip for the ids, every row and the wake-up: every status a task
                // records and every reply's progress ends with this, inside its transaction.
                // In chunks, to stay far below PostgreSQL's limit on bound values.
                let mut ids = Vec::with_capacity(events.len());
                for (events, data) in events.chunks(500).zip(data.chunks(500)) {
                    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
                    let rows: Vec<String> = (0..events.len())
                        .map(|i| format!("({}, ${}, ${})", i + 1, 2 * i + 4, 2 * i + 5))
                        .collect();
                    let sql = format!(
                        "WITH seq AS ( \
                           UPDATE event_seq SET last_id = last_id + $1 \
                           RETURNING last_id - $1 AS first), \
                         ins AS ( \
                           INSERT INTO events (id, user_id, kind, data, created_at) \
                           SELECT seq.first + v.n, $2, v.kind, v.data, $3 \
                           FROM seq, (VALUES {}) AS v(n, kind, data)), \
                         woken AS (SELECT pg_notify('mainloop_events', '')) \
                         SELECT seq.first FROM seq, woken",
                        rows.join(", ")
                    );
                    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(count)
                        .bind(user)
                        .bind(created_at);
                    for (event, data) in events.iter().zip(data) {
                        query = query.bind(event.kind).bind(data);
                    }
                    let first: i64 = query.fetch_one(&mut *$tx).await?;
                    ids.extend((1..=count).map(|n| first + n));
                }
                ids
            } else {
                let mut ids = Vec::with_capacity(events.len());
                for (event, data) in events.iter().zip(&data) {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO events (user_id, kind, data, created_at) \
                         VALUES ($1, $2, $3, $4) RETURNING id",
                    )
                    .bind(user)
                    .bind(event.kind)
                    .bind(data)
                    .bind(created_at)
                    .fetch_one(&mut *$tx)
                    .await?;
                    ids.push(id);
                }
                ids
            };
            for (event, id) in events.iter().zip(ids) {
                appended.push($crate::model::Event {
                    id,
                    kind: event.kind.to_string(),
                    data: event.data.clone(),
                    created_at,
                });
            }
        }
        appended
    }};
}
pub(crate) use insert_events;

impl Store {
    /// Appends events on their own.
    pub async fn append_events(&self, user: &str, events: &[NewEvent]) -> Result<Vec<Event>> {
        let appended = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let appended = insert_events!(tx, pg, user, events);
            tx.commit().await?;
            appended
        });
        self.wake_events();
        Ok(appended)
    }

    /// The user's events with an id above `after`, oldest first.
    pub async fn events_after(&self, user: &str, after: i64, limit: i64) -> Result<Vec<Event>> {
        let rows: Vec<EventRow> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT id, kind, data, created_at FROM events \
                 WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(user)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    /// Every user's events with an id above `after`, oldest first, each with its user: one
    /// read that serves every stream of a process (the API's event feed).
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<(String, Event)>> {
        let rows: Vec<UserEventRow> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT id, user_id, kind, data, created_at FROM events \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|row| row.event.into_event().map(|event| (row.user_id, event)))
            .collect()
    }

    /// The id of the newest committed event (0 if none). Every change described by an event
    /// up to this id is visible to queries issued after this call, so a client that loads
    /// state and then follows events from here misses nothing.
    pub async fn last_event_id(&self) -> Result<i64> {
        let id: Option<i64> = db!(self, |pool, pg| {
            sqlx::query_scalar("SELECT MAX(id) FROM events")
                .fetch_one(pool)
                .await?
        });
        Ok(id.unwrap_or(0))
    }

    /// The id of the user's newest committed event (0 if none): where a client of that user
    /// follows the stream from. Unlike [`Store::last_event_id`] it says nothing about other
    /// users' activity.
    pub async fn last_user_event_id(&self, user: &str) -> Result<i64> {
        let id: Option<i64> = db!(self, |pool, pg| {
            sqlx::query_scalar("SELECT MAX(id) FROM events WHERE user_id = $1")
                .bind(user)
                .fetch_one(pool)
                .await?
        });
        Ok(id.unwrap_or(0))
    }
}
