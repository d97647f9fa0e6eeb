// Reports: a load run as one plain object (written as JSON), its text for stdout, a self-contained
// HTML page of one or more runs (charts by uPlot, inlined so the page opens offline), and Markdown tables.
import { readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import type { Histogram } from 'hdr-histogram-js';
import { withoutPassword } from '../src/config.ts';
import { bucketMs, classify, endpoints, type Bucket, type Endpoint, type Kind, type Recorder } from './client.ts';
import type { Facts, Options } from './scenarios.ts';

export type Latency = { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
export type Check = { name: string; ok: boolean; detail: string };
export type Report = {
  scenario: string;
  startedAt: string;
  ok: boolean;
  failures: string[];
  stopReason: string | null;
  options: Options;
  durationS: number;
  totals: { requests: number; rps: number; errors: number };
  endpoints: { endpoint: Endpoint; requests: number; rps: number; outcomes: { outcome: string; kind: Kind; count: number }[]; latencyMs: Latency; spectrum: (number | null)[] }[];
  errors: { network: Record<string, number>; server: Record<string, number>; unexpected: Record<string, number>; samples: string[] };
  timeline: Bucket[];
  facts: Facts;
  invariants: { ok: boolean; checks: Check[] };
};

// The latency spectrum's x: log10(1 / (1 - percentile)), 0 at the median's side, 2 at p99, 5 at p99.999.
const tailSteps = Array.from({ length: 41 }, (_, i) => i / 8);
const ms = (us: number) => Math.round(us) / 1000;
// HDR answers with the highest value of a bucket, which may exceed the largest one recorded.
const at = (h: Histogram, percentile: number) => ms(Math.min(h.getValueAtPercentile(percentile), h.maxValue));
const rate = (count: number, seconds: number) => Math.round((count / Math.max(seconds, 1e-3)) * 10) / 10;

export function buildReport(options: Options, recorder: Recorder, startedAt: Date, stopReason: string | null, facts: Facts, checks: Check[]): Report {
  const seconds = recorder.elapsedMs() / 1000;
  const runs = endpoints.flatMap((endpoint) => {
    const stats = recorder.byEndpoint.get(endpoint);
    if (!stats) return [];
    const h = stats.histogram;
    const outcomes = [...stats.outcomes].sort((a, b) => b[1] - a[1]).map(([outcome, count]) => ({ outcome, count, kind: classify(endpoint, Number(outcome.split(' ')[0]) || 0, outcome, recorder.shedding) }));
    // a point of the spectrum only where the count resolves it
    const spectrum = tailSteps.map((x) => (10 ** x <= h.totalCount ? at(h, 100 * (1 - 10 ** -x)) : null));
    const latencyMs = { p50: at(h, 50), p90: at(h, 90), p99: at(h, 99), p999: at(h, 99.9), max: ms(h.maxValue), mean: Math.round(h.mean) / 1000 };
    return [{ endpoint, requests: Number(h.totalCount), rps: rate(Number(h.totalCount), seconds), outcomes, latencyMs, spectrum }];
  });
  const errors = { network: {} as Record<string, number>, server: {} as Record<string, number>, unexpected: {} as Record<string, number>, samples: [...recorder.errorSamples].map(([key, detail]) => `${key}: ${detail}`) };
  for (const e of runs) for (const o of e.outcomes) if (o.kind !== 'ok' && o.kind !== 'refused') errors[o.kind][`${e.endpoint} ${o.outcome}`] = o.count;
  const sum = (counts: Record<string, number>) => Object.values(counts).reduce((total, n) => total + n, 0);
  const failures = [
    ...(sum(errors.server) > 0 ? [`${sum(errors.server)} answers with a 5xx status`] : []),
    ...(sum(errors.unexpected) > 0 ? [`${sum(errors.unexpected)} unexpected answers`] : []),
    ...(sum(errors.network) > 0 ? [`${sum(errors.network)} requests without an answer (network errors)`] : []),
    ...checks.filter((check) => !check.ok).map((check) => `invariant broken: ${check.name} (${check.detail})`),
  ];
  // All the load comes from one address: the service's per-address limit refuses most of it.
  const limited = sum(Object.fromEntries(Object.entries(errors.unexpected).filter(([key]) => key.endsWith(' 429 rate_limited'))));
  if (limited > recorder.total / 2) failures.unshift(`${limited} of ${recorder.total} answers were 429 rate_limited: the service's rate limits took this load generator for one client sending too much; start the service with RATE_LIMIT=off, or a higher RATE_LIMIT_ADDRESS_MAX`);
  return {
    scenario: options.scenario, startedAt: startedAt.toISOString(), ok: failures.length === 0, failures, stopReason,
    options: { ...options, databaseUrl: withoutPassword(options.databaseUrl) },
    durationS: Math.round(seconds * 1000) / 1000,
    totals: { requests: recorder.total, rps: rate(recorder.total, seconds), errors: recorder.errors },
    endpoints: runs, errors, timeline: recorder.timeline, facts, invariants: { ok: checks.every((check) => check.ok), checks },
  };
}

const num = (value: number | string | null | undefined, digits = 1) => (typeof value === 'number' ? value.toLocaleString('en-US', { maximumFractionDigits: digits }) : value ?? 'n/a');

// A Markdown table; numbers with thousands separators and up to `digits` decimals.
export function table(header: string[], rows: (string | number | null | undefined)[][], digits = 1): string {
  const line = (cells: (string | number | null | undefined)[]) => `| ${cells.map((cell) => num(cell, digits)).join(' | ')} |`;
  return [line(header), `|${header.map(() => '---').join('|')}|`, ...rows.map(line)].join('\n');
}

export function textReport(r: Report): string {
  const { options } = r;
  return [
    `${r.scenario}: ${options.urls.join(' ')}, ${options.connections} connections each, ${options.rate ? `paced at ${options.rate} req/s (latency from when each request was due)` : `concurrency ${options.concurrency}`}`,
    `${r.durationS} s measured (${r.stopReason ?? 'finished'}), ${num(r.totals.requests)} requests, ${num(r.totals.rps)} req/s, ${r.totals.errors} errors`,
    ...r.endpoints.map((e) => `  ${e.endpoint}: ${num(e.rps)} req/s, ms p50 ${e.latencyMs.p50} p90 ${e.latencyMs.p90} p99 ${e.latencyMs.p99} p99.9 ${e.latencyMs.p999} max ${e.latencyMs.max}; ${e.outcomes.map((o) => `${o.outcome} ${o.count}`).join(', ')}`),
    ...r.errors.samples.map((sample) => `  e.g. ${sample}`),
    ...Object.entries(r.facts).map(([label, value]) => `${label}: ${value ?? '-'}`),
    'invariants (read back from the database):',
    ...r.invariants.checks.map((check) => `  ${check.ok ? 'ok    ' : 'BROKEN'} ${check.name}: ${check.detail}`),
    r.ok ? 'PASS' : `FAIL\n${r.failures.map((failure) => `  ${failure}`).join('\n')}`,
  ].join('\n');
}

const escape = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const uplot = (file: string) => readFileSync(new URL(`../node_modules/uplot/dist/${file}`, import.meta.url), 'utf8');
const htmlTable = (header: string[], rows: (string | number | null)[][]) =>
  `<table><tr>${header.map((h) => `<th>${escape(h)}</th>`).join('')}</tr>${rows.map((row) => `<tr>${row.map((cell) => `<td>${escape(String(num(cell, 3)))}</td>`).join('')}</tr>`).join('')}</table>`;

function section(r: Report, index: number, title: string): string {
  const verdict = r.ok ? '<b class="pass">PASS</b>' : `<b class="fail">FAIL</b>: ${escape(r.failures.join('; '))}`;
  return `<h2>${escape(title)}: ${verdict}</h2>
<p>${r.durationS} s measured (${escape(r.stopReason ?? 'finished')}), ${num(r.totals.requests)} requests, ${num(r.totals.rps)} req/s, ${r.totals.errors} errors;
${r.options.urls.length} instance(s), ${r.options.connections} connections each, ${r.options.rate ? `paced at ${r.options.rate} req/s: latency from when each request was due` : `concurrency ${r.options.concurrency}`}.</p>
<div class="charts"><div id="rate${index}"></div><div id="latency${index}"></div></div>
${htmlTable(['endpoint', 'req/s', 'p50 ms', 'p90', 'p99', 'p99.9', 'max', 'outcomes'], r.endpoints.map((e) => [e.endpoint, e.rps, e.latencyMs.p50, e.latencyMs.p90, e.latencyMs.p99, e.latencyMs.p999, e.latencyMs.max, e.outcomes.map((o) => `${o.outcome}: ${o.count}`).join(', ')]))}
${r.errors.samples.map((sample) => `<pre>${escape(sample)}</pre>`).join('')}
${htmlTable(['fact', 'value'], Object.entries(r.facts))}
${htmlTable(['invariant', '', 'detail'], r.invariants.checks.map((check) => [check.name, check.ok ? 'ok' : 'BROKEN', check.detail]))}`;
}

// Throughput over the run, in buckets of at least 100 ms and at most about 150 points; latency by
// percentile on a log scale of the tail.
const script = `const colors = { sales: '#7f7f7f', items: '#1f77b4', checkout: '#ff7f0e', purchase: '#2ca02c', errors: '#d62728' };
const width = () => Math.min(1100, document.body.clientWidth - 20);
runs.forEach((run, index) => {
  const per = Math.max(1, Math.ceil(run.timeline.length / 150));
  const names = ['sales', 'items', 'checkout', 'purchase', 'errors'].filter((name) => run.timeline.some((b) => b[name] > 0));
  const chunks = Array.from({ length: Math.ceil(run.timeline.length / per) }, (_, i) => run.timeline.slice(i * per, (i + 1) * per));
  const seconds = chunks.map((chunk, i) => ((i * per + chunk.length / 2) * ${bucketMs}) / 1000);
  const rates = names.map((name) => chunks.map((chunk) => chunk.reduce((sum, b) => sum + b[name], 0) / ((chunk.length * ${bucketMs}) / 1000)));
  new uPlot({ title: 'requests per second', width: width(), height: 260, scales: { x: { time: false } },
    axes: [{ label: 'seconds' }, { label: 'req/s', size: 60 }],
    series: [{ label: 's' }, ...names.map((name) => ({ label: name, stroke: colors[name], width: 2 }))] }, [seconds, ...rates], document.getElementById('rate' + index));
  const x = ${JSON.stringify(tailSteps)};
  new uPlot({ title: 'latency by percentile (ms, log scale)', width: width(), height: 260, scales: { x: { time: false }, y: { distr: 3 } },
    axes: [{ label: 'percentile', values: (u, ticks) => ticks.map((t) => (100 * (1 - 10 ** -t)).toPrecision(Math.max(2, t + 1)) + '%') }, { label: 'ms', size: 60 }],
    series: [{ label: 'percentile', value: (u, t) => t == null ? '' : (100 * (1 - 10 ** -t)).toPrecision(Math.max(2, t + 1)) + '%' },
      ...run.endpoints.map((e) => ({ label: e.endpoint, stroke: colors[e.endpoint], width: 2 }))] },
    [x, ...run.endpoints.map((e) => e.spectrum)], document.getElementById('latency' + index));
});`;

export function htmlPage(title: string, runs: { title: string; report: Report }[]): string {
  const data = runs.map(({ report }) => ({ timeline: report.timeline, endpoints: report.endpoints.map((e) => ({ endpoint: e.endpoint, spectrum: e.spectrum })) }));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>${uplot('uPlot.min.css')}
body{font:14px system-ui,sans-serif;margin:20px;color:#222}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
.pass{color:#2ca02c}.fail{color:#d62728}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap}.charts>div{margin:8px 0}</style>
<script>${uplot('uPlot.iife.min.js')}</script></head>
<body><h1>${escape(title)}</h1>
${runs.map((run, index) => section(run.report, index, run.title)).join('\n')}
<script>const runs = ${JSON.stringify(data)};
${script}</script>
</body></html>
`;
}

// Each step's tables live in BENCHMARKS.md between `<!-- bench STEP -->` and `<!-- /bench STEP -->`;
// a run replaces only them, so the reading written around them stays. A new step's go at the end.
export async function writeSection(step: string, markdown: string): Promise<void> {
  const file = new URL('../BENCHMARKS.md', import.meta.url);
  const text = await readFile(file, 'utf8').catch(() => '# Benchmarks\n');
  const [open, close] = [`<!-- bench ${step} -->`, `<!-- /bench ${step} -->`];
  const block = `${open}\n${markdown.trim()}\n${close}`;
  const [from, to] = [text.indexOf(open), text.indexOf(close)];
  await writeFile(file, from >= 0 && to > from ? text.slice(0, from) + block + text.slice(to + close.length) : `${text.trimEnd()}\n\n${block}\n`);
  console.log(`written: BENCHMARKS.md (${step})`);
}
