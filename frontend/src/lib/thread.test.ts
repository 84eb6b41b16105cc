import { describe, expect, it } from 'vitest';
import type { Message } from './api/types';
import {
	addPage,
	applyCompleted,
	applyDelta,
	applyModelLimit,
	applyProposal,
	applyStarted,
	applyWaiting,
	emptyThread,
	upsertMessage
} from './thread';

function message(id: string, seq: number, extra: Partial<Message> = {}): Message {
	return {
		id,
		seq,
		role: 'assistant',
		kind: 'chat',
		content: '',
		status: 'complete',
		created_at: '2025-01-01T00:00:00Z',
		proposals: [],
		...extra
	};
}

describe('thread', () => {
	it('keeps messages in seq order whatever order they arrive in, once each', () => {
		const thread = emptyThread();
		upsertMessage(thread, message('c', 3));
		addPage(thread, [message('a', 1), message('b', 2), message('c', 3)]);
		upsertMessage(thread, message('d', 4));
		expect(thread.messages.map((m) => m.id)).toEqual(['a', 'b', 'c', 'd']);
	});

	it('streams a reply, and a new attempt replaces the text of the old one', () => {
		const thread = emptyThread();
		const reply = message('r', 2, { status: 'streaming', reply_to: 'u' });
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 1, message: reply });
		applyDelta(thread, { message_id: 'r', attempt: 1, text: 'Hel' });
		applyDelta(thread, { message_id: 'r', attempt: 1, text: 'lo' });
		expect(thread.messages[0]?.content).toBe('Hello');
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 2, message: reply });
		expect(thread.messages[0]?.content).toBe('');
		// A late delta of the first attempt is ignored.
		applyDelta(thread, { message_id: 'r', attempt: 1, text: 'stale' });
		applyDelta(thread, { message_id: 'r', attempt: 2, text: 'Hi' });
		expect(thread.messages[0]?.content).toBe('Hi');
		applyCompleted(thread, message('r', 2, { content: 'Hi there', reply_to: 'u' }));
		expect(thread.messages[0]).toMatchObject({ content: 'Hi there', status: 'complete' });
		// Nothing takes a complete message back to streaming.
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 3, message: reply });
		applyDelta(thread, { message_id: 'r', attempt: 3, text: 'x' });
		upsertMessage(thread, reply);
		expect(thread.messages[0]).toMatchObject({ content: 'Hi there', status: 'complete' });
	});

	it('shows the replies of a page read during a rate limit waiting, until their text flows', () => {
		const thread = emptyThread();
		addPage(thread, [
			message('done', 1, { content: 'Hi' }),
			message('r', 2, { status: 'streaming', reply_to: 'u' })
		]);
		const limit = { until: '2026-01-01T00:00:30Z', reason: '429 rate_limit_error' };
		applyModelLimit(thread, limit);
		expect(Object.keys(thread.waiting)).toEqual(['r']);
		expect(thread.waiting['r']).toMatchObject({ attempt: 0, ...limit });
		// Whatever attempt the reply is on when it goes on, its text ends the wait.
		applyDelta(thread, { message_id: 'r', attempt: 2, text: 'Hello' });
		expect(thread.waiting['r']).toBeUndefined();
	});

	it('shows a reply waiting for the rate limit until its text flows again', () => {
		const thread = emptyThread();
		const reply = message('r', 2, { status: 'streaming', reply_to: 'u' });
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 1, message: reply });
		const wait = { until: '2026-01-01T00:00:30Z', reason: '429 rate_limit_error' };
		applyWaiting(thread, { message_id: 'r', attempt: 1, ...wait });
		expect(thread.waiting['r']?.until).toBe(wait.until);
		// Text of the same attempt ends the wait.
		applyDelta(thread, { message_id: 'r', attempt: 1, text: 'Hi' });
		expect(thread.waiting['r']).toBeUndefined();
		// A wait of a newer attempt shows; a newer attempt's start clears an older wait only.
		applyWaiting(thread, { message_id: 'r', attempt: 2, ...wait });
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 2, message: reply });
		expect(thread.waiting['r']?.attempt).toBe(2);
		applyStarted(thread, { message_id: 'r', reply_to: 'u', attempt: 3, message: reply });
		expect(thread.waiting['r']).toBeUndefined();
		// A stale attempt's wait, or one for a complete reply, is ignored.
		applyWaiting(thread, { message_id: 'r', attempt: 2, ...wait });
		expect(thread.waiting['r']).toBeUndefined();
		applyWaiting(thread, { message_id: 'r', attempt: 3, ...wait });
		applyCompleted(thread, message('r', 2, { content: 'Hi', reply_to: 'u' }));
		expect(thread.waiting['r']).toBeUndefined();
		applyWaiting(thread, { message_id: 'r', attempt: 3, ...wait });
		expect(thread.waiting['r']).toBeUndefined();
	});

	it('adds and updates proposals on their message', () => {
		const thread = emptyThread();
		upsertMessage(thread, message('r', 1));
		const proposal = {
			id: 'p',
			message_id: 'r',
			title: 'T',
			description: 'D',
			repo: 'a/b',
			skip_planning: false,
			status: 'pending' as const,
			created_at: '2025-01-01T00:00:00Z'
		};
		applyProposal(thread, proposal);
		applyProposal(thread, { ...proposal, status: 'confirmed' });
		expect(thread.messages[0]?.proposals).toEqual([{ ...proposal, status: 'confirmed' }]);
	});
});
