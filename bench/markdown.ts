// BENCHMARKS.md, written from one run's results: nothing in it is typed by hand.
import { assess, type Assessment, type TimeRow } from './analysis.ts';
import type { BenchResults } from './bench.ts';
import { whereTheTimeGoes } from './narrative.ts';
import type { Measurements, Stampede } from './phases.ts';
import type { LoadSummary } from './steps.ts';

const num = (value: number | null | undefined, digits = 1) =>
  value === null || value === undefined ? 'n/a' : value.toLocaleString('en-US', { maximumFractionDigits: digits });
const pct = (value: number | null) => (value === null ? 'n/a' : `${num(value * 100)}%`);
const verdict = (met: boolean | null) => (met === null ? 'not measured' : met ? '**met**' : '**not met**');

function table(header: string[], rows: (string | number | null)[][]): string {
  const line = (cells: (string | number | null)[]) => `| ${cells.map((cell) => (typeof cell === 'number' ? num(cell, 3) : cell ?? 'n/a')).join(' | ')} |`;
  return [line(header), `|${header.map(() => '---').join('|')}|`, ...rows.map(line)].join('\n');
}

function machine(results: BenchResults): string {
  const m = results.machine;
  if (!m) return 'Machine: not described (the run stopped early).';
  return [
    `- Date: ${results.startedAt} (the whole run took ${num(results.elapsedS, 0)} s)`,
    `- CPU: ${m.cpus} cores (\`nproc\`), ${m.cpuModel}; load average at start ${m.loadAverageAtStart.join(' / ')}; shared with other work`,
    `- Memory: ${m.memoryGb} GB; kernel ${m.kernel ?? 'n/a'}`,
    `- Node ${m.node}; ${m.postgres}; ${m.pgbench ?? 'pgbench n/a'}; Redis ${m.redis ?? 'n/a'}`,
    `- Everything on this one machine over 127.0.0.1: the service, PostgreSQL, Redis, the load generator and pgbench`,
    `- Concurrency: ${results.settings.concurrency} requests in flight (BENCH_CONCURRENCY) = pgbench clients = HTTP connections per service process; stampede: ${results.settings.stampedeUsers} users at once (BENCH_STAMPEDE_USERS); the service's pool: DATABASE_POOL_MAX=${results.settings.pool} per process; ${results.settings.durationS} s per measured step`,
    `- Rate limits: ${results.settings.rateLimit === 'on' ? 'on, with every limit at 10,000,000 per window so that they count (in Redis) but never refuse (BENCH_RATE_LIMIT=on)' : 'off (RATE_LIMIT=off): all the load comes from 127.0.0.1, so the per-address limit would measure itself; BENCH_RATE_LIMIT=on runs them with limits never reached'}`,
    `- Code: ${m.commit ?? 'n/a'}${m.uncommitted.length > 0 ? `, with uncommitted changes: ${m.uncommitted.map((line) => `\`${line.trim()}\``).join(', ')}` : ''}`,
  ].join('\n');
}

function commands(m: Partial<Measurements>): string {
  const steps: [string, string | undefined][] = [
    ['PostgreSQL ceiling, checkout', m.pgbenchCheckout?.command],
    ["PostgreSQL ceiling, checkout, at the pool's size", m.pgbenchCheckoutPool?.command],
    ['service checkout, 1 process', m.checkout1?.command],
    ['PostgreSQL ceiling, purchase', m.pgbenchPurchase?.command],
    ["PostgreSQL ceiling, purchase, at the pool's size", m.pgbenchPurchasePool?.command],
    ['service purchase, 1 process', m.purchase1?.command],
    ['HTTP ceiling', m.bareHttp?.command],
    ['checkout at half of peak', m.checkoutHalf?.command],
    ['purchase at half of peak', m.purchaseHalf?.command],
    ['PostgreSQL at the checkout rate', m.pgbenchCheckoutHalf?.command],
    ['PostgreSQL at the purchase rate', m.pgbenchPurchaseHalf?.command],
    ['stampede, 1 process', m.stampede1?.command],
    ['service checkout, 2 processes', m.checkout2?.command],
    ['service purchase, 2 processes', m.purchase2?.command],
    ['stampede, 2 processes', m.stampede2?.command],
    ['flow, 2 processes', m.flow?.command],
  ];
  const lines = steps.filter(([, command]) => command).map(([name, command]) => `# ${name}\n${command}`);
  const scripts = [m.pgbenchCheckout, m.pgbenchPurchase].filter((run) => run).map((run) => `${run!.label}.sql:\n\n\`\`\`\n${run!.script}\`\`\``);
  return [
    'All of it: `npm run bench` (settings: `BENCH_CONCURRENCY`, `BENCH_STAMPEDE_USERS`, `DATABASE_POOL_MAX`, `BENCH_DURATION`, `BENCH_ADMIN_URL`, `REDIS_URL`, `PGBENCH`). The steps it ran, in order (the database name and ports are this run\'s):',
    '',
    '```sh',
    lines.join('\n'),
    '```',
    '',
    `The pgbench scripts (\`-D\` sets \`first_item\`/\`last_item\` to the current sale's item ids for checkout; for purchase, \`i=-1\` and \`clients\`, so that client c buys codes c, c + clients, ... pre-inserted as \`'b' || lpad(n, 21, '0')\`, ${num(m.pgbenchPurchase?.codes, 0)} of them, of which ${num(m.pgbenchPurchase?.sold, 0)} were bought by ${num(m.pgbenchPurchase?.transactions, 0)} transactions; the run at a fixed rate uses codes \`'c' || ...\` of a sale of its own):`,
    '',
    ...scripts,
  ].join('\n');
}

function ceilings(a: Assessment): string {
  return table(
    ['figure', 'service', 'ceiling', 'ceiling value', 'ratio', 'ratio at equal CPU'],
    a.ratios.map((row) => [row.figure, row.service, row.ceilingName, row.ceiling, pct(row.ratio), pct(row.cpuRatio)]),
  );
}

function latencyAtFullSpeed(m: Partial<Measurements>): string {
  const rows: [string, LoadSummary | undefined, string][] = [
    ['checkout, 1 process', m.checkout1, 'checkout'],
    ['purchase, 1 process', m.purchase1, 'purchase'],
    ['checkout, 2 processes', m.checkout2, 'checkout'],
    ['purchase, 2 processes', m.purchase2, 'purchase'],
  ];
  return table(['closed loop at full speed', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'errors'], rows.map(([name, summary, endpoint]) => {
    const e = summary?.endpoints[endpoint];
    return [name, e?.rps ?? null, e?.p50 ?? null, e?.p99 ?? null, e?.p999 ?? null, e?.max ?? null, summary?.totals.errors ?? null];
  }));
}

function stampedeRows(m: Partial<Measurements>): string {
  const rows: [string, Stampede | undefined][] = [['1 process', m.stampede1], ['2 processes', m.stampede2]];
  return table(['stampede', 'time to sell out (s)', 'requests', 'req/s', 'checkout p99 ms', 'purchase p99 ms', 'errors', 'invariants'], rows.map(([name, s]) => [
    name,
    (s?.facts['time to sell out (s)'] as number | null | undefined) ?? null,
    s?.totals.requests ?? null,
    s?.totals.rps ?? null,
    s?.endpoints.checkout?.p99 ?? null,
    s?.endpoints.purchase?.p99 ?? null,
    s?.totals.errors ?? null,
    s ? (s.ok ? 'ok' : s.failures.join('; ')) : null,
  ]));
}

function memory(m: Partial<Measurements>): string {
  const rows: (string | number | null)[][] = [];
  for (const [name, s] of [['1 process', m.stampede1], ['2 processes', m.stampede2]] as const) {
    s?.memory.startMb.forEach((start, index) => rows.push([`stampede, ${name}: process ${'AB'[index]}`, start, s.memory.maxMb[index] ?? null, s.memory.endMb[index] ?? null, s.memory.samples.length]));
  }
  const steps = m.rssAfterSteps ?? [];
  const growth = rows.map((row) => {
    const [name, start, , end] = row as [string, number | null, number | null, number | null];
    return start === null || end === null ? `${name}: n/a` : `${name} ${end >= start ? '+' : ''}${num(end - start)} MB (${num(((end - start) / start) * 100)}%)`;
  });
  return [
    table(['service RSS (VmRSS)', 'start MB', 'max MB', 'end MB', 'samples (1/s)'], rows),
    '',
    `From the start to the end of each stampede: ${growth.join('; ')}.`,
    '',
    `Across the whole run: process A had ${num(m.serviceRssMb?.afterStart)} MB right after start; after each step (A, then A / B):`,
    '',
    table(['after step', ...steps.map((s) => s.step)], [['RSS MB', ...steps.map((s) => s.mb.map((value) => num(value)).join(' / '))]]),
  ].join('\n');
}

// A tail latency on a shared 2-core machine says as much about the neighbours as about the service.
function halfPeakNoise(a: Assessment): string {
  const rows = a.time.filter((row) => row.step.includes('half of peak') && row.cpu);
  if (rows.length === 0) return '';
  const parts = rows.map((row) => {
    const cpu = row.cpu!;
    const ours = Object.values(cpu.cores).reduce((sum, cores) => sum + cores, 0);
    return `${row.step.split(' ')[0]}: ${num(cpu.machineBusyCores, 2)} of ${cpu.machineCores} cores busy, ${num(ours, 2)} of them this benchmark's processes`;
  });
  return `Machine during these runs: ${parts.join('; ')} (the rest: interrupts, and neighbours sharing the machine).`;
}

function gcTable(m: Partial<Measurements>): string {
  const shown = ['checkout1', 'purchase1', 'checkoutHalf', 'purchaseHalf', 'stampede1', 'checkout2', 'purchase2', 'stampede2', 'flow'];
  const rows = (m.gcBySteps ?? []).filter((entry) => shown.includes(entry.step)).flatMap((entry) =>
    entry.pauses.map((p, index) => [`${entry.step}, process ${'AB'[index]}`, p.scavenges, p.scavengeMs, p.maxScavengeMs, p.markCompacts, p.markCompactMs, p.maxMarkCompactMs]));
  return table(['garbage collection (--trace-gc)', 'scavenges', 'total ms', 'max ms', 'mark-compacts', 'total ms', 'max ms'], rows);
}

function timeTable(rows: TimeRow[]): string {
  const ms = (row: TimeRow, party: string) => row.msPerRequest?.[party] ?? null;
  const cores = (row: TimeRow, party: string) => row.cpu?.cores[party] ?? null;
  const parties = ['server', 'postgres', 'redis', 'client'];
  return [
    table(
      ['step', 'per s', 'mean latency ms', 'mean ms inside the SQL function', ...parties.map((party) => `${party} cores`), 'machine busy cores'],
      rows.map((row) => [row.step, row.perSecond, row.meanMs, row.functionMs, ...parties.map((party) => cores(row, party)), row.cpu?.machineBusyCores ?? null]),
    ),
    '',
    table(
      ['CPU ms per request (or transaction)', ...parties, 'interrupts', 'other', 'whole machine'],
      rows.map((row) => [row.step, ...[...parties, 'interrupts', 'other', 'machine'].map((party) => ms(row, party))]),
    ),
  ].join('\n');
}

// Machine, targets, throughput against the ceilings, 1 -> 2 processes.
function throughputSections(results: BenchResults, a: Assessment): string {
  const m = results.measurements;
  return `# Benchmarks

Written by \`npm run bench\` (bench/bench.ts) from one run; the raw figures are in bench/results/bench.json and
each step's report and log in ${results.runDir}/. The machine is small, shared and noisy, so every service figure
is given as a ratio to a ceiling measured a few seconds before it, in the same run, at the same concurrency.

## Machine

${machine(results)}

Before anything was measured on it, each new service process got 3 s of checkout-only and 3 s of purchase-only,
unmeasured (JIT, connection pool, caches): ${(m.warmUps ?? []).map((w) => `${w.label} ${num(w.rps, 0)} req/s`).join(', ') || 'none'}.

## Targets

${table(['target', 'measured', 'wanted', 'verdict'], a.targets.map((t) => [t.name, t.value, t.target, verdict(t.met)]))}

## Throughput against the ceilings

${ceilings(a)}

Ratio at equal CPU: the ceiling's CPU per request over the service's, counting only this benchmark's processes and
interrupts (see "Where the time goes"): what the ratio would be if both had had the same CPU, neighbours or not.
The PostgreSQL ceiling is pgbench sending one statement per request with the same rules (bench/per-request.sql: the design before requests were coalesced; \`-M prepared\`),
with ${results.settings.concurrency} clients (the same concurrency) and with ${results.settings.pool} (the service's pool); the targets hold the service to the higher of the two;
the HTTP ceiling is a bare node:http server (one process) answering a fixed JSON body, loaded by the load
generator's own client over ${results.settings.concurrency} keep-alive connections. The service holds ${results.settings.pool} PostgreSQL
connections per process against pgbench's ${results.settings.concurrency}; the 2-process rows send ${2 * results.settings.concurrency} requests at once.

## 1 -> 2 processes

${table(['endpoint', '1 process req/s', '2 processes req/s', 'scaling'], a.scaling.map((row) => [row.endpoint, row.one, row.two, row.ratio === null ? 'n/a' : `x${num(row.ratio, 2)}`]))}

${latencyAtFullSpeed(m)}

`;
}

// Latency, stampede, memory, flow, where the time goes, commands.
function behaviourSections(results: BenchResults, a: Assessment): string {
  const m = results.measurements;
  const flow = m.flow;
  return `## Latency at half of peak (1 process, open loop)

${table(
  ['endpoint', 'rate req/s', 'achieved req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'pgbench at the same rate: p50 ms', 'p99 ms', 'p99.9 ms'],
  a.halfPeak.map((row) => [row.endpoint, row.rate, row.achieved, row.p50, row.p99, row.p999, row.max, row.pg?.p50 ?? null, row.pg?.p99 ?? null, row.pg?.p999 ?? null]),
)}

Requests are sent on a fixed schedule at half of the 1-process peak measured above (\`--rate\`); each latency
counts from when its request was due, so a stall shows as the queue behind it, not as one slow request.
pgbench at the same rate (\`-R\`, ${results.settings.concurrency} clients, per-transaction log, latency from when each transaction
was due) is the per-request design's latency under the same load at the same concurrency.
${halfPeakNoise(a)}

## Stampede

${stampedeRows(m)}

A fresh sale of 10,000 items, 20,000 users of whom ${results.settings.stampedeUsers} shop at once (over as many connections, split
among the processes) with no think time: each user pages the available items, checks out and buys 1 to 10 of them, until the sale is sold out.

## Memory and garbage collection

${memory(m)}

Garbage-collection pauses of the service's main thread during each step (the load generator's setup and audit included):

${gcTable(m)}

## Flow (2 processes)

${flow ? `${num(flow.totals.requests, 0)} requests in ${flow.durationS} s (${num(flow.totals.rps)} req/s), ${flow.totals.errors} errors, ${flow.ok ? 'invariants ok' : `FAILED: ${flow.failures.join('; ')}`}; ${Object.entries(flow.facts).map(([key, value]) => `${key}: ${value ?? '-'}`).join('; ')}.` : 'not run'}

## Where the time goes

${timeTable(a.time)}

${whereTheTimeGoes(m, a, results.settings.concurrency)}

## Commands

${commands(m)}
`;
}

export function renderMarkdown(results: BenchResults): string {
  const a = assess(results.measurements);
  return `${throughputSections(results, a)}${behaviourSections(results, a)}`;
}
