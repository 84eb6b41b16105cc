-- Rate limits an outside API announced (a 429 and its retry-after), by scope (e.g. the
-- model's API). Shared by every worker: once one of them is told to wait, none of them calls
-- again before `until_ms` (milliseconds since the Unix epoch). Only ever extended, never
-- shortened, so racing workers cannot undo each other's block.
CREATE TABLE rate_limits (
    scope      TEXT PRIMARY KEY,
    until_ms   BIGINT NOT NULL,
    reason     TEXT NOT NULL
);
