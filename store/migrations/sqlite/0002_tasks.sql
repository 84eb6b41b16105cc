-- Worker tasks: a projection of each `task/{id}` workflow's state, kept current by the
-- workflow's local activities, so lists and the inbox never ask Temporal.
CREATE TABLE tasks (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    proposal_id   TEXT NOT NULL UNIQUE,
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    repo          TEXT NOT NULL,
    model         TEXT,
    skip_planning INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    -- One line on what happens now ("fixing CI 2/5"), for lists.
    detail        TEXT NOT NULL DEFAULT '',
    error         TEXT,
    -- Phase a failed task resumes on retry.
    failed_phase  TEXT,
    issue_number  INTEGER,
    issue_url     TEXT,
    branch        TEXT,
    pr_number     INTEGER,
    pr_url        TEXT,
    plan          TEXT,
    -- JSON list of the questions waiting for answers.
    questions     TEXT,
    ci_fixes      INTEGER NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    completed_at  TEXT
);
CREATE INDEX tasks_user ON tasks (user_id, created_at);

-- Human input to a task (answers, plan reviews, retry, cancel), stored before it is signalled.
CREATE TABLE task_inputs (
    id         TEXT PRIMARY KEY NOT NULL,
    task_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX task_inputs_task ON task_inputs (task_id, created_at);

-- One row per job run: what it did and what it cost.
CREATE TABLE task_runs (
    task_id       TEXT NOT NULL,
    job           TEXT NOT NULL,
    mode          TEXT NOT NULL,
    status        TEXT NOT NULL,
    summary       TEXT NOT NULL DEFAULT '',
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL NOT NULL DEFAULT 0,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    PRIMARY KEY (task_id, job)
);

-- Job output, numbered per job so a re-attached job's replayed lines are stored once.
CREATE TABLE task_logs (
    task_id    TEXT NOT NULL,
    job        TEXT NOT NULL,
    line       INTEGER NOT NULL,
    source     TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, job, line)
);

-- Large texts a task's steps hand to each other (CI failure logs, review feedback), kept out
-- of workflow histories.
CREATE TABLE task_artifacts (
    task_id    TEXT NOT NULL,
    key        TEXT NOT NULL,
    content    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
);

-- What needs the user, or tells them something. The id is deterministic per task and
-- occasion, so a retried activity raises an item once.
CREATE TABLE inbox_items (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    task_id     TEXT,
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL DEFAULT '',
    url         TEXT,
    unread      INTEGER NOT NULL DEFAULT 1,
    resolved    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    resolved_at TEXT
);
CREATE INDEX inbox_user ON inbox_items (user_id, resolved, created_at);

-- Repositories a user works on, most recently used first.
CREATE TABLE projects (
    user_id      TEXT NOT NULL,
    repo         TEXT NOT NULL,
    task_count   INTEGER NOT NULL DEFAULT 0,
    last_used_at TEXT NOT NULL,
    PRIMARY KEY (user_id, repo)
);

ALTER TABLE messages ADD COLUMN cache_tokens INTEGER;
ALTER TABLE messages ADD COLUMN cost_usd REAL;
