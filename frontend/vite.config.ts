import { sveltekit } from '@sveltejs/kit/vite';
import tailwindcss from '@tailwindcss/vite';
import { defineConfig } from 'vitest/config';

// `npm run dev` proxies the API to a running `mainloop dev` (MAINLOOP_URL, default :8080).
const api = process.env.MAINLOOP_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
	plugins: [tailwindcss(), sveltekit()],
	server: { proxy: { '/api': { target: api } } },
	test: {
		include: ['src/**/*.test.ts'],
		environment: 'jsdom'
	},
	// Component tests mount Svelte's client build, not its server build.
	resolve: process.env.VITEST ? { conditions: ['browser'] } : undefined
});
