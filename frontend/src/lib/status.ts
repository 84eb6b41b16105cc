// What each task status is called and how it looks.
import type { InboxKind, TaskStatus } from './api/types';

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
	cancelled: { label: 'Cancelled', tone: 'neutral' }
};

export const INBOX_KIND: Record<InboxKind, { label: string; tone: Tone }> = {
	questions: { label: 'Questions', tone: 'attention' },
	plan_review: { label: 'Plan review', tone: 'attention' },
	failed: { label: 'Failed', tone: 'danger' },
	ready_for_review: { label: 'PR ready', tone: 'success' },
	done: { label: 'Done', tone: 'neutral' }
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

/** CI fix jobs per CI phase before a task fails (MAINLOOP_MAX_CI_FIXES, default 5). */
export const MAX_CI_FIXES = 5;
