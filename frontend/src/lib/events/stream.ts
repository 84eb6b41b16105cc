// The one connection to `GET /api/events`. It resumes after the last event it delivered, so
// a reconnect (after a network change, a server restart, the phone sleeping) replays what
// was missed; events at or below that id are dropped, so none is delivered twice, and they
// are delivered in id order. It reconnects on its own with a growing delay, at once when
// the browser comes back online or the page becomes visible, and when the server's 15 s
// keep-alive comments stop arriving.
import { SseParser } from './sse';

export type StreamStatus = 'connecting' | 'live' | 'reconnecting' | 'offline' | 'unauthorized';

export interface StreamEvent {
	id: number;
	kind: string;
	data: unknown;
}

export interface StreamOptions {
	/** Deliver events after this id (`last_event_id` of the state just loaded). */
	after: number;
	onEvent: (event: StreamEvent) => void;
	onStatus: (status: StreamStatus) => void;
	url?: string;
	fetch?: typeof fetch;
	/** Delay before reconnect attempt `n` (0-based), in ms. */
	backoff?: (attempt: number) => number;
	/** With no bytes for this long, the connection is presumed dead (ms). */
	silenceTimeout?: number;
	/** Where `online` and `visibilitychange` come from (none in tests). */
	window?: Pick<Window, 'addEventListener' | 'removeEventListener'> & {
		navigator?: { onLine: boolean };
		document?: { visibilityState: string };
	};
}

export function defaultBackoff(attempt: number): number {
	const base = Math.min(500 * 2 ** attempt, 15_000);
	return base / 2 + Math.random() * (base / 2);
}

export class EventStream {
	private lastId: number;
	private status: StreamStatus | null = null;
	private controller: AbortController | null = null;
	private retryTimer: ReturnType<typeof setTimeout> | null = null;
	private silenceTimer: ReturnType<typeof setTimeout> | null = null;
	private attempt = 0;
	private stopped = true;
	private readonly options: Required<Omit<StreamOptions, 'window'>> & Pick<StreamOptions, 'window'>;

	constructor(options: StreamOptions) {
		this.options = {
			url: '/api/events',
			fetch: (...args) => globalThis.fetch(...args),
			backoff: defaultBackoff,
			silenceTimeout: 45_000,
			...options
		};
		this.lastId = options.after;
	}

	/** The id of the last event delivered. */
	get lastEventId(): number {
		return this.lastId;
	}

	start() {
		if (!this.stopped) return;
		this.stopped = false;
		this.options.window?.addEventListener('online', this.wake);
		this.options.window?.addEventListener('offline', this.lost);
		this.options.window?.addEventListener('visibilitychange', this.wake);
		void this.connect();
	}

	stop() {
		this.stopped = true;
		this.options.window?.removeEventListener('online', this.wake);
		this.options.window?.removeEventListener('offline', this.lost);
		this.options.window?.removeEventListener('visibilitychange', this.wake);
		this.clearTimers();
		this.controller?.abort();
		this.controller = null;
	}

	/** Reconnect now instead of waiting for the next attempt. */
	readonly wake = () => {
		if (this.stopped || this.status === 'live' || this.status === 'unauthorized') return;
		if (this.options.window?.document?.visibilityState === 'hidden') return;
		if (this.retryTimer === null) return; // a connection attempt is already under way
		clearTimeout(this.retryTimer);
		this.retryTimer = null;
		this.attempt = 0;
		void this.connect();
	};

	/** The browser says the network is gone: say so now rather than at the next timeout. */
	private readonly lost = () => {
		if (this.controller) this.retry(this.controller);
	};

	private setStatus(status: StreamStatus) {
		if (this.status === status) return;
		this.status = status;
		this.options.onStatus(status);
	}

	private async connect() {
		this.clearTimers();
		if (this.status !== 'reconnecting' && this.status !== 'offline') this.setStatus('connecting');
		const controller = new AbortController();
		this.controller = controller;
		let response: Response;
		try {
			response = await this.options.fetch(
				`${this.options.url}?after=${encodeURIComponent(String(this.lastId))}`,
				{
					headers: { accept: 'text/event-stream' },
					credentials: 'same-origin',
					cache: 'no-store',
					signal: controller.signal
				}
			);
		} catch {
			return this.retry(controller);
		}
		if (this.controller !== controller) return; // stopped, or given up on, meanwhile
		if (response.status === 401) {
			this.setStatus('unauthorized');
			this.stop();
			return;
		}
		if (!response.ok || !response.body) return this.retry(controller);
		this.setStatus('live');
		this.attempt = 0;
		const parser = new SseParser((message) =>
			this.deliver(message.id, message.event, message.data)
		);
		const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
		this.armSilence(controller);
		try {
			for (;;) {
				const { done, value } = await reader.read();
				if (done || controller.signal.aborted) break;
				this.armSilence(controller);
				parser.feed(value);
			}
		} catch {
			// The connection broke; reconnect below.
		}
		this.retry(controller);
	}

	private deliver(rawId: string | undefined, kind: string, rawData: string) {
		const id = Number(rawId);
		if (!Number.isSafeInteger(id) || id <= this.lastId) return;
		let data: unknown;
		try {
			data = JSON.parse(rawData);
		} catch {
			return;
		}
		this.lastId = id;
		this.options.onEvent({ id, kind, data });
	}

	/** Ends `controller`'s connection and schedules the next; only once per connection. */
	private retry(controller: AbortController) {
		if (this.controller !== controller) return;
		this.controller = null;
		controller.abort();
		if (this.stopped) return;
		this.clearTimers();
		const offline = this.options.window?.navigator?.onLine === false;
		this.setStatus(offline ? 'offline' : 'reconnecting');
		const delay = this.options.backoff(this.attempt++);
		this.retryTimer = setTimeout(() => {
			this.retryTimer = null;
			void this.connect();
		}, delay);
	}

	private armSilence(controller: AbortController) {
		if (this.silenceTimer !== null) clearTimeout(this.silenceTimer);
		this.silenceTimer = setTimeout(() => {
			this.silenceTimer = null;
			this.retry(controller);
		}, this.options.silenceTimeout);
	}

	private clearTimers() {
		if (this.retryTimer !== null) clearTimeout(this.retryTimer);
		if (this.silenceTimer !== null) clearTimeout(this.silenceTimer);
		this.retryTimer = null;
		this.silenceTimer = null;
	}
}
