-- GitHub webhook deliveries already taken, by GitHub's delivery id: a redelivered or
-- replayed delivery is acknowledged and changes nothing.
CREATE TABLE webhook_deliveries (
    id          TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
