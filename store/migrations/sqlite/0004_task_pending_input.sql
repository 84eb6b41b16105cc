-- The kind of human input (answers, plan_review, retry, cancel) accepted for a task since it
-- last changed status: the task has not acted on it yet, so a second input for the same wait
-- is refused instead of being accepted and then dropped by the workflow as stale.
ALTER TABLE tasks ADD COLUMN pending_input TEXT;
