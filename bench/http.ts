// HTTP to the service: one undici Pool per instance with a fixed number of keep-alive connections,
// requests spread round-robin over the instances, every answer timed and classified by the Recorder.
import { performance } from 'node:perf_hooks';
import { Pool, type Dispatcher } from 'undici';
import type { Endpoint, Kind, Recorder } from './stats.ts';

export type Reply = {
  status: number; // 0 when no response arrived
  outcome: string; // "200", "409 item_sold", "network ECONNRESET", ...
  kind: Kind;
  body: Record<string, unknown> | null;
};

const timeoutMs = 30_000;

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : (error as Error).name || 'Error';
}

// "200", or the status and the service's error code; a purchase must also say it succeeded.
function outcomeOf(endpoint: Endpoint, status: number, body: Record<string, unknown> | null): string {
  if (status >= 200 && status < 300) {
    if (!body) return `${status} not_json`;
    if (endpoint === 'purchase' && body.message !== 'Purchase successful') return `${status} unexpected_body`;
    return String(status);
  }
  return typeof body?.error === 'string' ? `${status} ${body.error}` : `${status} not_json`;
}

function parse(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

// undici's low-level dispatch with a handler that gathers the body: request() wraps every response in a
// Readable stream, which cost the load generator more CPU than the rest of a request's handling, and this
// process shares the machine with the service it measures.
function send(pool: Pool, method: 'GET' | 'POST', path: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const chunks: Buffer[] = [];
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart: () => {},
      onResponseStart: (_controller, statusCode) => {
        status = statusCode;
      },
      onResponseData: (_controller, chunk) => {
        chunks.push(chunk);
      },
      onResponseEnd: () => resolve({ status, text: chunks.length === 1 ? chunks[0]!.toString() : Buffer.concat(chunks).toString() }),
      onResponseError: (_controller, error) => reject(error),
    };
    pool.dispatch({ method, path }, handler);
  });
}

export class Http {
  private readonly pools: Pool[];
  private next = 0;
  inFlight = 0;

  private readonly recorder: Recorder;
  private readonly urls: string[];
  private readonly connections: number;

  constructor(urls: string[], connections: number, recorder: Recorder) {
    this.recorder = recorder;
    this.urls = urls;
    this.connections = connections;
    this.pools = urls.map((url) => new Pool(url, {
      connections,
      pipelining: 1,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      connectTimeout: 5_000,
    }));
  }

  // dueAt: when a paced (open-loop) request was due; its latency counts from then, not from when it left.
  async call(endpoint: Endpoint, method: 'GET' | 'POST', path: string, dueAt?: number): Promise<Reply> {
    const pool = this.pools[this.next]!;
    this.next = (this.next + 1) % this.pools.length;
    const start = dueAt ?? performance.now();
    this.inFlight += 1;
    try {
      const response = await send(pool, method, path);
      const body = parse(response.text);
      const outcome = outcomeOf(endpoint, response.status, body);
      const kind = this.recorder.record(endpoint, response.status, outcome, start, response.text);
      return { status: response.status, outcome, kind, body };
    } catch (error) {
      const outcome = `network ${errorCode(error)}`;
      const kind = this.recorder.record(endpoint, 0, outcome, start, (error as Error).message);
      return { status: 0, outcome, kind, body: null };
    } finally {
      this.inFlight -= 1;
    }
  }

  // The load generator is a fresh process: its own JIT and its connections would otherwise slow the
  // first second of every run (about a fifth, measured side by side). One loop per connection reads
  // GET /health, unrecorded, for `ms` before the clock starts.
  async warmUp(ms: number): Promise<void> {
    const until = performance.now() + ms;
    await Promise.all(this.pools.flatMap((pool) => Array.from({ length: this.connections }, async () => {
      while (performance.now() < until) {
        parse((await send(pool, 'GET', '/health')).text);
      }
    })));
  }

  // Before any setup: every instance must answer GET /health with 200. Returns what went wrong, if anything.
  async preflight(): Promise<string[]> {
    const problems = await Promise.all(this.pools.map(async (pool, index) => {
      try {
        const response = await pool.request({ method: 'GET', path: '/health', headersTimeout: 5_000, bodyTimeout: 5_000 });
        const text = await response.body.text();
        return response.statusCode === 200 ? null : `${this.urls[index]}/health answered ${response.statusCode}: ${text.slice(0, 200)}`;
      } catch (error) {
        return `${this.urls[index]} is unreachable: ${errorCode(error)} ${(error as Error).message}`;
      }
    }));
    return problems.filter((problem): problem is string => problem !== null);
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((pool) => pool.close()));
  }
}
