// The report as one self-contained HTML page: tables, and line charts drawn here as inline SVG.
import { fullSeconds, latencyNote, type EndpointReport, type Report } from './report.ts';
import { endpoints, type Endpoint } from './stats.ts';

type Series = { name: string; color: string; points: [number, number][] };
type Tick = { value: number; label: string };
type Chart = { title: string; series: Series[]; xTicks: Tick[]; xMax: number; xLabel: string; yLabel: string };

const colors: Record<Endpoint | 'errors', string> = {
  sales: '#7f7f7f',
  items: '#1f77b4',
  checkout: '#ff7f0e',
  purchase: '#2ca02c',
  errors: '#d62728',
};

const escape = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (value: number) => value.toLocaleString('en-US', { maximumFractionDigits: 2 });

// A round axis maximum and step: 1, 2 or 5 times a power of ten, about five steps.
function niceScale(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const rough = max / 5;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= rough)!;
  return { top: Math.ceil(max / step) * step, step };
}

function lineChart(chart: Chart): string {
  const [width, height, left, right, top, bottom] = [760, 280, 64, 130, 30, 44];
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const yMax = Math.max(0, ...chart.series.flatMap((s) => s.points.map((p) => p[1])));
  const y = niceScale(yMax);
  const px = (x: number) => left + (x / Math.max(chart.xMax, 1e-9)) * plotW;
  const py = (value: number) => top + plotH - (value / y.top) * plotH;
  const parts: string[] = [`<text x="${left}" y="18" class="title">${escape(chart.title)}</text>`];
  for (let value = 0; value <= y.top + y.step / 2; value += y.step) {
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${py(value)}" y2="${py(value)}" class="grid"/>`,
      `<text x="${left - 6}" y="${py(value) + 4}" text-anchor="end">${fmt(value)}</text>`);
  }
  for (const tick of chart.xTicks) {
    parts.push(`<line x1="${px(tick.value)}" x2="${px(tick.value)}" y1="${top}" y2="${top + plotH}" class="grid"/>`,
      `<text x="${px(tick.value)}" y="${top + plotH + 16}" text-anchor="middle">${escape(tick.label)}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${height - 6}" text-anchor="middle">${escape(chart.xLabel)}</text>`,
    `<text transform="translate(14 ${top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(chart.yLabel)}</text>`,
    `<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" class="frame"/>`);
  chart.series.forEach((series, index) => {
    const path = series.points.map(([x, v]) => `${px(x).toFixed(1)},${py(v).toFixed(1)}`).join(' ');
    parts.push(`<polyline points="${path}" fill="none" stroke="${series.color}" stroke-width="2"/>`,
      `<rect x="${left + plotW + 12}" y="${top + index * 18}" width="12" height="4" fill="${series.color}"/>`,
      `<text x="${left + plotW + 30}" y="${top + index * 18 + 6}">${escape(series.name)}</text>`);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">${parts.join('')}</svg>`;
}

type TimelineBucket = Report['timeline'][number];

// Lines of requests per second over the run, one per `lines` entry; a partial last second is scaled.
function timelineChart(report: Report, title: string, lines: { name: string; color: string; count: (b: TimelineBucket) => number }[]): string {
  const timeline = fullSeconds(report);
  const series: Series[] = lines.map((line) => ({
    name: line.name,
    color: line.color,
    points: timeline.map((b): [number, number] => [b.second + b.coveredS / 2, line.count(b) / b.coveredS]),
  }));
  const xMax = Math.max(1, report.durationS);
  const step = Math.max(1, niceScale(xMax).step);
  const xTicks: Tick[] = [];
  for (let value = 0; value <= xMax; value += step) xTicks.push({ value, label: String(value) });
  return lineChart({ title, series, xTicks, xMax, xLabel: 'seconds since the first request', yLabel: 'requests / s' });
}

function throughputCharts(report: Report): string {
  const used = endpoints.filter((endpoint) => report.endpoints.some((e) => e.endpoint === endpoint));
  const byEndpoint = used.map((endpoint) => ({ name: endpoint, color: colors[endpoint], count: (b: TimelineBucket) => b.requests[endpoint] }));
  const byKind = [
    { name: 'ok (2xx)', color: '#2ca02c', count: (b: TimelineBucket) => b.ok },
    { name: 'refused (4xx)', color: '#9467bd', count: (b: TimelineBucket) => b.refused },
    { name: 'errors', color: colors.errors, count: (b: TimelineBucket) => b.errors },
  ];
  return timelineChart(report, 'Throughput per second, by endpoint', [...byEndpoint, byKind[2]!]) + '\n' +
    timelineChart(report, 'Throughput per second, by outcome', byKind);
}

// x = log10(1 / (1 - p)): 0 for the median's side, 1 at 90%, 2 at 99%, ...; max sits half a decade further.
function latencyChart(e: EndpointReport): string {
  const tail = (percentile: number) => -Math.log10(1 - percentile / 100);
  const last = e.spectrum.at(-2)?.[0] ?? 0;
  const maxX = tail(last) + 0.5;
  const points = e.spectrum.map(([p, value]): [number, number] => [p >= 100 ? maxX : tail(p), value]);
  const xTicks: Tick[] = [];
  for (let decade = 0; decade <= tail(last) + 1e-9; decade += 1) {
    xTicks.push({ value: decade, label: decade === 0 ? '0%' : `${(100 * (1 - 10 ** -decade)).toFixed(Math.max(0, decade - 2))}%` });
  }
  xTicks.push({ value: maxX, label: 'max' });
  return lineChart({
    title: `${e.endpoint}: latency by percentile (p50 ${e.latencyMs.p50} ms, p99 ${e.latencyMs.p99} ms)`,
    series: [{ name: e.endpoint, color: colors[e.endpoint], points }],
    xTicks,
    xMax: maxX,
    xLabel: 'percentile',
    yLabel: 'ms',
  });
}

function htmlTable(header: string[], rows: (string | number)[][]): string {
  const cell = (value: string | number, tag: string) => `<${tag}${typeof value === 'number' ? ' class="n"' : ''}>${escape(typeof value === 'number' ? fmt(value) : value)}</${tag}>`;
  return `<table><tr>${header.map((h) => cell(h, 'th')).join('')}</tr>${rows
    .map((row) => `<tr>${row.map((value) => cell(value, 'td')).join('')}</tr>`)
    .join('')}</table>`;
}

function tables(report: Report): string {
  const errorRows = (['network', 'server', 'unexpected'] as const).flatMap((kind) =>
    Object.entries(report.errors[kind]).map(([key, count]): (string | number)[] => [kind === 'server' ? '5xx' : kind, key, count]));
  return [
    '<h2>Requests by endpoint and outcome</h2>',
    htmlTable(['endpoint', 'outcome', 'kind', 'count', 'req/s'], report.endpoints.flatMap((e) => e.outcomes.map((o) => [e.endpoint, o.outcome, o.kind, o.count, o.rps]))),
    '<h2>Latency (ms)</h2>',
    htmlTable(['endpoint', 'count', 'req/s', 'p50', 'p90', 'p99', 'p99.9', 'max', 'mean'],
      report.endpoints.map((e) => [e.endpoint, e.requests, e.rps, e.latencyMs.p50, e.latencyMs.p90, e.latencyMs.p99, e.latencyMs.p999, e.latencyMs.max, e.latencyMs.mean])),
    '<h2>Errors</h2>',
    errorRows.length === 0 ? '<p>None.</p>' : htmlTable(['kind', 'endpoint and outcome', 'count'], errorRows),
    ...report.errors.samples.map((sample) => `<pre>${escape(sample)}</pre>`),
    `<h2>${escape(report.scenario)}</h2>`,
    htmlTable(['fact', 'value'], Object.entries(report.facts).map(([label, value]) => [label, value ?? '-'])),
    '<h2>Invariants (read back from the database)</h2>',
    htmlTable(['', 'check', 'detail'], report.invariants.checks.map((check) => [check.ok ? 'ok' : 'BROKEN', check.name, check.detail])),
  ].join('\n');
}

const style = `body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.n{text-align:right;font-variant-numeric:tabular-nums}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-size:13px;font-weight:600}.grid{stroke:#e4e4e4}
.frame{fill:none;stroke:#999}.pass{color:#2ca02c}.fail{color:#d62728}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap}`;

export function htmlReport(report: Report): string {
  const verdict = report.ok ? '<span class="pass">PASS</span>' : `<span class="fail">FAIL</span>: ${escape(report.failures.join('; '))}`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flash-sale load: ${escape(report.scenario)}</title><style>${style}</style></head>
<body>
<h1>flash-sale load: ${escape(report.scenario)} — ${verdict}</h1>
<p>Started ${escape(report.startedAt)}; ${report.durationS} s measured (${escape(report.stopReason ?? 'finished')});
${fmt(report.totals.requests)} requests, ${fmt(report.totals.rps)} req/s, ${report.totals.errors} errors.
Targets: ${escape(report.targets.join(', '))}; ${report.options.connections} connections each, concurrency ${report.options.concurrency}.</p>
${throughputCharts(report)}
<p>${escape(latencyNote(report))}</p>
${report.endpoints.map(latencyChart).join('\n')}
${tables(report)}
</body></html>
`;
}
