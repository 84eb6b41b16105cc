// The thread as the page shows it: loaded a page at a time backwards, kept current by
// events, and the draft being written with its sending state.
import { api, ApiError } from '$lib/api/client';
import type {
	Message,
	MessageDelta,
	MessageStarted,
	MessageWaiting,
	Proposal,
	ThreadNotice
} from '$lib/api/types';
import { keyFor, loadDraft, saveDraft, type Draft } from '$lib/draft';
import {
	addPage,
	applyCompleted,
	applyDelta,
	applyWaiting,
	applyModelLimit,
	applyProposal,
	applyStarted,
	upsertMessage,
	type Thread
} from '$lib/thread';

export interface Notice extends ThreadNotice {
	id: number;
	/** Shown after this message (the newest one when the notice came). */
	afterSeq: number;
}

class ChatState {
	thread: Thread = $state({ messages: [], attempts: {}, waiting: {} });
	/** Cursor of the next older page; null once the first message is loaded. */
	nextBefore: number | null = $state(null);
	loadingOlder = $state(false);
	olderError: string | null = $state(null);
	notices: Notice[] = $state([]);

	draft: Draft = $state({ text: '' });
	sending = $state(false);
	sendError: ApiError | null = $state(null);

	constructor() {
		if (typeof localStorage !== 'undefined') this.draft = loadDraft();
	}

	get messages(): Message[] {
		return this.thread.messages;
	}

	/** The newest page; returns the event id to follow the stream from. */
	async loadLatest(): Promise<number> {
		const page = await api.messages();
		this.thread.messages = [];
		this.thread.attempts = {};
		this.thread.waiting = {};
		addPage(this.thread, page.messages);
		if (page.model_limit) applyModelLimit(this.thread, page.model_limit);
		this.nextBefore = page.next_before ?? null;
		return page.last_event_id;
	}

	async loadOlder() {
		if (this.nextBefore === null || this.loadingOlder) return;
		this.loadingOlder = true;
		this.olderError = null;
		try {
			const page = await api.messages(this.nextBefore);
			addPage(this.thread, page.messages);
			this.nextBefore = page.next_before ?? null;
		} catch (error) {
			this.olderError = error instanceof Error ? error.message : String(error);
		} finally {
			this.loadingOlder = false;
		}
	}

	setDraft(text: string) {
		this.draft = { ...this.draft, text };
		if (this.sendError && this.draft.keyText !== text) this.sendError = null;
		saveDraft(this.draft);
	}

	/** Sends the draft; a failure keeps it, with its key, for a retry. */
	async send() {
		const text = this.draft.text;
		if (this.sending || text.trim() === '') return;
		this.draft = keyFor(this.draft, text);
		saveDraft(this.draft);
		this.sending = true;
		this.sendError = null;
		try {
			const message = await api.postMessage(text, this.draft.key!);
			upsertMessage(this.thread, message);
			// Typing may have gone on while sending; keep whatever is new.
			const after = this.draft.text === text ? '' : this.draft.text;
			this.draft = { text: after };
			saveDraft(this.draft);
		} catch (error) {
			this.sendError =
				error instanceof ApiError ? error : new ApiError(0, 'network', String(error));
		} finally {
			this.sending = false;
		}
	}

	onCreated(message: Message) {
		upsertMessage(this.thread, message);
	}
	onStarted(data: MessageStarted) {
		applyStarted(this.thread, data);
	}
	onDelta(data: MessageDelta) {
		applyDelta(this.thread, data);
	}
	onWaiting(data: MessageWaiting) {
		applyWaiting(this.thread, data);
	}
	onCompleted(message: Message) {
		applyCompleted(this.thread, message);
	}
	onProposal(proposal: Proposal) {
		applyProposal(this.thread, proposal);
	}
	onNotice(notice: ThreadNotice, id: number) {
		const afterSeq = this.thread.messages.at(-1)?.seq ?? 0;
		this.notices.push({ ...notice, id, afterSeq });
	}
	dismissNotice(id: number) {
		this.notices = this.notices.filter((n) => n.id !== id);
	}
}

export const chat = new ChatState();
