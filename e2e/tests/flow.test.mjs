// The whole product through the UI, at desktop and phone size: chat → streamed reply →
// proposal → confirm → questions → plan review → CI fix → PR ready → merged.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
	STEP,
	answerQuestions,
	approvePlan,
	inboxItem,
	say,
	showChat,
	showInbox,
	waitForReplies
} from '../lib/app.mjs';
import { DESKTOP, PHONE, newPage, openBrowser, screenshot } from '../lib/browser.mjs';
import { startDemo } from '../lib/stack.mjs';

for (const size of [DESKTOP, PHONE]) {
	describe(`the whole flow at ${size.name} size`, () => {
		let stack;
		let browser;
		before(async () => {
			stack = await startDemo();
			browser = await openBrowser();
		});
		after(async () => {
			await browser?.close();
			await stack?.stop();
		});

		test('a change goes from the chat to a merged PR, all through the UI', async () => {
			const { page, errors } = await newPage(browser, size, stack.url);
			await page.goto('/');
			await page.getByTestId('thread').waitFor({ timeout: STEP });
			await screenshot(page, size, 'chat-empty');

			// A streamed reply: its text grows in place before it is complete.
			await say(page, 'Hello! What can you do?');
			const first = await waitForReplies(page, 1);
			assert.match(await first.textContent(), /demo\/hello/);
			await screenshot(page, size, 'chat-reply');

			await say(page, 'Please add a greeting to demo/hello');
			await waitForReplies(page, 2);
			const card = page.getByTestId('proposal-card').last();
			await card.waitFor({ timeout: STEP });
			assert.match(await card.textContent(), /Add a greeting/);
			await screenshot(page, size, 'proposal');
			await card.getByRole('button', { name: 'Confirm', exact: true }).click();
			await card.getByRole('link', { name: /View task/ }).waitFor({ timeout: STEP });
			const taskHref = await card.getByRole('link', { name: /View task/ }).getAttribute('href');
			assert.match(taskHref ?? '', /^\/tasks\//);

			// The agent asks first; answer in the inbox's wizard.
			await showInbox(page, size);
			const questions = await inboxItem(page, 'questions');
			await screenshot(page, size, 'inbox-questions');
			await answerQuestions(page, questions);

			// Then it plans with the answers; approve the plan.
			const review = await inboxItem(page, 'plan_review');
			await screenshot(page, size, 'inbox-plan-review');
			await approvePlan(page, review);

			// Implementation, one failed CI run and its fix, then the PR is ready.
			await inboxItem(page, 'ready_for_review');
			await screenshot(page, size, 'inbox-pr-ready');

			// The demo merges the PR; the task page shows it done, with the CI fix counted.
			await page.goto(taskHref);
			const status = page.getByTestId('task-header').getByTestId('task-status');
			await status.filter({ hasText: 'Merged' }).waitFor({ timeout: STEP });
			assert.match(await page.getByTestId('ci-fixes').textContent(), /1/);
			// What the user told the task is said back: the answers, then the approval.
			const given = await page.getByTestId('task-input').allTextContents();
			assert.equal(given.length, 2, given.join(' | '));
			assert.match(given[0], /Answered 2 questions/);
			assert.match(given[1], /Approved the plan/);
			await screenshot(page, size, 'task-merged');

			await showChat(page, size).catch(async () => {
				await page.goto('/');
				await page.getByTestId('thread').waitFor({ timeout: STEP });
			});
			await page.getByTestId('task-note').filter({ hasText: /merged/i }).first().waitFor({ timeout: STEP });
			await screenshot(page, size, 'chat-after');
			assert.deepEqual(errors, [], 'the page logged errors');
		});
	});
}
