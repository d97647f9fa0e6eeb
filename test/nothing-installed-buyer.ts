// Run by test/nothing-installed.test.ts inside a network namespace of its own: starts the service with no
// URLs, waits for /health, checks an item out and buys it, stops the service, and prints what it saw.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const serverPath = fileURLToPath(new URL('../src/server.ts', import.meta.url));
const url = 'http://127.0.0.1:8080';
const startedAt = performance.now();
const server = spawn(process.execPath, [serverPath], { env: { ...process.env, DATABASE_URL: '', REDIS_URL: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
let log = '';
server.stdout.on('data', (chunk) => (log += chunk));
server.stderr.on('data', (chunk) => (log += chunk));
const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));

let health: { status: number; body: unknown } | null = null;
for (let i = 0; i < 600 && health?.status !== 200; i += 1) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  health = await fetch(`${url}/health`).then(async (response) => ({ status: response.status, body: await response.json() }), () => null);
}
const healthyAfterMs = Math.round(performance.now() - startedAt);
const sales = (await (await fetch(`${url}/sales`)).json()) as { sales: { id: number; open: boolean }[] };
const sale = sales.sales.find((candidate) => candidate.open)!;
const items = (await (await fetch(`${url}/sales/${sale.id}/items?limit=1`)).json()) as { items: { id: number }[] };
const issued = (await (await fetch(`${url}/checkout?user_id=newcomer&id=${items.items[0]!.id}`, { method: 'POST' })).json()) as { code: string };
const purchase = (await fetch(`${url}/purchase?code=${issued.code}`, { method: 'POST' })).status;
server.kill('SIGTERM');
const exit = await exited;
const message = (line: string) => {
  try {
    return (JSON.parse(line) as { msg?: string }).msg ?? line;
  } catch {
    return line;
  }
};
const lines = log.split('\n').filter(Boolean).map(message);
console.log(JSON.stringify({ health, purchase, log: lines, exit, healthyAfterMs }));
