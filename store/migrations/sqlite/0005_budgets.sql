-- Per-task budgets: the limits the task's workflow enforces (NULL: no limit), and the CI fix
-- jobs it ran over its whole life (ci_fixes counts only the current CI phase).
ALTER TABLE tasks ADD COLUMN max_tokens INTEGER;
ALTER TABLE tasks ADD COLUMN max_cost_usd REAL;
ALTER TABLE tasks ADD COLUMN max_ci_attempts INTEGER;
ALTER TABLE tasks ADD COLUMN ci_attempts INTEGER NOT NULL DEFAULT 0;
