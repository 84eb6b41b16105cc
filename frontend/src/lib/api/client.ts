// The API over fetch: JSON in and out, every failure an `ApiError` with the server's stable
// code (or `network` when the server was not reached).
import type {
	AppConfig,
	ConfirmBody,
	Confirmed,
	InboxItem,
	Message,
	MessagePage,
	Project,
	Proposal,
	ReviewBody,
	BudgetBody,
	SessionInfo,
	Task,
	TaskDetail,
	TaskLogLine
} from './types';

export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly code: string,
		message: string
	) {
		super(message);
		this.name = 'ApiError';
	}
}

let onUnauthorized: () => void = () => {};

/** Called whenever the server says the session is gone, so the app can ask for a login. */
export function setUnauthorizedHandler(handler: () => void) {
	onUnauthorized = handler;
}

async function request<T>(
	method: 'GET' | 'POST',
	path: string,
	body?: unknown,
	headers: Record<string, string> = {}
): Promise<T> {
	let response: Response;
	try {
		response = await fetch(path, {
			method,
			credentials: 'same-origin',
			headers: {
				accept: 'application/json',
				...(body === undefined ? {} : { 'content-type': 'application/json' }),
				...headers
			},
			body: body === undefined ? undefined : JSON.stringify(body)
		});
	} catch {
		throw new ApiError(0, 'network', 'Cannot reach mainloop. Check your connection.');
	}
	if (response.status === 204) return undefined as T;
	const text = await response.text();
	let json: unknown = undefined;
	try {
		json = text ? JSON.parse(text) : undefined;
	} catch {
		// A proxy's HTML error page, say; reported below by status.
	}
	if (!response.ok) {
		const error = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
		if (response.status === 401) onUnauthorized();
		throw new ApiError(
			response.status,
			error?.code ?? 'http_' + response.status,
			error?.message ?? `The server answered ${response.status}.`
		);
	}
	return json as T;
}

const get = <T>(path: string) => request<T>('GET', path);
const post = <T>(path: string, body?: unknown, headers?: Record<string, string>) =>
	request<T>('POST', path, body, headers);
const id = encodeURIComponent;

export const api = {
	session: () => get<SessionInfo>('/api/session'),
	login: (token: string) => post<void>('/api/login', { token }),
	logout: () => post<void>('/api/logout'),
	config: () => get<AppConfig>('/api/config'),

	messages: (before?: number, limit = 50) =>
		get<MessagePage>(
			`/api/messages?limit=${limit}` + (before === undefined ? '' : `&before=${before}`)
		),
	/** The key makes a retry safe: the server stores one message per key. */
	postMessage: (content: string, idempotencyKey: string) =>
		post<Message>('/api/messages', { content }, { 'idempotency-key': idempotencyKey }),
	confirmProposal: (proposal: string, changes: ConfirmBody = {}) =>
		post<Confirmed>(`/api/proposals/${id(proposal)}/confirm`, changes),
	rejectProposal: (proposal: string) => post<Proposal>(`/api/proposals/${id(proposal)}/reject`),

	tasks: (limit = 200) => get<Task[]>(`/api/tasks?limit=${limit}`),
	task: (task: string) => get<TaskDetail>(`/api/tasks/${id(task)}`),
	logs: (task: string, tail = 500) =>
		get<TaskLogLine[]>(`/api/tasks/${id(task)}/logs?tail=${tail}`),
	answer: (task: string, answers: Record<string, string>) =>
		post<Task>(`/api/tasks/${id(task)}/answer`, { answers }),
	reviewPlan: (task: string, review: ReviewBody) =>
		post<Task>(`/api/tasks/${id(task)}/review-plan`, review),
	retry: (task: string) => post<Task>(`/api/tasks/${id(task)}/retry`),
	budget: (task: string, body: BudgetBody) => post<Task>(`/api/tasks/${id(task)}/budget`, body),
	cancel: (task: string, reason?: string) =>
		post<Task>(`/api/tasks/${id(task)}/cancel`, reason ? { reason } : {}),

	inbox: () => get<InboxItem[]>('/api/inbox'),
	markRead: (item: string) => post<InboxItem[]>(`/api/inbox/${id(item)}/read`),
	markAllRead: () => post<InboxItem[]>('/api/inbox/read-all'),
	projects: () => get<Project[]>('/api/projects')
};

/** What to tell a person about a failure. */
export function errorText(error: unknown): string {
	if (error instanceof ApiError) return error.message;
	if (error instanceof Error) return error.message;
	return String(error);
}
