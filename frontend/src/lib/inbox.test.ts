import { describe, expect, it } from 'vitest';
import type { InboxItem, Task } from './api/types';
import { groupInbox, unreadCount, upsertItem } from './inbox';

const NOW = Date.parse('2025-06-10T12:00:00Z');
const at = (hoursAgo: number) => new Date(NOW - hoursAgo * 3600_000).toISOString();

function item(
	id: string,
	kind: InboxItem['kind'],
	hoursAgo: number,
	extra: Partial<InboxItem> = {}
): InboxItem {
	return {
		id,
		kind,
		task_id: 't-' + id,
		title: id,
		body: '',
		unread: true,
		resolved: kind === 'done',
		created_at: at(hoursAgo),
		updated_at: at(hoursAgo),
		...extra
	};
}

function task(id: string, status: Task['status'], hoursAgo: number): Task {
	return {
		id,
		proposal_id: 'p-' + id,
		title: id,
		description: '',
		repo: 'acme/web',
		skip_planning: false,
		status,
		detail: '',
		questions: [],
		ci_fixes: 0,
		ci_attempts: 0,
		budget: {},
		cost: { input_tokens: 0, output_tokens: 0, cache_tokens: 0, cost_usd: 0 },
		created_at: at(hoursAgo),
		updated_at: at(hoursAgo)
	};
}

describe('groupInbox', () => {
	it('puts what needs you first: questions, plans, budgets, failures, then PRs, newest first', () => {
		const items = [
			item('pr', 'ready_for_review', 1),
			item('budget', 'budget', 7),
			item('failed-old', 'failed', 9),
			item('plan', 'plan_review', 5),
			item('failed-new', 'failed', 2),
			item('q', 'questions', 8),
			item('answered', 'questions', 0.5, { resolved: true })
		];
		const groups = groupInbox(items, [], NOW);
		expect(groups.needsYou.map((i) => i.id)).toEqual([
			'q',
			'plan',
			'budget',
			'failed-new',
			'failed-old',
			'pr'
		]);
		expect(groups.history.map((i) => i.id)).toEqual(['answered']);
	});

	it('lists working tasks, most recently active first, and leaves waiting ones to their items', () => {
		const tasks = [
			task('a', 'implementing', 3),
			task('b', 'ci', 1),
			task('c', 'waiting_questions', 0),
			task('d', 'merged', 0),
			task('e', 'planning', 2)
		];
		expect(groupInbox([], tasks, NOW).working.map((t) => t.id)).toEqual(['b', 'e', 'a']);
	});

	it('keeps recent finished tasks in done and the rest in history', () => {
		const items = [
			item('new', 'done', 1),
			item('old', 'done', 24 * 7),
			...Array.from({ length: 9 }, (_, i) => item(`d${i}`, 'done', 2 + i))
		];
		const groups = groupInbox(items, [], NOW);
		expect(groups.done.map((i) => i.id)).toEqual(['new', 'd0', 'd1', 'd2', 'd3', 'd4', 'd5', 'd6']);
		expect(groups.history.map((i) => i.id)).toEqual(['d7', 'd8', 'old']);
	});

	it('counts unread items and ignores replayed older copies', () => {
		const fresh = item('x', 'failed', 1, { unread: false, updated_at: at(0) });
		let items = [fresh];
		items = upsertItem(items, item('x', 'failed', 1));
		expect(items).toEqual([fresh]);
		items = upsertItem(items, item('y', 'questions', 1));
		expect(unreadCount(items)).toBe(1);
	});
});
