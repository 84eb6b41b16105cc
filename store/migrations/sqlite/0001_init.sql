-- The main thread of each user: its rolling summary and how far it reaches.
CREATE TABLE threads (
    user_id            TEXT PRIMARY KEY NOT NULL,
    summary            TEXT NOT NULL DEFAULT '',
    -- seq of the last message folded into `summary`; 0 = nothing summarised yet.
    summarized_through INTEGER NOT NULL DEFAULT 0,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);

CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    kind            TEXT NOT NULL CHECK (kind IN ('chat', 'error', 'note')),
    content         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('streaming', 'complete')),
    -- The user message an assistant reply answers: at most one reply per message.
    reply_to        TEXT UNIQUE,
    idempotency_key TEXT,
    attempt         INTEGER NOT NULL DEFAULT 0,
    model           TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    created_at      TEXT NOT NULL,
    completed_at    TEXT,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX messages_user_seq ON messages (user_id, seq);

CREATE TABLE proposals (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    repo          TEXT NOT NULL,
    model         TEXT,
    skip_planning INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected')),
    created_at    TEXT NOT NULL,
    decided_at    TEXT
);
CREATE INDEX proposals_message ON proposals (message_id);
CREATE INDEX proposals_user ON proposals (user_id, created_at);

-- Append-only log of everything a client must see; ids are monotonic in commit order.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_user_id ON events (user_id, id);

-- Signals accepted by the API and not yet delivered to Temporal.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    signal       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at TEXT NOT NULL,
    delivered_at TEXT,
    last_error   TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (workflow_id, id) WHERE delivered_at IS NULL;

-- One row per compaction: the key makes a retried compaction a no-op.
CREATE TABLE compactions (
    key           TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    from_seq      INTEGER NOT NULL,
    through_seq   INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX compactions_user ON compactions (user_id, from_seq);
