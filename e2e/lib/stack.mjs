// The product under test: `mainloop dev --demo` (the real binary, the Temporal dev server, the
// real agent and Claude Code CLI, on a scripted model and a fake GitHub), on free ports, with
// polls made fast so a whole task runs in test time.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The `mainloop` binary: `MAINLOOP_BIN`, else the debug build in the cargo target dir. */
export function mainloopBin() {
	if (process.env.MAINLOOP_BIN) return process.env.MAINLOOP_BIN;
	const target = process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target');
	return join(target, 'debug', 'mainloop');
}

function claudeBin() {
	if (process.env.MAINLOOP_CLAUDE_BIN) return process.env.MAINLOOP_CLAUDE_BIN;
	return join(ROOT, '.tools/claude-code/node_modules/.bin/claude');
}

/** A port nothing listens on right now. */
export function freePort() {
	return new Promise((ok, fail) => {
		const server = createServer();
		server.unref();
		server.on('error', fail);
		server.listen(0, '127.0.0.1', () => {
			const { port } = server.address();
			server.close(() => ok(port));
		});
	});
}

/**
 * Starts `mainloop dev --demo`; resolves once it prints its URL.
 * @returns {Promise<{url: string, temporalUi: string | undefined, stop: () => Promise<void>, log: () => string}>}
 */
export async function startDemo({ env = {} } = {}) {
	const bin = mainloopBin();
	if (!existsSync(bin)) throw new Error(`no mainloop binary at ${bin}: run cargo build first`);
	const agent = join(dirname(bin), 'mainloop-agent');
	const home = mkdtempSync(join(tmpdir(), 'mainloop-e2e-home-'));
	const [temporalPort, uiPort] = [await freePort(), await freePort()];
	const child = spawn(
		bin,
		[
			'dev',
			'--demo',
			'--listen',
			'127.0.0.1:0',
			'--temporal-port',
			String(temporalPort),
			'--temporal-ui-port',
			String(uiPort)
		],
		{
			env: {
				PATH: process.env.PATH,
				HOME: home,
				RUST_LOG: 'info,temporalio_sdk_core=warn,sqlx=warn',
				MAINLOOP_AGENT_BIN: agent,
				MAINLOOP_CLAUDE_BIN: claudeBin(),
				// Fast polls and an early merge: a whole task in well under a minute.
				MAINLOOP_CI_POLL: '200ms',
				MAINLOOP_CI_POLL_MAX: '500ms',
				MAINLOOP_HUMAN_POLL: '300ms',
				MAINLOOP_HUMAN_POLL_MAX: '1s',
				MAINLOOP_REVIEW_POLL: '300ms',
				MAINLOOP_REVIEW_POLL_MAX: '1s',
				MAINLOOP_RETRY_INITIAL: '100ms',
				MAINLOOP_DEMO_MERGE_AFTER: '8s',
				...env
			},
			stdio: ['ignore', 'pipe', 'pipe']
		}
	);
	let output = '';
	child.stdout.on('data', (chunk) => (output += chunk));
	child.stderr.on('data', (chunk) => (output += chunk));
	const exited = new Promise((ok) => child.on('exit', (code, signal) => ok({ code, signal })));

	const url = await new Promise((ok, fail) => {
		const deadline = setTimeout(
			() => fail(new Error(`mainloop dev --demo did not start:\n${output}`)),
			120_000
		);
		const look = () => {
			const found = output.match(/^mainloop\s+(http:\/\/\S+)/m);
			if (found) {
				clearTimeout(deadline);
				ok(found[1]);
			}
		};
		child.stdout.on('data', look);
		exited.then(({ code, signal }) => {
			clearTimeout(deadline);
			fail(new Error(`mainloop dev --demo exited (${code ?? signal}):\n${output}`));
		});
	});
	const temporalUi = output.match(/^temporal-ui\s+(\S+)/m)?.[1];

	return {
		url,
		temporalUi,
		log: () => output,
		async stop() {
			if (child.exitCode === null && child.signalCode === null) {
				child.kill('SIGINT');
				const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
				await exited;
				clearTimeout(timer);
			}
			rmSync(home, { recursive: true, force: true });
		}
	};
}
