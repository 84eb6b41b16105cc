import { flushSync, mount, unmount } from 'svelte';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Proposal } from '$lib/api/types';
import ProposalCard from './ProposalCard.svelte';

const proposal: Proposal = {
	id: 'p1',
	message_id: 'm1',
	title: 'Add dark mode',
	description: 'Follow the **system** theme.',
	repo: 'acme/web',
	skip_planning: false,
	status: 'pending',
	created_at: '2025-01-01T00:00:00Z'
};

const task = {
	id: 't1',
	proposal_id: 'p1',
	title: proposal.title,
	description: proposal.description,
	repo: 'acme/site',
	skip_planning: false,
	status: 'pending',
	detail: '',
	questions: [],
	ci_fixes: 0,
	ci_attempts: 0,
	budget: {},
	cost: { input_tokens: 0, output_tokens: 0, cache_tokens: 0, cost_usd: 0 },
	created_at: '2025-01-01T00:00:00Z',
	updated_at: '2025-01-01T00:00:00Z'
};

async function settle() {
	for (let i = 0; i < 10; i++) await Promise.resolve();
	flushSync();
}

describe('ProposalCard', () => {
	let component: ReturnType<typeof mount> | undefined;
	afterEach(() => {
		if (component) unmount(component);
		document.body.innerHTML = '';
		vi.unstubAllGlobals();
	});

	it('shows why a repository was refused, in place, and confirms with the change', async () => {
		const requests: { url: string; body: unknown }[] = [];
		vi.stubGlobal(
			'fetch',
			vi.fn(async (url: string, init: RequestInit) => {
				requests.push({ url, body: JSON.parse(String(init.body)) });
				if (requests.length === 1) {
					return new Response(
						JSON.stringify({
							error: { code: 'invalid_repo', message: 'the repository acme/web does not exist' }
						}),
						{ status: 422, headers: { 'content-type': 'application/json' } }
					);
				}
				return new Response(
					JSON.stringify({ proposal: { ...proposal, status: 'confirmed' }, task }),
					{ status: 202 }
				);
			})
		);
		component = mount(ProposalCard, { target: document.body, props: { proposal } });
		const button = (name: string) =>
			[...document.querySelectorAll('button')].find((b) => b.textContent?.trim().startsWith(name));

		button('Confirm')!.click();
		await settle();
		expect(requests[0]).toEqual({ url: '/api/proposals/p1/confirm', body: {} });
		const alert = document.querySelector('[data-testid=repo-error]');
		expect(alert?.textContent).toContain('does not exist');
		// The card opened its editor on the repository field.
		const repo = document.querySelector<HTMLInputElement>('input[aria-invalid=true]')!;
		expect(repo.value).toBe('acme/web');

		repo.value = 'acme/site';
		repo.dispatchEvent(new Event('input'));
		flushSync();
		button('Confirm with changes')!.click();
		await settle();
		expect(requests[1]).toEqual({ url: '/api/proposals/p1/confirm', body: { repo: 'acme/site' } });
		expect(document.querySelector('[role=alert]')).toBeNull();
		// The editor closed; the card waits for proposal.updated to say "confirmed".
		expect(document.querySelector('input')).toBeNull();
	});

	it('renders the description as sanitised markdown', () => {
		component = mount(ProposalCard, {
			target: document.body,
			props: { proposal: { ...proposal, description: 'x <img src=x onerror="alert(1)"> **y**' } }
		});
		expect(document.querySelector('strong')?.textContent).toBe('y');
		expect(document.querySelector('img')).toBeNull();
	});
});
