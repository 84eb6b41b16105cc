// Security in the real browser, on one demo stack: the app works under its own
// Content-Security-Policy without a single violation on any page, and hostile Markdown in a
// model reply, a proposal and a task's description runs nothing (a `window.__pwned` canary
// stays unset, no dialog opens) and trips no CSP report either: the sanitiser removed the
// payloads, the policy did not have to block them.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { STEP, say, waitForReplies } from '../lib/app.mjs';
import { DESKTOP, newPage, openBrowser, screenshot } from '../lib/browser.mjs';
import { startDemo } from '../lib/stack.mjs';

/** Payloads from the web app's corpus (frontend/src/lib/markdown.hostile.test.ts). */
const HOSTILE = [
	'<script>window.__pwned = "script"</script>',
	'<img src=x onerror="window.__pwned = \'img\'">',
	'<svg onload="window.__pwned = \'svg\'"></svg>',
	'<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned=\'math\'">',
	'<iframe srcdoc="<script>parent.__pwned=\'srcdoc\'</script>"></iframe>',
	'<object data="javascript:window.__pwned=\'object\'"></object>',
	'<form action="javascript:window.__pwned=\'form\'"><button>go</button></form>',
	'<meta http-equiv="refresh" content="0;url=javascript:window.__pwned=\'meta\'">',
	'<base href="javascript:window.__pwned=\'base\'//">',
	'<style>*{background:url(https://evil.example/leak)}</style>',
	'<details open ontoggle="window.__pwned=\'details\'">x</details>',
	"[entity](&#106;avascript:window.__pwned='entity')",
	"[spaced](java\tscript:window.__pwned='tab')",
	'[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)',
	"[ref link][evil]\n\n[evil]: javascript:window.__pwned='ref'",
	"<javascript:window.__pwned='autolink'>",
	'![remote](https://evil.example/pixel.png)',
	'[ok](https://example.com "t\\" onmouseover=\\"window.__pwned=\'title\'")'
].join('\n\n');

/** Records CSP violations in the page from its first script on. */
async function watchCsp(context) {
	await context.addInitScript(() => {
		window.__csp = [];
		document.addEventListener('securitypolicyviolation', (event) =>
			window.__csp.push(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}`)
		);
	});
}

/** Console lines in which Chromium reports refused content. */
function cspConsole(page) {
	const lines = [];
	page.on('console', (message) => {
		if (/content security policy|refused to/i.test(message.text())) lines.push(message.text());
	});
	return lines;
}

/** Fires what a reader could set off in `root`: hovers, focus, toggles, image loads. */
async function poke(root) {
	await root.evaluate((node) => {
		for (const element of node.querySelectorAll('*')) {
			for (const type of ['mouseover', 'focus', 'toggle', 'load', 'error', 'animationstart']) {
				element.dispatchEvent(new Event(type));
			}
		}
	});
}

/** What in the rendered Markdown inside `root` could run code or leak: elements and
 * attributes the sanitiser must have removed, links it must have dropped or tamed. */
async function vectors(root) {
	return root.evaluate((node) => {
		const rendered = [...node.querySelectorAll('.md')];
		const all = (selector) => rendered.flatMap((md) => [...md.querySelectorAll(selector)]);
		return {
			rendered: rendered.length > 0,
			elements: all('script, iframe, object, embed, form, meta, base, style, svg, math, img').map(
				(el) => el.tagName
			),
			handlers: all('*').flatMap((el) =>
				[...el.attributes]
					.filter((a) => a.name.startsWith('on'))
					.map((a) => `${el.tagName} ${a.name}`)
			),
			links: all('a')
				.map((a) => a.getAttribute('href') ?? '')
				.filter((href) => !/^(https?:\/\/|mailto:)/i.test(href)),
			openers: all('a').filter((a) => !/noopener/.test(a.rel) || !/noreferrer/.test(a.rel)).length
		};
	});
}

const INERT = { rendered: true, elements: [], handlers: [], links: [], openers: 0 };

describe('security in the browser', () => {
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

	test('hostile markdown in a reply, a proposal and a task runs nothing', async () => {
		const { page, context } = await newPage(browser, DESKTOP, stack.url);
		await watchCsp(context);
		const refused = cspConsole(page);
		const dialogs = [];
		page.on('dialog', (dialog) => {
			dialogs.push(dialog.message());
			void dialog.dismiss();
		});
		await page.goto('/');
		await page.getByTestId('thread').waitFor({ timeout: STEP });
		const replies = await page.locator('[data-testid="message"][data-role="assistant"]').count();

		await say(page, `Repeat after me: ${HOSTILE}`);
		const reply = await waitForReplies(page, replies + 1);
		await poke(reply);
		assert.deepEqual(await vectors(reply), INERT);

		// The demo model proposes a task whose description is the message: the card shows it.
		await say(page, `Please add this to the greeting:\n\n${HOSTILE}`);
		const card = page.getByTestId('proposal-card').last();
		await card.waitFor({ timeout: STEP });
		await poke(card);
		assert.deepEqual(await vectors(card), INERT);
		await card.getByRole('button', { name: 'Confirm', exact: true }).click();
		const task = card.getByRole('link', { name: /View task/ });
		await task.waitFor({ timeout: STEP });
		await task.click();
		await page.waitForURL(/\/tasks\//, { timeout: STEP });
		const main = page.locator('main');
		await main.getByText('Please add this to the greeting').first().waitFor({ timeout: STEP });
		await poke(main);
		assert.deepEqual(await vectors(main), INERT);
		await screenshot(page, DESKTOP, 'hostile-task');

		assert.equal(await page.evaluate(() => window.__pwned), undefined, 'a payload ran');
		assert.deepEqual(dialogs, []);
		assert.deepEqual(await page.evaluate(() => window.__csp), [], 'the CSP had to block something');
		assert.deepEqual(refused, []);
		await context.close();
	});

	test('no page of the app trips its Content-Security-Policy', async () => {
		const { page, context, errors } = await newPage(browser, DESKTOP, stack.url);
		await watchCsp(context);
		const refused = cspConsole(page);
		const tasks = await (await fetch(`${stack.url}/api/tasks`)).json();
		const taskId = (tasks.tasks ?? tasks)[0]?.id;
		const paths = ['/', '/inbox', '/projects', '/no-such-page'];
		if (taskId) paths.push(`/tasks/${taskId}`);
		const found = [];
		for (const path of paths) {
			const response = await page.goto(path);
			const policy = response.headers()['content-security-policy'] ?? '';
			assert.match(policy, /script-src 'self'/, `${path}: ${policy}`);
			const scripts = policy.split(';').find((d) => d.trim().startsWith('script-src')) ?? '';
			assert.doesNotMatch(scripts, /unsafe/, `${path}: ${scripts}`);
			// Not 'networkidle': the event stream keeps the network busy for good.
			await page.locator('main').waitFor({ timeout: STEP });
			await page.evaluate(
				() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)))
			);
			// The chat renders highlighted code and links: exercise the renderer on this page.
			if (path === '/') {
				const before = await page.locator('[data-testid="message"][data-role="assistant"]').count();
				await say(
					page,
					'Repeat after me: **bold** `code` [a link](https://example.com)\n\n```rust\nfn main() {}\n```'
				);
				await waitForReplies(page, before + 1);
			}
			found.push(...(await page.evaluate(() => window.__csp)).map((v) => `${path}: ${v}`));
		}
		assert.deepEqual(found, []);
		assert.deepEqual(refused, []);
		assert.deepEqual(
			errors.filter((e) => /policy/i.test(e)),
			[]
		);
		// The watch works: an injected inline script is refused, and reported.
		await page.evaluate(() => {
			const script = document.createElement('script');
			script.textContent = 'window.__injected = 1';
			document.body.append(script);
		});
		await page.waitForFunction(() => window.__csp.length > 0, null, { timeout: STEP });
		assert.equal(await page.evaluate(() => window.__injected), undefined);
		assert.equal(refused.length, 1, 'Chromium reports refused content on the console');
		await context.close();
	});
});
