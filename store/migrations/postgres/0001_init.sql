-- The main thread of each user: its rolling summary and how far it reaches.
CREATE TABLE threads (
    user_id            TEXT PRIMARY KEY,
    summary            TEXT NOT NULL DEFAULT '',
    -- seq of the last message folded into `summary`; 0 = nothing summarised yet.
    summarized_through BIGINT NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE TABLE messages (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    kind            TEXT NOT NULL CHECK (kind IN ('chat', 'error', 'note')),
    content         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('streaming', 'complete')),
    -- The user message an assistant reply answers: at most one reply per message.
    reply_to        TEXT UNIQUE,
    idempotency_key TEXT,
    attempt         BIGINT NOT NULL DEFAULT 0,
    model           TEXT,
    input_tokens    BIGINT,
    output_tokens   BIGINT,
    created_at      TIMESTAMPTZ NOT NULL,
    completed_at    TIMESTAMPTZ,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX messages_user_seq ON messages (user_id, seq);

CREATE TABLE proposals (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    repo          TEXT NOT NULL,
    model         TEXT,
    skip_planning BOOLEAN NOT NULL DEFAULT FALSE,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected')),
    created_at    TIMESTAMPTZ NOT NULL,
    decided_at    TIMESTAMPTZ
);
CREATE INDEX proposals_message ON proposals (message_id);
CREATE INDEX proposals_user ON proposals (user_id, created_at);

-- Append-only log of everything a client must see. Ids come from event_seq, whose single row
-- is locked by every appending transaction until it commits: ids are therefore handed out in
-- commit order, and a reader that has seen id N can never later meet a smaller id.
CREATE TABLE event_seq (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last_id   BIGINT NOT NULL
);
INSERT INTO event_seq (singleton, last_id) VALUES (TRUE, 0);

CREATE TABLE events (
    id         BIGINT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_user_id ON events (user_id, id);

-- Signals accepted by the API and not yet delivered to Temporal.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    user_id      TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    signal       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    available_at TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX outbox_pending ON outbox (workflow_id, id) WHERE delivered_at IS NULL;

-- One row per compaction: the key makes a retried compaction a no-op.
CREATE TABLE compactions (
    key           TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    from_seq      BIGINT NOT NULL,
    through_seq   BIGINT NOT NULL,
    message_count BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX compactions_user ON compactions (user_id, from_seq);
