//! mainloop's storage: the schema, its migrations and every query, on SQLite (the embedded
//! default) and PostgreSQL (production). Both backends run the same query text; the `db!`
//! macro expands each method body once per backend so nothing is written twice.
//!
//! The store also owns the wake-ups that tell readers of the event log and of the outbox
//! that something new was committed: in-process always, and across processes through
//! PostgreSQL `LISTEN/NOTIFY`.

mod compaction;
mod error;
mod events;
mod limits;
mod messages;
pub mod model;
mod outbox;
mod proposals;
mod retry;
mod tasks;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

pub use error::StoreError;
pub use limits::RateLimit;
pub use messages::{Accepted, SIGNAL_MESSAGE, StartedReply};
pub use model::*;
pub use proposals::{Decision, NewProposal, SIGNAL_PROPOSAL_DECISION};
pub use retry::RetryBackoff;
pub use tasks::{
    ConfirmOverrides, Cost, InboxItem, InboxKind, NewInboxItem, NewTaskInput, Project, Task,
    TaskBudget, TaskInputRecord, TaskLogLine, TaskProjection, TaskQuestion, TaskQuestionOption,
    TaskRun, TaskStatus, task_workflow_id,
};
pub use webhooks::{SIGNAL_GITHUB, WebhookOutcome, WebhookTarget};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The PostgreSQL channel on which committed event ids are announced.
const EVENTS_CHANNEL: &str = "mainloop_events";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

struct Inner {
    db: Db,
    /// Woken after every commit that appended events.
    events: broadcast::Sender<()>,
    /// Woken after every commit that added outbox items.
    outbox: Notify,
    listener: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Expands `$body` once per backend, with `$pool` bound to that backend's pool and `$pg`
/// to whether it is PostgreSQL (for the few statements whose text differs).
macro_rules! db {
    ($store:expr, |$pool:ident, $pg:ident| $body:expr) => {
        match &$store.inner.db {
            $crate::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}
pub(crate) use db;

/// Opens a write transaction. SQLite must take its write lock up front (`BEGIN IMMEDIATE`):
/// a deferred transaction that reads and then writes fails with SQLITE_BUSY under
/// contention instead of waiting for the lock.
macro_rules! begin_write {
    ($pool:expr, $pg:expr) => {
        if $pg {
            $pool.begin().await
        } else {
            $pool.begin_with("BEGIN IMMEDIATE").await
        }
    };
}
pub(crate) use begin_write;

impl Store {
    /// Connects to `url`: `sqlite://path/to/file.db` (created if missing) or
    /// `postgres://…`. Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store> {
        let (events, _) = broadcast::channel(256);
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            Ok(Store {
                inner: Arc::new(Inner {
                    db: Db::Sqlite(pool),
                    events,
                    outbox: Notify::new(),
                    listener: None,
                }),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            let listener = tokio::spawn(forward_notifications(pool.clone(), events.clone()));
            Ok(Store {
                inner: Arc::new(Inner {
                    db: Db::Postgres(pool),
                    events,
                    outbox: Notify::new(),
                    listener: Some(listener),
                }),
            })
        } else {
            Err(StoreError::Config(format!(
                "unsupported database URL scheme (expected sqlite: or postgres:): {}",
                redact_url(url)
            )))
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.inner.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies every pending migration of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.inner.db {
            Db::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Db::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        db!(self, |pool, pg| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection; in-flight queries finish first.
    pub async fn close(&self) {
        match &self.inner.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Wakes after events were committed (by this process, or by any process on
    /// PostgreSQL). A wake-up says only "look again": readers query the log themselves, so a
    /// lagging receiver loses nothing.
    pub fn subscribe_events(&self) -> broadcast::Receiver<()> {
        self.inner.events.subscribe()
    }

    /// Resolves when this process has added outbox items since the last call.
    pub async fn outbox_added(&self) {
        self.inner.outbox.notified().await
    }

    pub(crate) fn wake_events(&self) {
        wake(&self.inner.events);
    }

    pub(crate) fn wake_outbox(&self) {
        self.inner.outbox.notify_one();
    }
}

/// Relays PostgreSQL notifications of committed events to local subscribers, reconnecting
/// as needed. After a lost connection it wakes everyone, since notifications sent while it
/// was away are gone.
async fn forward_notifications(pool: PgPool, events: broadcast::Sender<()>) {
    let mut backoff = RetryBackoff::default();
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot open the PostgreSQL event listener; retrying");
                backoff.sleep().await;
                continue;
            }
        };
        if let Err(error) = listener.listen(EVENTS_CHANNEL).await {
            tracing::warn!(%error, "cannot LISTEN for events; retrying");
            backoff.sleep().await;
            continue;
        }
        backoff.reset();
        // Anything committed before LISTEN took effect was not announced.
        wake(&events);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake(&events),
                Ok(None) => {
                    tracing::warn!("event listener lost its connection; reconnecting");
                    wake(&events);
                }
                Err(error) => {
                    tracing::warn!(%error, "event listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

fn wake(events: &broadcast::Sender<()>) {
    // An error only means that nobody is subscribed right now.
    if events.send(()).is_err() {
        tracing::trace!("no event subscribers");
    }
}

/// A database URL with its password hidden, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_err() {
                return "<unprintable database URL>".to_string();
            }
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable database URL>".to_string(),
    }
}

/// The current time at the precision both backends keep (PostgreSQL stores microseconds), so
/// a record returned by a write equals the same record read back.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
