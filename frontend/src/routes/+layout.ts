// A single-page app: no server rendering, no prerendering; the server answers every app
// route with index.html.
export const ssr = false;
export const prerender = false;
export const trailingSlash = 'never';
