// What a user does in the app, as steps the tests share: post in the chat, open the inbox,
// answer questions, review a plan. Selectors are roles and accessible names first, test ids
// where a role is not enough.

import assert from 'node:assert/strict';

export const STEP = 120_000;

/** Posts `text` through the composer with Enter, as a user types it. */
export async function say(page, text) {
	const box = page.getByRole('textbox', { name: 'Message' });
	await box.fill(text);
	await box.press('Enter');
}

/** The assistant messages of the thread. */
export function assistantMessages(page) {
	return page.locator('[data-testid="message"][data-role="assistant"]');
}

/** Waits until the assistant has answered `count` times in all, every reply complete (no
 * longer streaming), and returns the last one. */
export async function waitForReplies(page, count) {
	const replies = assistantMessages(page);
	await page.waitForFunction(
		(n) => {
			const replies = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
			return (
				replies.length >= n &&
				!document.querySelector('[data-testid="awaiting-reply"]') &&
				[...replies].every((reply) => reply.getAttribute('aria-busy') !== 'true')
			);
		},
		count,
		{ timeout: STEP }
	);
	return replies.last();
}

/** On a phone, switches to the inbox tab; on a desktop the inbox is always beside the chat. */
export async function showInbox(page, size) {
	if (size.isMobile) {
		await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: /Inbox/ }).click();
	}
	const inbox = page.getByTestId('inbox');
	await inbox.waitFor({ timeout: STEP });
	return inbox;
}

/** On a phone, switches back to the chat tab. */
export async function showChat(page, size) {
	if (size.isMobile) {
		await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: /Chat/ }).click();
	}
	await page.getByTestId('thread').waitFor({ timeout: STEP });
}

/** The open inbox item of `kind`, once it appears. */
export async function inboxItem(page, kind) {
	const item = page.locator(`[data-testid="inbox-item"][data-kind="${kind}"]`).first();
	await item.waitFor({ timeout: STEP });
	return item;
}

/** Answers every question of the wizard with its first option (all of them when several can be chosen). */
export async function answerQuestions(page, item) {
	await item.getByRole('button', { name: 'Answer' }).click();
	const wizard = item.getByTestId('questions-wizard');
	await wizard.waitFor();
	for (let step = 0; step < 10; step++) {
		const options = wizard.locator('input[type="radio"], input[type="checkbox"]');
		await options.first().check();
		const next = wizard.getByRole('button', { name: /^(Next|Review answers)/ });
		const label = (await next.textContent())?.trim() ?? '';
		await next.click();
		if (label.startsWith('Review answers')) break;
	}
	const answers = await wizard.getByTestId('review-answer').allTextContents();
	assert.ok(answers.length >= 1, 'the wizard shows the answers before sending');
	await wizard.getByRole('button', { name: 'Send answers' }).click();
}

/** Opens the plan review of `item` and approves the plan. */
export async function approvePlan(page, item) {
	await item.getByRole('button', { name: 'Review plan' }).click();
	const review = item.getByTestId('plan-review');
	await review.waitFor();
	await review.getByRole('button', { name: 'Approve plan' }).click();
}
