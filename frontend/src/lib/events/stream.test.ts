import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventStream, type StreamEvent, type StreamStatus } from './stream';
import { SseParser, type SseMessage } from './sse';

/** A fake server: each connection is a response whose body the test writes to. */
class FakeServer {
	requests: string[] = [];
	private connections: { push: (text: string) => void; end: () => void; fail: () => void }[] = [];
	private pendingStatus: number[] = [];

	/** The next connection is answered with this status and no body. */
	answerNext(status: number) {
		this.pendingStatus.push(status);
	}

	fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
		this.requests.push(String(input));
		const status = this.pendingStatus.shift();
		if (status !== undefined) return new Response(null, { status });
		const encoder = new TextEncoder();
		let controller!: ReadableStreamDefaultController<Uint8Array>;
		const body = new ReadableStream<Uint8Array>({
			start: (c) => {
				controller = c;
			}
		});
		init?.signal?.addEventListener('abort', () => controller.error(new Error('aborted')));
		this.connections.push({
			push: (text) => controller.enqueue(encoder.encode(text)),
			end: () => controller.close(),
			fail: () => controller.error(new Error('reset'))
		});
		return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
	};

	get current() {
		const connection = this.connections.at(-1);
		if (!connection) throw new Error('no connection');
		return connection;
	}

	get count() {
		return this.connections.length;
	}
}

function frame(id: number, kind: string, data: unknown) {
	return `id: ${id}\nevent: ${kind}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** Lets the stream's promise chains run (fake timers do not). */
async function settle() {
	for (let i = 0; i < 20; i++) await Promise.resolve();
	await vi.advanceTimersByTimeAsync(0);
}

describe('EventStream', () => {
	let server: FakeServer;
	let events: StreamEvent[];
	let statuses: StreamStatus[];
	let stream: EventStream;

	beforeEach(() => {
		vi.useFakeTimers();
		server = new FakeServer();
		events = [];
		statuses = [];
		stream = new EventStream({
			after: 10,
			fetch: server.fetch,
			onEvent: (e) => events.push(e),
			onStatus: (s) => statuses.push(s),
			backoff: () => 1000,
			silenceTimeout: 45_000
		});
	});

	afterEach(() => {
		stream.stop();
		vi.useRealTimers();
	});

	it('starts after the loaded state and delivers events in order', async () => {
		stream.start();
		await settle();
		expect(server.requests).toEqual(['/api/events?after=10']);
		expect(statuses).toEqual(['connecting', 'live']);
		server.current.push(frame(11, 'message.created', { id: 'a' }));
		server.current.push(frame(12, 'message.delta', { text: 'hi' }).slice(0, 9));
		await settle();
		expect(events.map((e) => e.id)).toEqual([11]);
		server.current.push(frame(12, 'message.delta', { text: 'hi' }).slice(9));
		await settle();
		expect(events).toEqual([
			{ id: 11, kind: 'message.created', data: { id: 'a' } },
			{ id: 12, kind: 'message.delta', data: { text: 'hi' } }
		]);
	});

	it('reconnects with the last id it delivered and drops what it already has', async () => {
		stream.start();
		await settle();
		server.current.push(frame(11, 'task.log', { line: 1 }) + frame(12, 'task.log', { line: 2 }));
		await settle();
		server.current.fail();
		await settle();
		expect(statuses.at(-1)).toBe('reconnecting');
		await vi.advanceTimersByTimeAsync(1000);
		await settle();
		expect(server.requests.at(-1)).toBe('/api/events?after=12');
		expect(statuses.at(-1)).toBe('live');
		// The server replays an overlap; only the new events come through, once, in order.
		server.current.push(
			frame(11, 'task.log', { line: 1 }) +
				frame(12, 'task.log', { line: 2 }) +
				frame(13, 'task.log', { line: 3 }) +
				frame(13, 'task.log', { line: 3 }) +
				frame(14, 'task.log', { line: 4 })
		);
		await settle();
		expect(events.map((e) => e.id)).toEqual([11, 12, 13, 14]);
		expect(stream.lastEventId).toBe(14);
	});

	it('reconnects when the server ends the stream or answers with an error', async () => {
		stream.start();
		await settle();
		server.current.end();
		await settle();
		expect(statuses.at(-1)).toBe('reconnecting');
		server.answerNext(503);
		await vi.advanceTimersByTimeAsync(1000);
		await settle();
		expect(statuses.at(-1)).toBe('reconnecting');
		await vi.advanceTimersByTimeAsync(1000);
		await settle();
		expect(statuses.at(-1)).toBe('live');
		expect(server.requests).toEqual([
			'/api/events?after=10',
			'/api/events?after=10',
			'/api/events?after=10'
		]);
	});

	it('gives up a silent connection after the keep-alive timeout', async () => {
		stream.start();
		await settle();
		server.current.push(': keep-alive\n\n');
		await vi.advanceTimersByTimeAsync(30_000);
		expect(server.count).toBe(1);
		await vi.advanceTimersByTimeAsync(15_000);
		await settle();
		expect(statuses.at(-1)).toBe('reconnecting');
		await vi.advanceTimersByTimeAsync(1000);
		await settle();
		expect(server.count).toBe(2);
	});

	it('stops and says so when the session is gone', async () => {
		server.answerNext(401);
		stream.start();
		await settle();
		expect(statuses.at(-1)).toBe('unauthorized');
		await vi.advanceTimersByTimeAsync(60_000);
		expect(server.requests).toHaveLength(1);
	});

	it('reconnects at once when the browser comes back online', async () => {
		const listeners = new Map<string, () => void>();
		const fakeWindow = {
			addEventListener: (name: string, fn: () => void) => listeners.set(name, fn),
			removeEventListener: (name: string) => listeners.delete(name),
			navigator: { onLine: true },
			document: { visibilityState: 'visible' }
		};
		stream.stop();
		stream = new EventStream({
			after: 10,
			fetch: server.fetch,
			onEvent: (e) => events.push(e),
			onStatus: (s) => statuses.push(s),
			backoff: () => 60_000,
			window: fakeWindow as never
		});
		stream.start();
		await settle();
		fakeWindow.navigator.onLine = false;
		listeners.get('offline')?.();
		await settle();
		expect(statuses.at(-1)).toBe('offline');
		fakeWindow.navigator.onLine = true;
		listeners.get('online')?.();
		await settle();
		expect(statuses.at(-1)).toBe('live');
		expect(server.count).toBe(2);
		stream.stop();
		expect(listeners.size).toBe(0);
	});
});

describe('SseParser', () => {
	it('reads every line ending, multi-line data and comments, in any split', () => {
		const text =
			': hello\r\nid: 1\r\nevent: a\r\ndata: x\r\ndata: y\r\n\r\nid: 2\revent: b\rdata: {"k":1}\r\r' +
			'id: 3\ndata:no-space\n\n';
		for (let split = 1; split < text.length; split++) {
			const out: SseMessage[] = [];
			const parser = new SseParser((m) => out.push(m));
			parser.feed(text.slice(0, split));
			parser.feed(text.slice(split));
			expect(out, `split at ${split}`).toEqual([
				{ id: '1', event: 'a', data: 'x\ny' },
				{ id: '2', event: 'b', data: '{"k":1}' },
				{ id: '3', event: 'message', data: 'no-space' }
			]);
		}
	});
});
