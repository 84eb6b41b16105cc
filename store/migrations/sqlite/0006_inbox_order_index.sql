-- The inbox lists open items first, newest first (ORDER BY resolved, created_at DESC, id).
-- The old index's all-ascending order could not serve that mixed order, so every request
-- sorted all of a user's items; this one is read in order and stops at the LIMIT.
DROP INDEX inbox_user;
CREATE INDEX inbox_user_order ON inbox_items (user_id, resolved, created_at DESC, id);
