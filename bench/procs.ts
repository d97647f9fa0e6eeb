// Child processes of the benchmark: every one is tracked and killed when the benchmark exits, however
// it exits. Service instances and the bare HTTP server are started here; commands run to completion here.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const children = new Set<ChildProcess>();

const alive = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

// The last word: whatever is still running when this process exits is killed with it.
process.on('exit', () => {
  for (const child of children) if (alive(child)) child.kill('SIGKILL');
});

export function killAll(signal: NodeJS.Signals = 'SIGTERM'): void {
  for (const child of children) if (alive(child)) child.kill(signal);
}

export const benchPath = (file: string) => fileURLToPath(new URL(file, import.meta.url));

export type Child = { child: ChildProcess; pid: number; exited: Promise<number | null>; stdout: () => string };

const maxKeptOutput = 1_000_000;

// stdout and stderr go to logFile; each stderr line is also handed to onLine (progress, markers), and
// stdout is kept (up to 1 MB) for the caller to parse.
export function spawnLogged(command: string, args: string[], options: { env?: Record<string, string>; logFile: string; onLine?: (line: string) => void }): Child {
  const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const log = createWriteStream(options.logFile);
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    log.write(chunk);
    if (stdout.length < maxKeptOutput) stdout += chunk.toString();
  });
  createInterface({ input: child.stderr! }).on('line', (line) => {
    log.write(`${line}\n`);
    options.onLine?.(line);
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      children.delete(child);
      log.end(() => resolve(code));
    });
  });
  if (child.pid === undefined) {
    exited.catch(() => {});
    throw new Error(`could not start ${command}`);
  }
  return { child, pid: child.pid, exited, stdout: () => stdout };
}

// SIGTERM, then SIGKILL if it has not gone within graceMs.
export async function stopChild(target: Child, graceMs = 10_000): Promise<void> {
  if (alive(target.child)) target.child.kill('SIGTERM');
  const timer = setTimeout(() => alive(target.child) && target.child.kill('SIGKILL'), graceMs);
  await target.exited.catch(() => null);
  clearTimeout(timer);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

async function waitReady(target: Child, url: string, logFile: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!alive(target.child)) throw new Error(`${url} exited early; see ${logFile}:\n${await readFile(logFile, 'utf8').catch(() => '')}`);
    const ok = await fetch(url, { signal: AbortSignal.timeout(2_000) }).then((response) => response.ok, () => false);
    if (ok) return;
    if (Date.now() > deadline) {
      await stopChild(target, 1_000);
      throw new Error(`${url} not ready in ${timeoutMs} ms; see ${logFile}`);
    }
    await sleep(100);
  }
}

export type Server = Child & { url: string; port: number; logFile: string };

// A service's rate limits on but never reached: every request then counts in Redis, so Redis is on its path.
export const limitsNeverReached = {
  RATE_LIMIT: 'on',
  RATE_LIMIT_ADDRESS_MAX: '10000000',
  RATE_LIMIT_USER_MAX: '10000000',
  RATE_LIMIT_BAD_CODE_MAX: '10000000',
};

// A real service process, `node --trace-gc src/server.ts` (a line per garbage collection in its log, read
// by bench/memory.ts), ready once /health says PostgreSQL and Redis are both up (or, with `readyPath`
// /readyz, once PostgreSQL is: for a run without Redis).
export async function startService(env: Record<string, string>, logFile: string, readyPath = '/health'): Promise<Server> {
  const port = await freePort();
  const target = spawnLogged(process.execPath, ['--trace-gc', benchPath('../src/server.ts')], { env: { ...env, PORT: String(port) }, logFile });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(target, `${url}${readyPath}`, logFile, 30_000);
  return { ...target, url, port, logFile };
}

// The bare node:http server of the HTTP ceiling (bench/bare-server.ts), on a port of its own.
export async function startBareServer(logFile: string): Promise<Server> {
  const port = await freePort();
  const target = spawnLogged(process.execPath, [benchPath('bare-server.ts'), String(port)], { logFile });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(target, `${url}/health`, logFile, 10_000);
  return { ...target, url, port, logFile };
}

// Resident set size of a process in kB (VmRSS of /proc/<pid>/status), null once it is gone.
export async function rssKb(pid: number): Promise<number | null> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => null);
  const match = status && /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return match ? Number(match[1]) : null;
}
