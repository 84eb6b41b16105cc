//! The store's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The record exists but is in a state that forbids the change (e.g. a proposal that was
    /// already decided).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An idempotency key was reused with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database was unreachable,
    /// busy or restarting), as opposed to a request that can never succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => {
                matches!(
                    error,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::WorkerCrashed
                ) || is_transient_database_error(error)
            }
            _ => false,
        }
    }
}

fn is_transient_database_error(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    match db.code().as_deref() {
        // PostgreSQL: serialization failure, deadlock, admin shutdown, cannot connect now.
        Some("40001" | "40P01" | "57P01" | "57P02" | "57P03") => true,
        // SQLite: SQLITE_BUSY and SQLITE_LOCKED (and their extended codes).
        Some(code) => matches!(code, "5" | "6" | "261" | "262" | "517"),
        None => false,
    }
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}
