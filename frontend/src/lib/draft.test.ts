import { beforeEach, describe, expect, it } from 'vitest';
import { keyFor, loadDraft, saveDraft } from './draft';

describe('draft', () => {
	beforeEach(() => localStorage.clear());

	it('survives a reload', () => {
		saveDraft({ text: 'half a thought' });
		expect(loadDraft()).toEqual({ text: 'half a thought' });
		saveDraft({ text: '' });
		expect(loadDraft()).toEqual({ text: '' });
	});

	it('retries the same text with the same key, and edited text with a new one', () => {
		const first = keyFor({ text: 'hello' }, 'hello');
		saveDraft(first);
		const retried = keyFor(loadDraft(), 'hello');
		expect(retried.key).toBe(first.key);
		expect(retried.key).toMatch(/^[A-Za-z0-9._:-]{1,200}$/);
		const edited = keyFor(retried, 'hello!');
		expect(edited.key).not.toBe(first.key);
	});
});
