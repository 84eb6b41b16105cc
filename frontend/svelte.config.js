import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
const config = {
	preprocess: vitePreprocess(),
	compilerOptions: { runes: true },
	kit: {
		// A single-page app: the `mainloop` binary serves index.html for every app route.
		adapter: adapter({ fallback: 'index.html', precompress: true, strict: false }),
		// Hashed file names under _app/immutable are what the server caches for a year.
		appDir: '_app',
		// The fallback page is served at every route, so its asset URLs must be absolute.
		paths: { relative: false },
		output: { bundleStrategy: 'split' },
		// The server sends the Content-Security-Policy header (with the hash of the one
		// inline boot script it finds in index.html), so SvelteKit adds no meta tag.
		alias: { $components: 'src/lib/components' }
	}
};

export default config;
