// How the inbox is grouped and ordered: what needs you first (questions and plan reviews
// before budgets reached before failures before PRs ready, newest first within each), then the tasks at work, then
// what finished recently, then the rest as history.
import type { InboxItem, InboxKind, Task, TaskStatus } from './api/types';

export const NEEDS_YOU: InboxKind[] = [
	'questions',
	'plan_review',
	'budget',
	'failed',
	'ready_for_review'
];

/** Statuses in which a task is busy on its own, with nothing asked of the user. */
export const WORKING: TaskStatus[] = [
	'pending',
	'planning',
	'implementing',
	'ci',
	'addressing_feedback'
];

/** How long a finished task counts as "recent". */
export const RECENT_MS = 3 * 24 * 3600 * 1000;
export const RECENT_MAX = 8;

export interface InboxGroups {
	needsYou: InboxItem[];
	working: Task[];
	done: InboxItem[];
	history: InboxItem[];
}

const newestFirst = (a: { created_at: string }, b: { created_at: string }) =>
	Date.parse(b.created_at) - Date.parse(a.created_at);

export function groupInbox(items: InboxItem[], tasks: Task[], now = Date.now()): InboxGroups {
	const needsYou = items
		.filter((item) => !item.resolved && NEEDS_YOU.includes(item.kind))
		.sort((a, b) => NEEDS_YOU.indexOf(a.kind) - NEEDS_YOU.indexOf(b.kind) || newestFirst(a, b));
	const working = tasks
		.filter((task) => WORKING.includes(task.status))
		.sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at));
	const settled = items.filter((item) => !needsYou.includes(item)).sort(newestFirst);
	const done: InboxItem[] = [];
	const history: InboxItem[] = [];
	for (const item of settled) {
		const recent = now - Date.parse(item.updated_at) < RECENT_MS;
		if (item.kind === 'done' && recent && done.length < RECENT_MAX) done.push(item);
		else history.push(item);
	}
	return { needsYou, working, done, history };
}

export function unreadCount(items: InboxItem[]): number {
	return items.filter((item) => item.unread).length;
}

/** Replaces an item with a newer copy of it (events may replay older copies). */
export function upsertItem(items: InboxItem[], item: InboxItem): InboxItem[] {
	const at = items.findIndex((i) => i.id === item.id);
	if (at === -1) return [...items, item];
	if (Date.parse(items[at]!.updated_at) > Date.parse(item.updated_at)) return items;
	const next = items.slice();
	next[at] = item;
	return next;
}
