// A corpus of XSS payloads through renderMarkdown: whatever the model or an agent writes, the
// HTML that reaches `{@html}` holds only plain formatting elements, no attribute that can run
// code or load anything, and links only to http(s) or mailto that open without an opener or
// a referrer. Each payload is also run in a jsdom that executes scripts: no canary fires.
// @ts-expect-error: jsdom ships no declarations and @types/jsdom is not a dependency; only
// its constructor and window are used.
import { JSDOM } from 'jsdom';
import { describe, expect, it } from 'vitest';
import { renderMarkdown } from './markdown';

const ELEMENTS = new Set([
	'A', 'B', 'BLOCKQUOTE', 'BR', 'CODE', 'DEL', 'EM', 'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'HR',
	'I', 'INPUT', 'LI', 'OL', 'P', 'PRE', 'S', 'SPAN', 'STRONG', 'TABLE', 'TBODY', 'TD', 'TH',
	'THEAD', 'TR', 'UL'
]); // prettier-ignore
const ATTRIBUTES = new Set([
	'href', 'title', 'class', 'start', 'align', 'type', 'checked', 'disabled', 'target', 'rel'
]); // prettier-ignore

const SCHEMES = ['javascript', 'vbscript', 'data', 'file', 'blob', 'livescript'];

/** Payloads by family; each must render inert. */
const CORPUS: Record<string, string[]> = {
	scripts: [
		'<script>window.__pwned=1</script>',
		'<SCRIPT SRC=//evil.example/x.js></SCRIPT>',
		'<scr<script>ipt>window.__pwned=1</scr</script>ipt>',
		'<script\n>window.__pwned=1</script\n>',
		'text <script>window.__pwned=1</script> text',
		'<!--<script>window.__pwned=1</script>-->',
		'<![CDATA[<script>window.__pwned=1</script>]]>'
	],
	handlers: [
		'<img src=x onerror=window.__pwned=1>',
		'<img src=x onerror="window.__pwned=1">',
		'<IMG SRC=x ONERROR=window.__pwned=1>',
		'<img/src=x/onerror=window.__pwned=1>',
		'<body onload=window.__pwned=1>',
		'<div onmouseover="window.__pwned=1">hover</div>',
		'<details open ontoggle=window.__pwned=1>',
		'<video><source onerror="window.__pwned=1"></video>',
		'<input autofocus onfocus=window.__pwned=1>',
		'<b onclick="window.__pwned=1">b</b>',
		'**bold**<span onclick=window.__pwned=1>x</span>'
	],
	links: [
		'[x](javascript:window.__pwned=1)',
		'[x](JaVaScRiPt:window.__pwned=1)',
		'[x]( javascript:window.__pwned=1)',
		'[x](java\tscript:window.__pwned=1)',
		'[x](java&#x09;script:window.__pwned=1)',
		'[x](&#106;avascript:window.__pwned=1)',
		'[x](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:window.__pwned=1)',
		'[x](javascript&colon;window.__pwned=1)',
		'[x](%6a%61%76%61%73%63%72%69%70%74:window.__pwned=1)',
		'[x](vbscript:msgbox(1))',
		'[x](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)',
		'[x](data:image/svg+xml,<svg onload=window.__pwned=1>)',
		'[x](file:///etc/passwd)',
		'[x](<javascript:window.__pwned=1>)',
		'[x](javascript:window.__pwned=1 "title")',
		'[x](https://ok.example "a\\" onmouseover=\\"window.__pwned=1")',
		'[x](https://ok.example" onmouseover="window.__pwned=1)',
		'[x][ref]\n\n[ref]: javascript:window.__pwned=1',
		'[x][ref]\n\n[ref]: <javascript:window.__pwned=1> "t"',
		'[ref]\n\n[ref]: data:text/html,<script>window.__pwned=1</script>',
		'<javascript:window.__pwned=1>',
		'<JAVASCRIPT:window.__pwned=1>',
		'<a href="javascript:window.__pwned=1">raw</a>',
		'<a href="&#106;avascript:window.__pwned=1">raw</a>',
		'<a href=" javascript:window.__pwned=1">raw</a>',
		'www.example.com/?q=<script>window.__pwned=1</script>',
		'https://example.com/"onmouseover="window.__pwned=1"'
	],
	images: [
		'![x](javascript:window.__pwned=1)',
		'![x](x" onerror="window.__pwned=1)',
		'![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9d2luZG93Ll9fcHduZWQ9MT4=)',
		'![x][img]\n\n[img]: javascript:window.__pwned=1',
		'![x" onerror="window.__pwned=1](https://example.com/a.png)'
	],
	elements: [
		'<svg onload=window.__pwned=1></svg>',
		'<svg><script>window.__pwned=1</script></svg>',
		'<svg><a xlink:href="javascript:window.__pwned=1"><text>x</text></a></svg>',
		'<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned=1>',
		'<math href="javascript:window.__pwned=1">x</math>',
		'<iframe src="javascript:window.__pwned=1"></iframe>',
		'<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>',
		'<object data="javascript:window.__pwned=1"></object>',
		'<embed src="javascript:window.__pwned=1">',
		'<form action="javascript:window.__pwned=1"><button>go</button></form>',
		'<button formaction="javascript:window.__pwned=1">go</button>',
		'<meta http-equiv="refresh" content="0;url=javascript:window.__pwned=1">',
		'<base href="javascript:window.__pwned=1//">',
		'<link rel=stylesheet href="https://evil.example/x.css">',
		'<style>@import "https://evil.example/x.css";</style>',
		'<style>*{background:url(javascript:window.__pwned=1)}</style>',
		'<p style="background:url(javascript:window.__pwned=1)">x</p>',
		'<template><script>window.__pwned=1</script></template>',
		'<noscript><p title="</noscript><img src=x onerror=window.__pwned=1>">'
	],
	malformed: [
		'<img src="x` `<script>window.__pwned=1</script>"` `>',
		'<<script>script>window.__pwned=1<</script>/script>',
		'<a href="https://ok.example"<img src=x onerror=window.__pwned=1>>x</a>',
		'<div\n<img src=x onerror=window.__pwned=1>',
		'<img src=x onerror=window.__pwned=1',
		'> <img src=x onerror=window.__pwned=1>',
		'* <img src=x onerror=window.__pwned=1>',
		'| a |\n|---|\n| <img src=x onerror=window.__pwned=1> |',
		'`code` <img src=x onerror=window.__pwned=1> `code`',
		'```\n</code></pre><img src=x onerror=window.__pwned=1>\n```',
		'```html" onmouseover="window.__pwned=1\nx\n```',
		'- [ ] <input type=text onfocus=window.__pwned=1 autofocus>',
		'\u0000<script>window.__pwned=1</script>',
		'<scr\u0000ipt>window.__pwned=1</script>'
	]
};

/** Every way the rendered HTML could run code or leak the reader; empty when inert. */
function findings(html: string): string[] {
	const found: string[] = [];
	const root = document.createElement('div');
	root.innerHTML = html;
	for (const element of root.querySelectorAll('*')) {
		if (!ELEMENTS.has(element.tagName)) found.push(`element ${element.tagName}`);
		if (element.tagName === 'INPUT' && element.getAttribute('type') !== 'checkbox') {
			found.push('a non-checkbox input');
		}
		for (const { name, value } of element.attributes) {
			if (!ATTRIBUTES.has(name)) found.push(`attribute ${element.tagName} ${name}`);
			const squashed = value.replace(/[\s\u0000-\u001f]/g, '').toLowerCase();
			for (const scheme of SCHEMES) {
				if (squashed.startsWith(`${scheme}:`)) found.push(`${scheme}: in ${name}`);
			}
		}
	}
	for (const link of root.querySelectorAll('a')) {
		const href = link.getAttribute('href') ?? '';
		if (!/^(https?:\/\/|mailto:)/i.test(href)) found.push(`link to ${href}`);
		const rel = (link.getAttribute('rel') ?? '').split(/\s+/);
		if (!rel.includes('noopener') || !rel.includes('noreferrer')) found.push(`rel ${rel}`);
	}
	return found;
}

/** One page that runs scripts, reused: a fresh one per payload would triple the run time. */
const page = new JSDOM('<!doctype html><body></body>', { runScripts: 'dangerously' });

/** Puts the HTML in the page, fires every event a reader could cause, and reports whether
 * the canary fired. */
async function runs(html: string): Promise<boolean> {
	const window = page.window as unknown as { __pwned?: unknown; document: Document };
	window.__pwned = undefined;
	window.document.body.innerHTML = html;
	for (const element of window.document.querySelectorAll('*')) {
		for (const event of ['click', 'mouseover', 'focus', 'load', 'error', 'toggle']) {
			element.dispatchEvent(new page.window.Event(event));
		}
	}
	await new Promise((ok) => setTimeout(ok, 0));
	return window.__pwned !== undefined;
}

describe('hostile markdown renders inert', () => {
	for (const [family, payloads] of Object.entries(CORPUS)) {
		it(`${family}: ${payloads.length} payloads`, async () => {
			for (const payload of payloads) {
				const html = renderMarkdown(payload);
				expect(findings(html), `${payload}\n=> ${html}`).toEqual([]);
				expect(await runs(html), `${payload}\n=> ${html}`).toBe(false);
			}
		});
	}

	it('all payloads at once, nested in lists, quotes and tables', async () => {
		const all = Object.values(CORPUS).flat();
		const nested = all.map((p, i) => (i % 3 === 0 ? `> ${p}` : i % 3 === 1 ? `- ${p}` : p));
		const html = renderMarkdown(nested.join('\n\n'));
		expect(findings(html)).toEqual([]);
		expect(await runs(html)).toBe(false);
	});

	it('the canary does fire for unsanitised HTML (the check can fail)', async () => {
		expect(await runs('<img src=x onerror="window.__pwned=1">')).toBe(true);
		expect(await runs('<b onclick="window.__pwned=1">x</b>')).toBe(true);
		expect(findings('<a href="javascript:x">x</a>').length).toBeGreaterThan(0);
	});

	it('keeps safe links working, with no opener or referrer', () => {
		const html = renderMarkdown(
			'[site](https://example.com/a?b=c) <https://example.com> [mail](mailto:a@example.com)'
		);
		const root = document.createElement('div');
		root.innerHTML = html;
		const hrefs = [...root.querySelectorAll('a')].map((a) => a.getAttribute('href'));
		expect(hrefs).toEqual([
			'https://example.com/a?b=c',
			'https://example.com',
			'mailto:a@example.com'
		]);
		expect(findings(html)).toEqual([]);
	});
});
