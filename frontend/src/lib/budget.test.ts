import { describe, expect, it } from 'vitest';
import type { Task } from './api/types';
import { budgetLines, ciFixes } from './status';

function task(overrides: Partial<Task>): Task {
	return {
		id: 't',
		proposal_id: 't',
		title: 't',
		description: '',
		repo: 'acme/web',
		skip_planning: false,
		status: 'waiting_budget',
		detail: '',
		questions: [],
		ci_fixes: 0,
		ci_attempts: 0,
		budget: {},
		cost: { input_tokens: 0, output_tokens: 0, cache_tokens: 0, cost_usd: 0 },
		created_at: '2025-01-01T00:00:00Z',
		updated_at: '2025-01-01T00:00:00Z',
		...overrides
	};
}

describe('budgetLines', () => {
	it('counts input, output and cache tokens against the limit, as the workflow does', () => {
		const lines = budgetLines(
			task({
				budget: { max_tokens: 1000, max_ci_attempts: 5 },
				cost: { input_tokens: 600, output_tokens: 300, cache_tokens: 100, cost_usd: 0.5 },
				ci_attempts: 2
			})
		);
		expect(lines.map((l) => [l.key, l.spent, l.limit, l.reached])).toEqual([
			['tokens', 1000, 1000, true],
			['cost', 0.5, null, false],
			['ci', 2, 5, false]
		]);
	});
});

describe('ciFixes', () => {
	it('counts against the CI-attempts budget, which is what stops the fixes', () => {
		expect(ciFixes(task({ budget: { max_ci_attempts: 6 }, ci_attempts: 5, ci_fixes: 2 }))).toBe(
			'5 of 6'
		);
	});

	it('names no limit it does not know for a task without a CI budget', () => {
		expect(ciFixes(task({ budget: {}, ci_attempts: 0, ci_fixes: 2 }))).toBe('2 this CI phase');
	});
});
