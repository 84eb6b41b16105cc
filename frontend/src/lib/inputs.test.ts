import { describe, expect, it } from 'vitest';

import type { TaskInputRecord } from './api/types';
import { describeInput } from './inputs';

const input = (kind: string, payload: unknown): TaskInputRecord => ({
	id: 'in-1',
	kind,
	payload: payload as Record<string, never>,
	created_at: '2026-11-21T10:00:00Z'
});

describe('describeInput', () => {
	it('says answers back with their questions', () => {
		const line = describeInput(
			input('answers', {
				id: 'in-1',
				answers: [
					{ question_id: 'placement', answer: 'A new module' },
					{ question_id: 'error-handling', answer: 'Retry' }
				]
			})
		);
		expect(line.title).toBe('Answered 2 questions');
		expect(line.details).toEqual(['Placement: A new module', 'Error handling: Retry']);
	});

	it('says plan reviews, retries and cancels', () => {
		expect(describeInput(input('plan_review', { action: 'approve' })).title).toBe(
			'Approved the plan'
		);
		expect(describeInput(input('plan_review', { action: 'revise', text: 'Use tabs' }))).toEqual({
			title: 'Asked for changes to the plan',
			details: ['Use tabs']
		});
		expect(describeInput(input('retry', {})).title).toBe('Retried the failed step');
		expect(describeInput(input('cancel', { reason: 'not needed' })).details).toEqual([
			'not needed'
		]);
	});
});
