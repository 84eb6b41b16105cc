// What the user told a task, said back in words for the task page.
import type { TaskInputRecord } from './api/types';

export interface InputLine {
	/** What was done, e.g. "Answered 2 questions". */
	title: string;
	/** Details, one per line, e.g. "Placement: A new module". */
	details: string[];
}

/** "placement" → "Placement", "error-handling" → "Error handling". */
function humanize(id: string): string {
	const words = id.replace(/[-_]+/g, ' ').trim();
	return words.charAt(0).toUpperCase() + words.slice(1);
}

function text(value: unknown): string {
	return typeof value === 'string' ? value : '';
}

export function describeInput(input: TaskInputRecord): InputLine {
	const payload = (input.payload ?? {}) as Record<string, unknown>;
	switch (input.kind) {
		case 'answers': {
			const answers = Array.isArray(payload.answers) ? payload.answers : [];
			const details = answers.map((a: Record<string, unknown>) =>
				`${humanize(text(a.question_id))}: ${text(a.answer)}`.trim()
			);
			const n = details.length;
			return { title: `Answered ${n} question${n === 1 ? '' : 's'}`, details };
		}
		case 'plan_review': {
			const action = text(payload.action);
			if (action === 'approve') return { title: 'Approved the plan', details: [] };
			if (action === 'revise')
				return { title: 'Asked for changes to the plan', details: [text(payload.text)] };
			return { title: 'Cancelled at plan review', details: [] };
		}
		case 'retry':
			return { title: 'Retried the failed step', details: [] };
		case 'cancel':
			return {
				title: 'Cancelled the task',
				details: text(payload.reason) ? [text(payload.reason)] : []
			};
		default:
			return { title: humanize(input.kind), details: [] };
	}
}
