// The load generator's HTTP client: an undici Pool per instance with a fixed number of keep-alive
// connections, requests round-robin over the instances, and the Recorder that times and classifies
// every answer (an HDR histogram per endpoint, counts per outcome, counts per 100 ms).
import { performance } from 'node:perf_hooks';
import { build, type Histogram } from 'hdr-histogram-js';
import { Pool, type Dispatcher } from 'undici';

export const endpoints = ['sales', 'items', 'checkout', 'purchase'] as const;
export type Endpoint = (typeof endpoints)[number];
export type Kind = 'ok' | 'refused' | 'network' | 'server' | 'unexpected';
// outcome: "200", or the status and the service's error code ("409 item_sold"), or "network ECONNRESET"
export type Reply = { status: number; outcome: string; kind: Kind; body: Record<string, unknown> | null };

// The answers a correct service gives under this load; anything else is unexpected.
const expected: Record<Endpoint, readonly string[]> = {
  sales: ['200'],
  items: ['200'],
  checkout: ['200', '409 item_sold'],
  purchase: ['200', '409 item_sold', '429 limit_reached'],
};

// shedding: the run overloads the service on purpose, so 503 overloaded is a right answer.
export function classify(endpoint: Endpoint, status: number, outcome: string, shedding: boolean): Kind {
  if (status === 0) return 'network';
  if (shedding && outcome === '503 overloaded') return 'refused';
  if (status >= 500) return 'server';
  if (!expected[endpoint].includes(outcome)) return 'unexpected';
  return status < 300 ? 'ok' : 'refused';
}

// The nearest-rank percentile (q from 0 to 1) of measured values in any order: NaN when there are none.
export function percentile(values: number[], q: number): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

// Short buckets, so that a run of a few seconds still draws a line.
export const bucketMs = 100;
export type Bucket = Record<Endpoint | 'errors', number>;

export class Recorder {
  recording = false;
  startedAt = 0;
  endedAt = 0;
  total = 0;
  errors = 0;
  readonly shedding: boolean;
  readonly byEndpoint = new Map<Endpoint, { histogram: Histogram; outcomes: Map<string, number> }>();
  // The first answer (or error message) of each kind of error: what went wrong.
  readonly errorSamples = new Map<string, string>();
  readonly timeline: Bucket[] = [];

  constructor(shedding = false) {
    this.shedding = shedding;
  }

  begin(): void {
    this.recording = true;
    this.startedAt = this.endedAt = performance.now();
  }

  end(): void {
    this.recording = false;
  }

  elapsedMs(): number {
    return (this.recording ? performance.now() : this.endedAt) - this.startedAt;
  }

  count(endpoint: Endpoint, outcome: string): number {
    return this.byEndpoint.get(endpoint)?.outcomes.get(outcome) ?? 0;
  }

  record(endpoint: Endpoint, status: number, outcome: string, startMs: number, detail: string): Kind {
    const kind = classify(endpoint, status, outcome, this.shedding);
    if (!this.recording) return kind;
    const now = performance.now();
    this.endedAt = Math.max(this.endedAt, now);
    let stats = this.byEndpoint.get(endpoint);
    if (!stats) {
      // microseconds, up to a minute; a slower answer still counts (the histogram resizes)
      stats = { histogram: build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3, autoResize: true }), outcomes: new Map() };
      this.byEndpoint.set(endpoint, stats);
    }
    stats.histogram.recordValue(Math.max(1, Math.round((now - startMs) * 1000)));
    stats.outcomes.set(outcome, (stats.outcomes.get(outcome) ?? 0) + 1);
    this.total += 1;
    const index = Math.max(0, Math.floor((now - this.startedAt) / bucketMs));
    while (this.timeline.length <= index) this.timeline.push({ sales: 0, items: 0, checkout: 0, purchase: 0, errors: 0 });
    this.timeline[index]![endpoint] += 1;
    if (kind !== 'ok' && kind !== 'refused') {
      this.errors += 1;
      this.timeline[index]!.errors += 1;
      const key = `${endpoint} ${outcome}`;
      if (this.errorSamples.size < 20 && !this.errorSamples.has(key)) this.errorSamples.set(key, detail.slice(0, 300));
    }
    return kind;
  }
}

function parse(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

// undici's dispatch() with a handler that gathers the body: request() wraps every answer in a stream,
// which cost this process more CPU than the rest of a request, on the machine it shares with the service.
function send(pool: Pool, method: 'GET' | 'POST', path: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const chunks: Buffer[] = [];
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart: () => {},
      onResponseStart: (_controller, statusCode) => (status = statusCode),
      onResponseData: (_controller, chunk) => chunks.push(chunk),
      onResponseEnd: () => resolve({ status, text: Buffer.concat(chunks).toString() }),
      onResponseError: (_controller, error) => reject(error),
    };
    pool.dispatch({ method, path }, handler);
  });
}

const errorCode = (error: unknown) => String((error as { code?: unknown }).code ?? (error as Error).name);

export class Http {
  private readonly pools: Pool[];
  private readonly urls: string[];
  private readonly connections: number;
  private readonly recorder: Recorder;
  private next = 0;

  constructor(urls: string[], connections: number, recorder: Recorder) {
    this.urls = urls;
    this.connections = connections;
    this.recorder = recorder;
    this.pools = urls.map((url) => new Pool(url, { connections, pipelining: 1, headersTimeout: 30_000, bodyTimeout: 30_000, connectTimeout: 5_000 }));
  }

  // dueAt: when a paced (open-loop) request was due; its latency counts from then, not from when it left.
  async call(endpoint: Endpoint, method: 'GET' | 'POST', path: string, dueAt?: number): Promise<Reply> {
    const pool = this.pools[this.next]!;
    this.next = (this.next + 1) % this.pools.length;
    const start = dueAt ?? performance.now();
    try {
      const { status, text } = await send(pool, method, path);
      const body = parse(text);
      let outcome = typeof body?.error === 'string' ? `${status} ${body.error}` : `${status} not_json`;
      // a purchase must also say that it succeeded
      if (status < 300 && body) outcome = endpoint === 'purchase' && body.message !== 'Purchase successful' ? `${status} unexpected_body` : String(status);
      return { status, outcome, kind: this.recorder.record(endpoint, status, outcome, start, text), body };
    } catch (error) {
      const outcome = `network ${errorCode(error)}`;
      return { status: 0, outcome, kind: this.recorder.record(endpoint, 0, outcome, start, (error as Error).message), body: null };
    }
  }

  // Unrecorded GET /health over every connection before the clock starts: a fresh process's JIT and
  // connections would otherwise slow the first second of the run.
  async warmUp(ms: number): Promise<void> {
    const until = performance.now() + ms;
    await Promise.all(this.pools.flatMap((pool) => Array.from({ length: this.connections }, async () => {
      while (performance.now() < until) await send(pool, 'GET', '/health');
    })));
  }

  // Every instance must answer GET /health with 200 before any setup; returns what went wrong.
  async preflight(): Promise<string[]> {
    const problems = await Promise.all(this.pools.map(async (pool, index) => {
      const reply = await send(pool, 'GET', '/health').catch((error: Error) => ({ status: 0, text: `${errorCode(error)} ${error.message}` }));
      return reply.status === 200 ? [] : [`${this.urls[index]}/health: ${reply.status || 'unreachable'} ${reply.text.slice(0, 200)}`];
    }));
    return problems.flat();
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((pool) => pool.close()));
  }
}
