// The app's promises besides the main flow, on one demo stack: the layout at both sizes, a
// dropped connection that loses and repeats nothing, hostile model text that stays inert, and
// no serious accessibility violation on the main screens.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';

import { STEP, say, showInbox, waitForReplies } from '../lib/app.mjs';
import { DESKTOP, PHONE, newPage, openBrowser, screenshot } from '../lib/browser.mjs';
import { startProxy } from '../lib/proxy.mjs';
import { startDemo } from '../lib/stack.mjs';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

describe('the app', () => {
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

	test('phone: a bottom tab bar with the chat first, 44 px targets, no sideways scrolling', async () => {
		const { page } = await newPage(browser, PHONE, stack.url);
		await page.goto('/');
		const tabs = page.getByRole('navigation', { name: 'Main' });
		await tabs.waitFor({ timeout: STEP });
		assert.ok(await tabs.isVisible(), 'the tab bar is visible');
		await page.getByTestId('thread').waitFor();
		assert.equal(new URL(page.url()).pathname, '/', 'the chat is the default tab');
		const box = await tabs.boundingBox();
		assert.ok(box.y + box.height >= PHONE.viewport.height - 1, 'the tab bar is at the bottom');
		for (const target of await tabs.locator('a, button').all()) {
			const { height } = await target.boundingBox();
			assert.ok(height >= 44, `${await target.textContent()} is ${height}px high`);
		}
		const sideways = await page.evaluate(
			() => document.documentElement.scrollWidth > document.documentElement.clientWidth
		);
		assert.equal(sideways, false, 'the page scrolls sideways');
		await showInbox(page, PHONE);
		assert.ok(await tabs.isVisible());
		await page.context().close();
	});

	test('desktop: no tab bar, and the inbox beside the chat', async () => {
		const { page } = await newPage(browser, DESKTOP, stack.url);
		await page.goto('/');
		const thread = page.getByTestId('thread');
		const inbox = page.getByTestId('inbox');
		await thread.waitFor({ timeout: STEP });
		await inbox.waitFor({ timeout: STEP });
		assert.equal(await page.getByRole('navigation', { name: 'Main' }).isVisible(), false);
		const [chatBox, inboxBox] = [await thread.boundingBox(), await inbox.boundingBox()];
		assert.ok(inboxBox.x >= chatBox.x + chatBox.width - 1, 'the inbox is to the right of the chat');
		await page.context().close();
	});

	test('a dropped connection comes back without losing or repeating an event', async () => {
		const proxy = await startProxy(stack.url);
		const { page, context } = await newPage(browser, DESKTOP, proxy.url);
		try {
			await page.goto('/');
			await page.getByTestId('thread').waitFor({ timeout: STEP });
			const before = await page.locator('[data-testid="message"]').count();

			const answered = await serverReplies(stack.url);
			proxy.cut();
			await page.getByTestId('connection-status').waitFor({ timeout: STEP });
			await screenshot(page, DESKTOP, 'reconnecting');
			// While the app is cut off, two messages are posted elsewhere and answered.
			for (const [key, content] of [
				['offline-1', 'Hello while you were away'],
				['offline-2', 'And hello again']
			]) {
				const response = await fetch(`${stack.url}/api/messages`, {
					method: 'POST',
					headers: { 'content-type': 'application/json', 'idempotency-key': key },
					body: JSON.stringify({ content })
				});
				assert.equal(response.status, 202);
			}
			await waitForServerReplies(stack.url, answered + 2);

			proxy.restore();
			await page.waitForFunction(
				(n) => document.querySelectorAll('[data-testid="message"]').length >= n,
				before + 4,
				{ timeout: STEP }
			);
			await page.getByTestId('connection-status').waitFor({ state: 'hidden', timeout: STEP });
			// Live again: a message from the app is answered in place.
			await say(page, 'Back online?');
			await waitForReplies(page, 3);
			const ids = await page
				.locator('[data-testid="message"]')
				.evaluateAll((nodes) => nodes.map((n) => n.getAttribute('data-id')));
			assert.equal(new Set(ids).size, ids.length, `a message is shown twice: ${ids}`);
			const stored = await (await fetch(`${stack.url}/api/messages?limit=200`)).json();
			assert.equal(ids.length, stored.messages.length, 'the app and the server disagree');
		} finally {
			await context.close();
			await proxy.close();
		}
	});

	test('hostile model text renders inert', async () => {
		const { page, context } = await newPage(browser, DESKTOP, stack.url);
		const dialogs = [];
		page.on('dialog', (dialog) => {
			dialogs.push(dialog.message());
			void dialog.dismiss();
		});
		await page.goto('/');
		await page.getByTestId('thread').waitFor({ timeout: STEP });
		const replies = await page.locator('[data-testid="message"][data-role="assistant"]').count();
		const payload = [
			'Repeat after me: <script>window.__xss = "script"</script>',
			'<img src=x onerror="window.__xss = \'img\'">',
			'<svg onload="window.__xss = \'svg\'"></svg>',
			'<iframe src="javascript:window.__xss=\'iframe\'"></iframe>',
			'[click me](javascript:window.__xss=\'link\')',
			'<a href="javascript:alert(1)">raw link</a>',
			'![x](x" onerror="window.__xss=\'md-img\')',
			'```html\n<script>alert(1)</script>\n```'
		].join('\n\n');
		await say(page, payload);
		const reply = await waitForReplies(page, replies + 1);
		const found = await reply.evaluate((node) => ({
			scripts: node.querySelectorAll('script, iframe, object, embed').length,
			handlers: [...node.querySelectorAll('*')].flatMap((el) =>
				[...el.attributes].filter((a) => a.name.startsWith('on')).map((a) => a.name)
			),
			jsLinks: [...node.querySelectorAll('a')].filter((a) =>
				(a.getAttribute('href') ?? '').trim().toLowerCase().startsWith('javascript:')
			).length
		}));
		assert.deepEqual(found, { scripts: 0, handlers: [], jsLinks: 0 });
		for (const link of await reply.locator('a').all()) await link.click({ force: true }).catch(() => {});
		assert.equal(await page.evaluate(() => window.__xss), undefined);
		assert.deepEqual(dialogs, []);
		// The code block shows the markup as text.
		assert.match(await reply.textContent(), /<script>alert\(1\)<\/script>/);
		await context.close();
	});

	for (const size of [DESKTOP, PHONE]) {
		test(`no serious accessibility violation on the main screens at ${size.name} size`, async () => {
			// axe is injected as an inline script, which the app's CSP (rightly) refuses.
			const { page, context } = await newPage(browser, size, stack.url, { bypassCSP: true });
			const screens = [['chat', '/']];
			await page.goto('/');
			await page.getByTestId('thread').waitFor({ timeout: STEP });
			const taskId = await ensureTask(stack.url);
			if (size.isMobile) screens.push(['inbox', '/inbox']);
			screens.push(['projects', '/projects']);
			screens.push(['task', `/tasks/${taskId}`]);
			const failures = [];
			for (const [name, path] of screens) {
				await page.goto(path);
				await page.waitForLoadState('networkidle').catch(() => {});
				await page.addScriptTag({ path: AXE });
				const violations = await page.evaluate(async () => {
					const result = await window.axe.run(document, { resultTypes: ['violations'] });
					return result.violations
						.filter((v) => v.impact === 'serious' || v.impact === 'critical')
						.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
				});
				await screenshot(page, size, `a11y-${name}`);
				failures.push(...violations.map((v) => `${name}: ${v}`));
			}
			assert.deepEqual(failures, []);
			await context.close();
		});
	}
});

/** How many complete replies the server has stored. */
async function serverReplies(url) {
	const page = await (await fetch(`${url}/api/messages?limit=200`)).json();
	return page.messages.filter((m) => m.role === 'assistant' && m.status === 'complete').length;
}

/** Waits until the server has stored `count` complete replies. */
async function waitForServerReplies(url, count) {
	const deadline = Date.now() + STEP;
	// The replies are produced by the server while the browser is cut off: ask the server.
	while ((await serverReplies(url)) < count) {
		if (Date.now() > deadline) throw new Error('the server did not answer in time');
		await new Promise((ok) => setTimeout(ok, 100));
	}
}

/** A task to show: asks the demo model for a change over the API and confirms its proposal. */
async function ensureTask(url) {
	const listed = await (await fetch(`${url}/api/tasks`)).json();
	const existing = (listed.tasks ?? listed)[0]?.id;
	if (existing) return existing;
	await fetch(`${url}/api/messages`, {
		method: 'POST',
		headers: { 'content-type': 'application/json', 'idempotency-key': 'a11y-task' },
		body: JSON.stringify({ content: 'Please add a greeting to demo/hello' })
	});
	const deadline = Date.now() + STEP;
	for (;;) {
		const page = await (await fetch(`${url}/api/messages?limit=200`)).json();
		const proposal = page.messages.flatMap((m) => m.proposals ?? []).find((p) => p.status === 'pending');
		if (proposal) {
			const confirmed = await fetch(`${url}/api/proposals/${proposal.id}/confirm`, {
				method: 'POST',
				headers: { 'content-type': 'application/json' },
				body: '{}'
			});
			return (await confirmed.json()).task.id;
		}
		if (Date.now() > deadline) throw new Error('no proposal to confirm');
		await new Promise((ok) => setTimeout(ok, 100));
	}
}
