// The message being written: kept in localStorage so a reload loses nothing, with the
// Idempotency-Key of its send. The key belongs to the exact text it was first sent with, so
// retrying the same text cannot post it twice, and an edited text gets a new key (reusing a
// key for other content is refused by the server).

const KEY = 'mainloop.draft';

export interface Draft {
	text: string;
	/** Set once the text has been sent at least once. */
	key?: string;
	keyText?: string;
}

function storage(): Storage | undefined {
	try {
		return globalThis.localStorage;
	} catch {
		return undefined; // storage disabled: drafts last as long as the page
	}
}

export function loadDraft(): Draft {
	try {
		const raw = storage()?.getItem(KEY);
		const draft = raw ? (JSON.parse(raw) as Partial<Draft>) : {};
		return typeof draft.text === 'string' ? (draft as Draft) : { text: '' };
	} catch {
		return { text: '' };
	}
}

export function saveDraft(draft: Draft) {
	try {
		if (draft.text === '' && !draft.key) storage()?.removeItem(KEY);
		else storage()?.setItem(KEY, JSON.stringify(draft));
	} catch {
		// Full or disabled storage: the draft still lives in the page.
	}
}

export function newKey(): string {
	const random =
		globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`.replace('.', '');
	return `web-${random}`;
}

/** The draft with the key to send `text` with: the same one as before for the same text. */
export function keyFor(draft: Draft, text: string): Draft {
	if (draft.key && draft.keyText === text) return draft;
	return { ...draft, key: newKey(), keyText: text };
}
