// What the load generator measured: one HDR histogram per endpoint, counts per outcome, errors by kind,
// and per-second buckets. Only requests made while recording (the timed phase) are counted.
import { performance } from 'node:perf_hooks';
import { build, type Histogram } from 'hdr-histogram-js';

export const endpoints = ['sales', 'items', 'checkout', 'purchase'] as const;
export type Endpoint = (typeof endpoints)[number];

// Outcome keys are "200" or "<status> <error code>"; a request without a response is "network <code>".
// These are the answers a correct service gives under this load; anything else is unexpected.
const expected: Record<Endpoint, readonly string[]> = {
  sales: ['200'],
  items: ['200'],
  checkout: ['200', '409 item_sold'],
  purchase: ['200', '409 item_sold', '429 limit_reached'],
};

export type Kind = 'ok' | 'refused' | 'network' | 'server' | 'unexpected';

// `shedding`: the run overloads the service on purpose, so 503 overloaded is its right answer.
export function classify(endpoint: Endpoint, status: number, outcome: string, shedding = false): Kind {
  if (status === 0) return 'network';
  if (shedding && outcome === '503 overloaded') return 'refused';
  if (status >= 500) return 'server';
  if (!expected[endpoint].includes(outcome)) return 'unexpected';
  return status < 300 ? 'ok' : 'refused';
}

export type Bucket = { second: number; requests: Record<Endpoint, number>; ok: number; refused: number; errors: number };

type EndpointStats = { histogram: Histogram; outcomes: Map<string, number>; count: number };

// Latencies in microseconds, up to a minute; a slower answer still counts (the histogram resizes).
function newHistogram(): Histogram {
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3, autoResize: true });
}

function emptyBucket(second: number): Bucket {
  return { second, requests: { sales: 0, items: 0, checkout: 0, purchase: 0 }, ok: 0, refused: 0, errors: 0 };
}

export class Recorder {
  recording = false;
  startedAt = 0;
  endedAt = 0;
  total = 0;
  errors = 0;
  readonly byEndpoint = new Map<Endpoint, EndpointStats>();
  readonly errorsByKind = { network: new Map<string, number>(), server: new Map<string, number>(), unexpected: new Map<string, number>() };
  // The first answer (or error message) seen for each kind of error, to tell what went wrong.
  readonly errorSamples = new Map<string, string>();
  readonly timeline: Bucket[] = [];

  private readonly shedding: boolean;

  constructor(shedding = false) {
    this.shedding = shedding;
  }

  begin(): void {
    this.recording = true;
    this.startedAt = performance.now();
    this.endedAt = this.startedAt;
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

  requests(endpoint: Endpoint): number {
    return this.byEndpoint.get(endpoint)?.count ?? 0;
  }

  record(endpoint: Endpoint, status: number, outcome: string, startMs: number, detail?: string): Kind {
    const kind = classify(endpoint, status, outcome, this.shedding);
    if (!this.recording) return kind;
    const now = performance.now();
    this.endedAt = Math.max(this.endedAt, now);
    const stats = this.endpointStats(endpoint);
    stats.histogram.recordValue(Math.max(1, Math.round((now - startMs) * 1000)));
    stats.outcomes.set(outcome, (stats.outcomes.get(outcome) ?? 0) + 1);
    stats.count += 1;
    this.total += 1;
    const bucket = this.bucketAt(now);
    bucket.requests[endpoint] += 1;
    if (kind === 'ok' || kind === 'refused') {
      bucket[kind] += 1;
    } else {
      bucket.errors += 1;
      this.errors += 1;
      const byKind = this.errorsByKind[kind];
      const key = `${endpoint} ${outcome}`;
      byKind.set(key, (byKind.get(key) ?? 0) + 1);
      if (this.errorSamples.size < 20 && !this.errorSamples.has(key)) this.errorSamples.set(key, (detail ?? '').slice(0, 300));
    }
    return kind;
  }

  private endpointStats(endpoint: Endpoint): EndpointStats {
    let stats = this.byEndpoint.get(endpoint);
    if (!stats) {
      stats = { histogram: newHistogram(), outcomes: new Map(), count: 0 };
      this.byEndpoint.set(endpoint, stats);
    }
    return stats;
  }

  private bucketAt(now: number): Bucket {
    const second = Math.max(0, Math.floor((now - this.startedAt) / 1000));
    while (this.timeline.length <= second) this.timeline.push(emptyBucket(this.timeline.length));
    return this.timeline[second]!;
  }
}
