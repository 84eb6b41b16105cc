import { describe, expect, it } from 'vitest';
import { renderMarkdown } from './markdown';

/** Renders into a real (jsdom) DOM, as the app does, and returns the container. */
function mount(source: string): HTMLElement {
	const div = document.createElement('div');
	div.innerHTML = renderMarkdown(source);
	return div;
}

function inert(div: HTMLElement) {
	expect(div.querySelectorAll('script, iframe, object, embed, style, img, svg, form')).toHaveLength(
		0
	);
	for (const element of div.querySelectorAll('*')) {
		for (const attribute of element.attributes) {
			expect(attribute.name.startsWith('on'), `${element.tagName} ${attribute.name}`).toBe(false);
			expect(attribute.name).not.toBe('style');
		}
	}
	for (const link of div.querySelectorAll('a')) {
		expect(link.getAttribute('href') ?? '').toMatch(/^(https?:|mailto:)/);
	}
}

describe('renderMarkdown', () => {
	it('renders markdown with highlighted code', () => {
		const div = mount('# Title\n\nSome **bold** and `code`.\n\n```rust\nfn main() {}\n```');
		expect(div.querySelector('h1')?.textContent).toBe('Title');
		expect(div.querySelector('strong')?.textContent).toBe('bold');
		const code = div.querySelector('pre code');
		expect(code?.querySelector('.hljs-keyword')?.textContent).toBe('fn');
		inert(div);
	});

	it('shows a script as text and runs nothing', () => {
		const div = mount('Hello <script>window.pwned = 1</script> there\n\n<script>alert(1)</script>');
		expect(div.querySelector('script')).toBeNull();
		expect(div.textContent).toContain('<script>window.pwned = 1</script>');
		inert(div);
	});

	it('shows raw HTML as text', () => {
		const div = mount('<div class="x" style="color:red">boxed</div>\n\n<b onclick="x()">b</b>');
		expect(div.querySelector('div')).toBeNull();
		expect(div.textContent).toContain('<div class="x" style="color:red">boxed</div>');
		inert(div);
	});

	it('makes <img onerror> inert', () => {
		const div = mount('<img src=x onerror="alert(1)">\n\nand ![pic](x" onerror="alert(1))');
		expect(div.querySelector('img')).toBeNull();
		expect(div.innerHTML).not.toMatch(/<img/i);
		inert(div);
	});

	it('drops javascript: and data: links but keeps their text', () => {
		const div = mount(
			'[click](javascript:alert(1)) [data](data:text/html;base64,PHNjcmlwdD4=) ' +
				'[spaced]( JAVASCRIPT:alert(1)) <javascript:alert(1)> [ok](https://example.com)'
		);
		const links = [...div.querySelectorAll('a')];
		expect(links.map((a) => a.getAttribute('href'))).toEqual(['https://example.com']);
		expect(div.textContent).toContain('click');
		expect(links[0]?.getAttribute('rel')).toBe('noopener noreferrer nofollow');
		expect(links[0]?.getAttribute('target')).toBe('_blank');
		inert(div);
	});

	it('turns images into links instead of loading them', () => {
		const div = mount('![a chart](https://example.com/chart.png)');
		expect(div.querySelector('img')).toBeNull();
		expect(div.querySelector('a')?.getAttribute('href')).toBe('https://example.com/chart.png');
		inert(div);
	});

	it('escapes HTML inside code blocks of unknown languages', () => {
		const div = mount('```weird\n<img src=x onerror=alert(1)>\n```');
		expect(div.querySelector('pre code')?.textContent).toBe('<img src=x onerror=alert(1)>');
		inert(div);
	});
});
