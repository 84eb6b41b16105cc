import { describe, expect, it } from 'vitest';

import { plainText } from './format';

describe('plainText', () => {
	it('drops emphasis and code marks and keeps link text', () => {
		expect(plainText('PR #2 merged: **Add a greeting**')).toBe('PR #2 merged: Add a greeting');
		expect(plainText('See [the PR](https://example.com/pr/2) for `main`')).toBe(
			'See the PR for main'
		);
	});

	it('keeps markup as text: a pill is text, never HTML', () => {
		expect(plainText('<img src=x onerror=alert(1)>')).toBe('<img src=x onerror=alert(1)>');
	});
});
