// The run's report: one plain object (written as JSON, drawn as HTML) and its text form for stdout.
import type { Histogram } from 'hdr-histogram-js';
import { withoutPassword } from '../src/config.ts';
import type { Invariants } from './invariants.ts';
import type { Options } from './options.ts';
import type { Fact } from './run.ts';
import { classify, endpoints, type Bucket, type Endpoint, type Kind, type Recorder } from './stats.ts';

export type Latency = { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
export type EndpointReport = {
  endpoint: Endpoint;
  requests: number;
  rps: number;
  outcomes: { outcome: string; kind: Kind; count: number; rps: number }[];
  latencyMs: Latency;
  // [percentile, ms] pairs from 0 to 100, closer together towards the tail: the HDR percentile spectrum.
  spectrum: [number, number][];
};

export type Report = {
  scenario: string;
  startedAt: string;
  ok: boolean;
  failures: string[];
  stopReason: string | null;
  targets: string[];
  options: Options;
  durationS: number;
  totals: { requests: number; rps: number; errors: number };
  endpoints: EndpointReport[];
  errors: { network: Record<string, number>; server: Record<string, number>; unexpected: Record<string, number>; samples: string[] };
  // Per-second counts; coveredS is the share of that second inside the run (the last one is partial).
  timeline: (Bucket & { coveredS: number })[];
  facts: Record<string, string | number | null>;
  invariants: Invariants;
};

const ms = (us: number) => Math.round(us) / 1000;
const rate = (count: number, seconds: number) => Math.round((count / Math.max(seconds, 1e-3)) * 10) / 10;

// HDR answers with the highest value equivalent to a bucket, which may exceed the largest one recorded.
const at = (histogram: Histogram, percentile: number) => ms(Math.min(histogram.getValueAtPercentile(percentile), histogram.maxValue));

function spectrum(histogram: Histogram): [number, number][] {
  const points: [number, number][] = [];
  const top = Math.min(5, Math.log10(Math.max(histogram.totalCount, 10)));
  for (let x = 0; x <= top + 1e-9; x += 0.125) {
    const percentile = 100 * (1 - 10 ** -x);
    points.push([Number(percentile.toFixed(4)), at(histogram, percentile)]);
  }
  points.push([100, ms(histogram.maxValue)]);
  return points;
}

function endpointReport(recorder: Recorder, endpoint: Endpoint, seconds: number): EndpointReport | null {
  const stats = recorder.byEndpoint.get(endpoint);
  if (!stats) return null;
  const h = stats.histogram;
  const outcomes = [...stats.outcomes].sort((a, b) => b[1] - a[1]).map(([outcome, count]) => ({
    outcome,
    kind: classify(endpoint, Number(outcome.split(' ')[0]) || 0, outcome),
    count,
    rps: rate(count, seconds),
  }));
  return {
    endpoint,
    requests: stats.count,
    rps: rate(stats.count, seconds),
    outcomes,
    latencyMs: {
      p50: at(h, 50),
      p90: at(h, 90),
      p99: at(h, 99),
      p999: at(h, 99.9),
      max: ms(h.maxValue),
      mean: Math.round(h.mean) / 1000,
    },
    spectrum: spectrum(h),
  };
}

export function failuresOf(recorder: Recorder, invariants: Invariants): string[] {
  const failures: string[] = [];
  const count = (map: Map<string, number>) => [...map.values()].reduce((sum, n) => sum + n, 0);
  const { server, unexpected, network } = recorder.errorsByKind;
  if (server.size > 0) failures.push(`${count(server)} answers with a 5xx status`);
  if (unexpected.size > 0) failures.push(`${count(unexpected)} unexpected answers`);
  // All the load comes from one address: the service's per-address limit refuses most of it.
  const limited = [...unexpected].filter(([key]) => key.endsWith(' 429 rate_limited')).reduce((sum, [, n]) => sum + n, 0);
  if (limited > recorder.total / 2) {
    failures.unshift(`${limited} of ${recorder.total} answers were 429 rate_limited: the service's rate limits took this load generator for one client sending too much; start the service with RATE_LIMIT=off, or a higher RATE_LIMIT_ADDRESS_MAX`);
  }
  if (network.size > 0) failures.push(`${count(network)} requests without an answer (network errors)`);
  for (const check of invariants.checks) if (!check.ok) failures.push(`invariant broken: ${check.name} (${check.detail})`);
  return failures;
}

export function buildReport(input: { options: Options; recorder: Recorder; startedAt: Date; stopReason: string | null; facts: Fact[]; invariants: Invariants }): Report {
  const { options, recorder, invariants } = input;
  const seconds = recorder.elapsedMs() / 1000;
  const failures = failuresOf(recorder, invariants);
  const shownOptions = { ...options, databaseUrl: withoutPassword(options.databaseUrl) };
  return {
    scenario: options.scenario,
    startedAt: input.startedAt.toISOString(),
    ok: failures.length === 0,
    failures,
    stopReason: input.stopReason,
    targets: options.urls,
    options: shownOptions,
    durationS: Math.round(seconds * 1000) / 1000,
    totals: { requests: recorder.total, rps: rate(recorder.total, seconds), errors: recorder.errors },
    endpoints: endpoints.map((endpoint) => endpointReport(recorder, endpoint, seconds)).filter((e): e is EndpointReport => e !== null),
    errors: {
      network: Object.fromEntries(recorder.errorsByKind.network),
      server: Object.fromEntries(recorder.errorsByKind.server),
      unexpected: Object.fromEntries(recorder.errorsByKind.unexpected),
      samples: [...recorder.errorSamples].map(([key, detail]) => `${key}: ${detail}`),
    },
    timeline: recorder.timeline.map((bucket) => ({ ...bucket, coveredS: Math.round(Math.min(1, seconds - bucket.second) * 1000) / 1000 })),
    facts: Object.fromEntries(input.facts),
    invariants,
  };
}

// The timeline without a last bucket too short to give a meaningful rate.
export function fullSeconds(report: Report): Report['timeline'] {
  return report.timeline.filter((bucket) => bucket.coveredS >= 0.25);
}

const num = (value: number) => value.toLocaleString('en-US', { maximumFractionDigits: 1 });

function table(header: string[], rows: (string | number)[][]): string[] {
  const cells = [header, ...rows.map((row) => row.map((cell) => (typeof cell === 'number' ? num(cell) : cell)))];
  const widths = header.map((_, column) => Math.max(...cells.map((row) => row[column]!.length)));
  const numeric = header.map((_, column) => rows.every((row) => typeof row[column] === 'number'));
  return cells.map((row) => row.map((cell, column) => (numeric[column] ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!))).join('  ').trimEnd());
}

export function latencyNote(report: Report): string {
  const { concurrency, connections } = report.options;
  const slots = connections * report.targets.length;
  if (report.options.rate !== null && report.options.rate !== undefined) {
    return `Latency: from when a request was due on the fixed schedule of ${report.options.rate} req/s (open loop) to the last byte of its answer, including any wait for one of the ${slots} connections.`;
  }
  const queueing = concurrency > slots ? `, including any wait for one of the ${slots} connections (concurrency ${concurrency})` : '';
  return `Latency: from sending a request to the last byte of its answer${queueing}.`;
}

export function textReport(report: Report): string {
  const lines = [
    `${report.scenario}: ${report.targets.length} instance(s) ${report.targets.join(' ')}, ${report.options.connections} connections each, ${report.options.rate ? `paced at ${report.options.rate} req/s` : `concurrency ${report.options.concurrency}`}`,
    `${report.durationS} s measured (${report.stopReason ?? 'finished'}), ${num(report.totals.requests)} requests, ${num(report.totals.rps)} req/s, ${report.totals.errors} errors`,
    '',
    ...table(['endpoint', 'outcome', 'kind', 'count', 'req/s'],
      report.endpoints.flatMap((e) => e.outcomes.map((o) => [e.endpoint, o.outcome, o.kind, o.count, o.rps]))),
    '',
    latencyNote(report),
    ...table(['latency ms', 'count', 'req/s', 'p50', 'p90', 'p99', 'p99.9', 'max'],
      report.endpoints.map((e) => [e.endpoint, e.requests, e.rps, e.latencyMs.p50, e.latencyMs.p90, e.latencyMs.p99, e.latencyMs.p999, e.latencyMs.max])),
    '',
    `errors: network ${JSON.stringify(report.errors.network)}, 5xx ${JSON.stringify(report.errors.server)}, unexpected ${JSON.stringify(report.errors.unexpected)}`,
    ...report.errors.samples.map((sample) => `  e.g. ${sample}`),
    `req/s by second: ${fullSeconds(report).map((b) => Math.round(endpoints.reduce((sum, e) => sum + b.requests[e], 0) / b.coveredS)).join(' ')}`,
    '',
    ...Object.entries(report.facts).map(([label, value]) => `${label}: ${value ?? '-'}`),
    '',
    'invariants (read back from the database):',
    ...report.invariants.checks.map((check) => `  ${check.ok ? 'ok    ' : 'BROKEN'} ${check.name}: ${check.detail}`),
    '',
    report.ok ? 'PASS' : `FAIL\n${report.failures.map((failure) => `  ${failure}`).join('\n')}`,
  ];
  return lines.join('\n');
}
