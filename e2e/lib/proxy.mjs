// A TCP proxy between the browser and mainloop that a test can cut: every open connection
// is dropped and new ones are refused until it is restored. This is how a phone loses its
// network, which the app must survive without losing or repeating anything.

import { connect, createServer } from 'node:net';

export async function startProxy(targetUrl) {
	const target = new URL(targetUrl);
	const sockets = new Set();
	let cut = false;
	const server = createServer((client) => {
		if (cut) {
			client.destroy();
			return;
		}
		const upstream = connect(Number(target.port), target.hostname);
		for (const socket of [client, upstream]) {
			sockets.add(socket);
			socket.on('close', () => sockets.delete(socket));
			socket.on('error', () => {
				client.destroy();
				upstream.destroy();
			});
		}
		client.pipe(upstream);
		upstream.pipe(client);
	});
	await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
	const { port } = server.address();
	return {
		url: `http://127.0.0.1:${port}`,
		/** Drops every connection and refuses new ones. */
		cut() {
			cut = true;
			for (const socket of sockets) socket.destroy();
		},
		restore() {
			cut = false;
		},
		close() {
			cut = true;
			for (const socket of sockets) socket.destroy();
			return new Promise((ok) => server.close(ok));
		}
	};
}
