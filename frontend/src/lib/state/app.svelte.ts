// Starting the app: who the user is (and whether to ask for a login), the state loaded from
// the API, then the event stream from the position that state was read at, so that nothing
// is missed or applied twice. Events are the only way the page learns of changes.
import { api, setUnauthorizedHandler } from '$lib/api/client';
import type {
	AppConfig,
	InboxItem,
	Message,
	MessageDelta,
	MessageWaiting,
	MessageStarted,
	Proposal,
	SessionInfo,
	Task,
	TaskLogEvent,
	ThreadNotice
} from '$lib/api/types';
import { EventStream, type StreamEvent, type StreamStatus } from '$lib/events/stream';
import { chat } from './chat.svelte';
import { inbox } from './inbox.svelte';
import { tasks } from './tasks.svelte';

type Phase = 'loading' | 'login' | 'ready' | 'error';

class AppState {
	phase: Phase = $state('loading');
	error: string | null = $state(null);
	session: SessionInfo | null = $state(null);
	config: AppConfig | null = $state(null);
	connection: StreamStatus = $state('connecting');
	private stream: EventStream | null = null;

	constructor() {
		setUnauthorizedHandler(() => this.loggedOut());
	}

	async boot() {
		this.phase = 'loading';
		this.error = null;
		try {
			this.session = await api.session();
			if (!this.session.authenticated) {
				this.phase = 'login';
				return;
			}
			// The messages page says where the event log stood when it was read; the rest is
			// read after it, and any change in between is replayed by the stream (records
			// carry updated_at, so a replayed older copy changes nothing).
			const after = await chat.loadLatest();
			const [config] = await Promise.all([api.config(), tasks.load(), inbox.load()]);
			this.config = config;
			this.follow(after);
			this.phase = 'ready';
		} catch (error) {
			if (this.phase === 'login') return;
			this.error = error instanceof Error ? error.message : String(error);
			this.phase = 'error';
		}
	}

	async login(token: string) {
		await api.login(token);
		await this.boot();
	}

	async logout() {
		await api.logout();
		this.loggedOut();
	}

	temporalUrl(taskId: string): string | null {
		const base = this.config?.temporal_ui_url;
		if (!base) return null;
		const ns = encodeURIComponent(this.config?.temporal_namespace || 'default');
		return `${base}/namespaces/${ns}/workflows/${encodeURIComponent(`task/${taskId}`)}`;
	}

	private loggedOut() {
		this.stream?.stop();
		this.stream = null;
		if (this.session?.auth === 'token' || this.session === null) this.phase = 'login';
	}

	private follow(after: number) {
		this.stream?.stop();
		this.stream = new EventStream({
			after,
			onEvent: (event) => dispatch(event),
			onStatus: (status) => {
				this.connection = status;
				if (status === 'unauthorized') this.loggedOut();
			},
			window: typeof window === 'undefined' ? undefined : window
		});
		this.stream.start();
	}
}

function dispatch({ id, kind, data }: StreamEvent) {
	switch (kind) {
		case 'message.created':
			return chat.onCreated(data as Message);
		case 'message.started':
			return chat.onStarted(data as MessageStarted);
		case 'message.delta':
			return chat.onDelta(data as MessageDelta);
		case 'message.waiting':
			return chat.onWaiting(data as MessageWaiting);
		case 'message.completed':
			return chat.onCompleted(data as Message);
		case 'proposal.created':
		case 'proposal.updated':
			return chat.onProposal(data as Proposal);
		case 'thread.notice':
			return chat.onNotice(data as ThreadNotice, id);
		case 'task.updated':
			return tasks.upsert(data as Task);
		case 'task.log':
			return tasks.onLog(data as TaskLogEvent, new Date().toISOString());
		case 'inbox.updated':
			return inbox.upsert(data as InboxItem);
		default:
			// task.input and kinds added later: nothing to show.
			return;
	}
}

export const app = new AppState();
