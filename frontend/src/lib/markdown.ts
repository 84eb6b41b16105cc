// Markdown of untrusted text (model replies, agents' plans) to safe HTML. Raw HTML in the
// source is shown as text, never parsed; links may only go to http(s) and mailto; images
// become links (the CSP refuses remote images anyway: they would tell their server who read
// the text); and DOMPurify removes whatever might still get through.
import DOMPurify from 'dompurify';
import { Marked, type Tokens } from 'marked';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import ini from 'highlight.js/lib/languages/ini';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

const languages = {
	bash,
	css,
	diff,
	go,
	ini,
	javascript,
	json,
	python,
	rust,
	sql,
	typescript,
	xml,
	yaml
};
for (const [name, language] of Object.entries(languages)) hljs.registerLanguage(name, language);
hljs.registerAliases(['sh', 'shell', 'zsh', 'console'], { languageName: 'bash' });
hljs.registerAliases(['js', 'jsx', 'mjs'], { languageName: 'javascript' });
hljs.registerAliases(['ts', 'tsx'], { languageName: 'typescript' });
hljs.registerAliases(['rs'], { languageName: 'rust' });
hljs.registerAliases(['py'], { languageName: 'python' });
hljs.registerAliases(['yml'], { languageName: 'yaml' });
hljs.registerAliases(['toml'], { languageName: 'ini' });
hljs.registerAliases(['html', 'svg'], { languageName: 'xml' });
hljs.registerAliases(['patch'], { languageName: 'diff' });

export function escapeHtml(text: string): string {
	return text
		.replaceAll('&', '&amp;')
		.replaceAll('<', '&lt;')
		.replaceAll('>', '&gt;')
		.replaceAll('"', '&quot;')
		.replaceAll("'", '&#39;');
}

const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

function safeHref(href: string | null | undefined): string | null {
	const url = (href ?? '').trim();
	return SAFE_URL.test(url) ? url : null;
}

const marked = new Marked({
	gfm: true,
	breaks: true,
	renderer: {
		html(token: Tokens.HTML | Tokens.Tag) {
			return escapeHtml(token.text);
		},
		code(token: Tokens.Code) {
			const lang = (token.lang ?? '').trim().split(/\s+/)[0]?.toLowerCase() ?? '';
			const known = lang !== '' && hljs.getLanguage(lang) !== undefined;
			const body = known
				? hljs.highlight(token.text, { language: lang, ignoreIllegals: true }).value
				: escapeHtml(token.text);
			const label = lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : '';
			return `<pre class="code">${label}<code class="hljs">${body}</code></pre>\n`;
		},
		link(token: Tokens.Link) {
			const text = this.parser.parseInline(token.tokens);
			const href = safeHref(token.href);
			if (!href) return text;
			const title = token.title ? ` title="${escapeHtml(token.title)}"` : '';
			return `<a href="${escapeHtml(href)}"${title}>${text}</a>`;
		},
		image(token: Tokens.Image) {
			const href = safeHref(token.href);
			const text = escapeHtml(token.text || 'image');
			return href ? `<a href="${escapeHtml(href)}">${text}</a>` : text;
		}
	}
});

const ALLOWED_TAGS = [
	'a',
	'b',
	'blockquote',
	'br',
	'code',
	'del',
	'em',
	'h1',
	'h2',
	'h3',
	'h4',
	'h5',
	'h6',
	'hr',
	'i',
	'input',
	'li',
	'ol',
	'p',
	'pre',
	's',
	'span',
	'strong',
	'table',
	'tbody',
	'td',
	'th',
	'thead',
	'tr',
	'ul'
];
const ALLOWED_ATTR = ['href', 'title', 'class', 'start', 'align', 'type', 'checked', 'disabled'];

let hooked = false;

function purify(html: string): string {
	if (!hooked) {
		// Links open elsewhere and tell nothing about this page.
		DOMPurify.addHook('afterSanitizeAttributes', (node) => {
			if (node.tagName === 'A') {
				node.setAttribute('target', '_blank');
				node.setAttribute('rel', 'noopener noreferrer nofollow');
			}
			if (node.tagName === 'INPUT' && node.getAttribute('type') !== 'checkbox') node.remove();
		});
		hooked = true;
	}
	return DOMPurify.sanitize(html, {
		ALLOWED_TAGS,
		ALLOWED_ATTR: [...ALLOWED_ATTR, 'target', 'rel'],
		ALLOWED_URI_REGEXP: SAFE_URL,
		ALLOW_DATA_ATTR: false
	});
}

/** Safe HTML for `{@html}` from untrusted markdown. */
export function renderMarkdown(source: string): string {
	return purify(marked.parse(source, { async: false }));
}
