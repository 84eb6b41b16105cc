// Tasks by id, kept current by `task.updated`, and the live log lines of the tasks whose
// logs are open (loaded once from the API, then appended from `task.log` events).
import { api } from '$lib/api/client';
import type { Task, TaskLogEvent, TaskLogLine } from '$lib/api/types';

/** Most lines kept per task in the page. */
const LOG_LIMIT = 5000;

interface Log {
	lines: TaskLogLine[];
	loading: boolean;
	error: string | null;
}

class TasksState {
	byId: Record<string, Task> = $state({});
	loaded = $state(false);
	logs: Record<string, Log> = $state({});

	get all(): Task[] {
		return Object.values(this.byId).sort(
			(a, b) => Date.parse(b.created_at) - Date.parse(a.created_at)
		);
	}

	byProposal(proposalId: string): Task | undefined {
		return Object.values(this.byId).find((t) => t.proposal_id === proposalId);
	}

	async load() {
		const tasks = await api.tasks();
		for (const task of tasks) this.upsert(task);
		this.loaded = true;
	}

	/** Takes a copy of a task unless the one held is newer (events may replay older ones). */
	upsert(task: Task) {
		const held = this.byId[task.id];
		if (held && Date.parse(held.updated_at) > Date.parse(task.updated_at)) return;
		this.byId[task.id] = task;
	}

	/** Loads a task's recent log once; later lines arrive as events. */
	async openLog(taskId: string) {
		const held = this.logs[taskId];
		if (held && (held.loading || held.error === null)) return;
		this.logs[taskId] = { lines: held?.lines ?? [], loading: true, error: null };
		try {
			const lines = await api.logs(taskId, 1000);
			const log = this.logs[taskId]!;
			// Lines that came as events while loading are kept, once.
			log.lines = merge(lines, log.lines);
			log.loading = false;
		} catch (error) {
			const log = this.logs[taskId]!;
			log.loading = false;
			log.error = error instanceof Error ? error.message : String(error);
		}
	}

	onLog(event: TaskLogEvent, createdAt: string) {
		const log = this.logs[event.task_id];
		if (!log) return; // nobody is looking; the API has it when someone does
		const line: TaskLogLine = { ...event, created_at: createdAt };
		log.lines = merge(log.lines, [line]);
	}
}

function lineKey(line: TaskLogLine) {
	return `${line.job}\u0000${line.line}`;
}

function merge(a: TaskLogLine[], b: TaskLogLine[]): TaskLogLine[] {
	const seen = new Set(a.map(lineKey));
	const merged = a.slice();
	for (const line of b) if (!seen.has(lineKey(line))) merged.push(line);
	return merged.length > LOG_LIMIT ? merged.slice(-LOG_LIMIT) : merged;
}

export const tasks = new TasksState();
