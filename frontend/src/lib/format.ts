// Numbers and times as people read them.

export function relativeTime(iso: string | null | undefined, now = Date.now()): string {
	if (!iso) return '';
	const seconds = Math.round((now - Date.parse(iso)) / 1000);
	if (seconds < 45) return 'just now';
	const minutes = Math.round(seconds / 60);
	if (minutes < 60) return `${minutes}m ago`;
	const hours = Math.round(minutes / 60);
	if (hours < 24) return `${hours}h ago`;
	const days = Math.round(hours / 24);
	if (days < 7) return `${days}d ago`;
	return new Date(iso).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

export function clockTime(iso: string | null | undefined): string {
	if (!iso) return '';
	const date = new Date(iso);
	const today = new Date().toDateString() === date.toDateString();
	return today
		? date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })
		: date.toLocaleString(undefined, {
				month: 'short',
				day: 'numeric',
				hour: '2-digit',
				minute: '2-digit'
			});
}

export function duration(fromIso: string, toIso?: string | null, now = Date.now()): string {
	const ms = (toIso ? Date.parse(toIso) : now) - Date.parse(fromIso);
	const seconds = Math.max(0, Math.round(ms / 1000));
	if (seconds < 60) return `${seconds}s`;
	const minutes = Math.floor(seconds / 60);
	if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
	const hours = Math.floor(minutes / 60);
	return `${hours}h ${minutes % 60}m`;
}

export function tokens(count: number): string {
	if (count < 1000) return String(count);
	if (count < 1_000_000) return `${(count / 1000).toFixed(count < 10_000 ? 1 : 0)}k`;
	return `${(count / 1_000_000).toFixed(1)}M`;
}

export function usd(amount: number | null | undefined): string {
	if (amount === null || amount === undefined) return '';
	if (amount === 0) return '$0';
	if (amount < 0.01) return `$${amount.toFixed(4)}`;
	if (amount < 1) return `$${amount.toFixed(3)}`;
	return `$${amount.toFixed(2)}`;
}

/** `claude-haiku-4-5-20251001` → `haiku-4-5`. */
export function shortModel(model: string): string {
	return model.replace(/^claude-/, '').replace(/-\d{8}$/, '');
}

/** An http(s) URL from a record, or nothing: never a `javascript:` link. */
export function httpUrl(url: string | null | undefined): string | undefined {
	return url && /^https?:\/\//i.test(url) ? url : undefined;
}

/** `t-0123abcd-run12345-02-fix` → `02 fix`: a job as the log shows it. */
export function jobLabel(job: string): string {
	const parts = job.split('-');
	return parts.length >= 2 ? parts.slice(-2).join(' ') : job;
}

/** A note's markdown as plain text for a one-line pill: emphasis and code marks dropped,
 * links reduced to their text. */
export function plainText(markdown: string): string {
	return markdown
		.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
		.replace(/(\*\*|__|`)/g, '')
		.replace(/\s+/g, ' ')
		.trim();
}
