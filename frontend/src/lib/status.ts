// What each task status is called and how it looks.
import type { InboxKind, Task, TaskStatus } from './api/types';

export type Tone = 'neutral' | 'active' | 'attention' | 'danger' | 'success';

export const STATUS: Record<TaskStatus, { label: string; tone: Tone }> = {
	pending: { label: 'Starting', tone: 'active' },
	planning: { label: 'Planning', tone: 'active' },
	waiting_questions: { label: 'Has questions', tone: 'attention' },
	waiting_plan_review: { label: 'Plan to review', tone: 'attention' },
	implementing: { label: 'Implementing', tone: 'active' },
	ci: { label: 'Waiting for CI', tone: 'active' },
	ready_for_review: { label: 'PR ready', tone: 'success' },
	addressing_feedback: { label: 'Addressing feedback', tone: 'active' },
	merged: { label: 'Merged', tone: 'success' },
	closed: { label: 'Closed', tone: 'neutral' },
	failed: { label: 'Failed', tone: 'danger' },
	cancelled: { label: 'Cancelled', tone: 'neutral' },
	waiting_budget: { label: 'Budget reached', tone: 'attention' }
};

export const INBOX_KIND: Record<InboxKind, { label: string; tone: Tone }> = {
	questions: { label: 'Questions', tone: 'attention' },
	plan_review: { label: 'Plan review', tone: 'attention' },
	failed: { label: 'Failed', tone: 'danger' },
	ready_for_review: { label: 'PR ready', tone: 'success' },
	done: { label: 'Done', tone: 'neutral' },
	budget: { label: 'Budget', tone: 'attention' }
};

export const TONE_CLASSES: Record<Tone, string> = {
	neutral: 'bg-stone-100 text-stone-600 dark:bg-stone-800 dark:text-stone-300',
	active: 'bg-sky-50 text-sky-700 dark:bg-sky-950 dark:text-sky-300',
	attention: 'bg-amber-50 text-amber-800 dark:bg-amber-950 dark:text-amber-300',
	danger: 'bg-red-50 text-red-700 dark:bg-red-950 dark:text-red-300',
	success: 'bg-emerald-50 text-emerald-700 dark:bg-emerald-950 dark:text-emerald-300'
};

/** The task is over: nothing more will happen to it. */
export function isOver(status: TaskStatus): boolean {
	return status === 'merged' || status === 'closed' || status === 'cancelled';
}

/**
 * CI fix jobs so far, against the task's CI-attempts budget when it has one ("3 of 5"); a
 * task without one is limited per CI phase by the worker's MAINLOOP_MAX_CI_FIXES, which the
 * API does not show, so only this phase's count is given.
 */
export function ciFixes(task: Task): string {
	const limit = task.budget.max_ci_attempts;
	return limit != null ? `${task.ci_attempts} of ${limit}` : `${task.ci_fixes} this CI phase`;
}

/** Tokens a task has spent, counted as its budget counts them. */
export function spentTokens(task: Task): number {
	return task.cost.input_tokens + task.cost.output_tokens + task.cost.cache_tokens;
}

/** One line of a task's budget: what it spent of what it may. */
export interface BudgetLine {
	key: 'tokens' | 'cost' | 'ci';
	label: string;
	spent: number;
	limit: number | null;
	/** The limit is reached: the task pauses (CI attempts: before its next fix). */
	reached: boolean;
}

export function budgetLines(task: Task): BudgetLine[] {
	const b = task.budget;
	const tokens = spentTokens(task);
	return [
		{
			key: 'tokens',
			label: 'Tokens',
			spent: tokens,
			limit: b.max_tokens ?? null,
			reached: b.max_tokens != null && tokens >= b.max_tokens
		},
		{
			key: 'cost',
			label: 'Cost',
			spent: task.cost.cost_usd,
			limit: b.max_cost_usd ?? null,
			reached: b.max_cost_usd != null && task.cost.cost_usd >= b.max_cost_usd
		},
		{
			key: 'ci',
			label: 'CI fix attempts',
			spent: task.ci_attempts,
			limit: b.max_ci_attempts ?? null,
			reached: b.max_ci_attempts != null && task.ci_attempts >= b.max_ci_attempts
		}
	];
}
