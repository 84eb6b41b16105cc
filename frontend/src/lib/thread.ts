// The chat thread as events change it. Plain functions on a plain object, so that the
// reactive state (state/chat.svelte.ts) and the tests share them.
import type {
	Message,
	MessageDelta,
	MessageStarted,
	MessageWaiting,
	ModelLimit,
	Proposal
} from './api/types';

export interface Thread {
	/** Oldest first, by `seq`. */
	messages: Message[];
	/** The attempt each streaming reply is on: text of older attempts is dropped. */
	attempts: Record<string, number>;
	/** Replies waiting for the model's rate limit to reset, by message id. */
	waiting: Record<string, MessageWaiting>;
}

export function emptyThread(): Thread {
	return { messages: [], attempts: {}, waiting: {} };
}

function indexOf(thread: Thread, id: string): number {
	return thread.messages.findIndex((m) => m.id === id);
}

/** Adds or replaces a message, keeping `seq` order. A complete message is never taken back
 * to streaming by an older copy of it. */
export function upsertMessage(thread: Thread, message: Message) {
	const at = indexOf(thread, message.id);
	if (at !== -1) {
		const existing = thread.messages[at]!;
		if (existing.status === 'complete' && message.status === 'streaming') return;
		thread.messages[at] = message;
		return;
	}
	let insertAt = thread.messages.length;
	while (insertAt > 0 && thread.messages[insertAt - 1]!.seq > message.seq) insertAt--;
	thread.messages.splice(insertAt, 0, message);
}

/** Merges a page of older (or any) messages. */
export function addPage(thread: Thread, messages: Message[]) {
	for (const message of messages) upsertMessage(thread, message);
}

export function applyStarted(thread: Thread, started: MessageStarted) {
	const current = thread.attempts[started.message_id] ?? 0;
	if (started.attempt < current) return;
	const existing = thread.messages[indexOf(thread, started.message_id)];
	if (existing?.status === 'complete') return;
	thread.attempts[started.message_id] = started.attempt;
	if ((thread.waiting[started.message_id]?.attempt ?? 0) < started.attempt) {
		delete thread.waiting[started.message_id];
	}
	// A new attempt starts from nothing.
	upsertMessage(thread, { ...started.message, content: '', status: 'streaming' });
}

export function applyDelta(thread: Thread, delta: MessageDelta) {
	const current = thread.attempts[delta.message_id] ?? 0;
	if (delta.attempt < current) return;
	const message = thread.messages[indexOf(thread, delta.message_id)];
	if (!message || message.status === 'complete') return;
	// Text flows again: the limit has reset.
	delete thread.waiting[delta.message_id];
	if (delta.attempt > current) {
		thread.attempts[delta.message_id] = delta.attempt;
		message.content = '';
	}
	message.content += delta.text;
}

/** A reply waits for the model's rate limit to reset; its next text ends the wait. */
export function applyWaiting(thread: Thread, waiting: MessageWaiting) {
	if (waiting.attempt < (thread.attempts[waiting.message_id] ?? 0)) return;
	const message = thread.messages[indexOf(thread, waiting.message_id)];
	if (!message || message.status === 'complete') return;
	thread.waiting[waiting.message_id] = waiting;
}

/** A page read while the model's rate limit holds replies back: its streaming replies wait
 * for it (the `message.waiting` events that said so came before the page). */
export function applyModelLimit(thread: Thread, limit: ModelLimit) {
	for (const message of thread.messages) {
		if (message.status !== 'streaming' || thread.waiting[message.id]) continue;
		thread.waiting[message.id] = {
			message_id: message.id,
			attempt: thread.attempts[message.id] ?? 0,
			until: limit.until,
			reason: limit.reason
		};
	}
}

export function applyCompleted(thread: Thread, message: Message) {
	delete thread.attempts[message.id];
	delete thread.waiting[message.id];
	upsertMessage(thread, message);
}

export function applyProposal(thread: Thread, proposal: Proposal) {
	const message = thread.messages[indexOf(thread, proposal.message_id)];
	if (!message) return;
	const at = message.proposals.findIndex((p) => p.id === proposal.id);
	if (at === -1) message.proposals.push(proposal);
	else message.proposals[at] = proposal;
}

/** The user message still waiting for the start of its reply, if the newest is one. */
export function awaitingReply(thread: Thread): Message | undefined {
	const last = thread.messages.at(-1);
	return last && last.role === 'user' ? last : undefined;
}
