// Debian's Chromium driven by playwright-core (its own browser download is not available),
// at the two sizes the app is designed for, with screenshots kept for people to look at.

import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const DESKTOP = { name: 'desktop', viewport: { width: 1280, height: 800 }, isMobile: false };
export const PHONE = {
	name: 'phone',
	viewport: { width: 393, height: 727 },
	isMobile: true,
	hasTouch: true,
	deviceScaleFactor: 3
};

/** Where screenshots go: `E2E_SCREENSHOTS`, else `e2e/screenshots`. */
export const SCREENSHOTS =
	process.env.E2E_SCREENSHOTS ??
	resolve(dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');

/** Chromium with a fresh temporary profile. */
export async function openBrowser() {
	const browser = await chromium.launch({
		executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
		headless: true,
		args: [
			'--no-sandbox',
			'--disable-gpu',
			'--disable-background-networking',
			'--disable-component-update',
			'--disable-sync',
			'--no-first-run'
		]
	});
	return browser;
}

/** A page at `size` in a fresh context; console errors and page errors are collected. */
export async function newPage(browser, size, baseURL, options = {}) {
	const context = await browser.newContext({ ...size, baseURL, ...options });
	const page = await context.newPage();
	const errors = [];
	page.on('pageerror', (error) => errors.push(String(error)));
	page.on('console', (message) => {
		if (message.type() === 'error') errors.push(message.text());
	});
	return { context, page, errors };
}

/** Saves a full-page screenshot as `<size>-<name>.png`. */
export async function screenshot(page, size, name) {
	mkdirSync(SCREENSHOTS, { recursive: true });
	const path = join(SCREENSHOTS, `${size.name}-${name}.png`);
	await page.screenshot({ path, fullPage: false });
	return path;
}
