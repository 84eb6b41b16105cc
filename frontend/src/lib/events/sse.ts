// An incremental parser of the text/event-stream format
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream):
// feed it chunks as they arrive, in any split, and it hands out complete events.

export interface SseMessage {
	id: string | undefined;
	event: string;
	data: string;
}

export class SseParser {
	private buffer = '';
	private data: string[] = [];
	private event = '';
	private id: string | undefined = undefined;
	private sawCr = false;

	constructor(private readonly emit: (message: SseMessage) => void) {}

	feed(chunk: string) {
		let text = chunk;
		// A CR at the end of the previous chunk may be half of a CRLF.
		if (this.sawCr && text.startsWith('\n')) text = text.slice(1);
		this.sawCr = false;
		this.buffer += text;
		let start = 0;
		for (let i = 0; i < this.buffer.length; i++) {
			const c = this.buffer[i];
			if (c !== '\n' && c !== '\r') continue;
			this.line(this.buffer.slice(start, i));
			if (c === '\r') {
				if (i + 1 === this.buffer.length) this.sawCr = true;
				else if (this.buffer[i + 1] === '\n') i++;
			}
			start = i + 1;
		}
		this.buffer = this.buffer.slice(start);
	}

	private line(line: string) {
		if (line === '') {
			if (this.data.length > 0) {
				this.emit({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
			}
			this.data = [];
			this.event = '';
			this.id = undefined;
			return;
		}
		if (line.startsWith(':')) return;
		const colon = line.indexOf(':');
		const field = colon === -1 ? line : line.slice(0, colon);
		let value = colon === -1 ? '' : line.slice(colon + 1);
		if (value.startsWith(' ')) value = value.slice(1);
		if (field === 'data') this.data.push(value);
		else if (field === 'event') this.event = value;
		else if (field === 'id' && !value.includes('\0')) this.id = value;
	}
}
