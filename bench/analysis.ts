// From the measurements to the figures that matter: each service figure against its ceiling, 1 -> 2
// processes, latency at half of peak, the targets, and where the CPU went.
import type { PgbenchResult, Percentiles } from './ceilings.ts';
import type { CpuUse } from './cpu.ts';
import type { Measurements } from './phases.ts';
import type { FunctionTime, LoadSummary } from './steps.ts';

// cpuRatio: the ratio the two would have with the same CPU: the ceiling's own CPU per request over the
// service's (neighbours left out), which the noise of a shared machine moves much less than throughput.
export type Ratio = { figure: string; service: number | null; ceilingName: string; ceiling: number | null; ratio: number | null; cpuRatio: number | null };
export type Scaling = { endpoint: string; one: number | null; two: number | null; ratio: number | null };
// pg: the per-request design at the same rate and concurrency (pgbench -R)
export type HalfPeak = {
  endpoint: string;
  rate: number | null;
  achieved: number | null;
  p50: number | null;
  p99: number | null;
  p999: number | null;
  max: number | null;
  pg: Percentiles | null;
};
export type Target = { name: string; value: string; target: string; met: boolean | null };
export type TimeRow = {
  step: string;
  perSecond: number | null;
  meanMs: number | null;
  functionMs: number | null;
  cpu: CpuUse | null;
  // CPU milliseconds per request (or transaction) of each party
  msPerRequest: Record<string, number> | null;
};
export type Assessment = { ratios: Ratio[]; scaling: Scaling[]; halfPeak: HalfPeak[]; targets: Target[]; time: TimeRow[] };

const round = (value: number, digits = 2) => Math.round(value * 10 ** digits) / 10 ** digits;
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || b === 0 ? null : round(a / b, 3));
const rps = (summary: LoadSummary | undefined, endpoint: string) => summary?.endpoints[endpoint]?.rps ?? null;

function timeRow(step: string, perSecond: number | null, meanMs: number | null, functions: Record<string, FunctionTime> | null, name: string, cpu: CpuUse | null): TimeRow {
  let msPerRequest: Record<string, number> | null = null;
  if (cpu && perSecond) {
    // interrupts: (soft)irq time, charged to no process; other: what no measured party accounts for
    // (neighbours, kernel threads, the benchmark itself)
    const interrupts = cpu.machineInterruptCores ?? 0;
    const other = cpu.machineBusyCores - interrupts - Object.values(cpu.cores).reduce((sum, cores) => sum + cores, 0);
    const entries = [...Object.entries(cpu.cores), ['interrupts', interrupts] as const, ['other', Math.max(0, other)] as const, ['machine', cpu.machineBusyCores] as const];
    msPerRequest = Object.fromEntries(entries.map(([party, cores]) => [party, round((cores * 1000) / perSecond, 3)]));
  }
  return { step, perSecond, meanMs, functionMs: functions?.[name]?.meanMs ?? null, cpu, msPerRequest };
}

function loadTime(step: string, summary: LoadSummary | undefined, endpoint: string): TimeRow | null {
  if (!summary) return null;
  const figures = summary.endpoints[endpoint];
  return timeRow(step, figures?.rps ?? null, figures?.mean ?? null, summary.functions, endpoint, summary.cpu);
}

function timeRows(m: Partial<Measurements>): TimeRow[] {
  const rows = [
    m.pgbenchCheckout && timeRow('pgbench checkout', m.pgbenchCheckout.tps, m.pgbenchCheckout.latencyMs, m.pgbenchCheckout.functions, 'checkout_one', m.pgbenchCheckout.cpu),
    m.pgbenchCheckoutPool && timeRow(`pgbench checkout, ${m.pgbenchCheckoutPool.clients} clients`, m.pgbenchCheckoutPool.tps, m.pgbenchCheckoutPool.latencyMs, m.pgbenchCheckoutPool.functions, 'checkout_one', m.pgbenchCheckoutPool.cpu),
    loadTime('service checkout, 1 process', m.checkout1, 'checkout'),
    loadTime('service checkout, 2 processes', m.checkout2, 'checkout'),
    m.pgbenchPurchase && timeRow('pgbench purchase', m.pgbenchPurchase.tps, m.pgbenchPurchase.latencyMs, m.pgbenchPurchase.functions, 'purchase_one', m.pgbenchPurchase.cpu),
    m.pgbenchPurchasePool && timeRow(`pgbench purchase, ${m.pgbenchPurchasePool.clients} clients`, m.pgbenchPurchasePool.tps, m.pgbenchPurchasePool.latencyMs, m.pgbenchPurchasePool.functions, 'purchase_one', m.pgbenchPurchasePool.cpu),
    loadTime('service purchase, 1 process', m.purchase1, 'purchase'),
    loadTime('service purchase, 2 processes', m.purchase2, 'purchase'),
    m.bareHttp && timeRow('bare node:http', m.bareHttp.rps, m.bareHttp.latencyMs.mean, null, '', m.bareHttp.cpu),
    loadTime('checkout at half of peak, 1 process', m.checkoutHalf, 'checkout'),
    loadTime('purchase at half of peak, 1 process', m.purchaseHalf, 'purchase'),
  ];
  return rows.filter((row): row is TimeRow => Boolean(row));
}

function halfPeak(summary: LoadSummary | undefined, endpoint: string, pg: PgbenchResult | undefined): HalfPeak {
  const figures = summary?.endpoints[endpoint];
  const rate = summary ? Number(summary.facts['paced at (req/s)'] ?? null) || null : null;
  const latency = { p50: figures?.p50 ?? null, p99: figures?.p99 ?? null, p999: figures?.p999 ?? null, max: figures?.max ?? null };
  return { endpoint, rate, achieved: figures?.rps ?? null, ...latency, pg: pg?.percentilesMs ?? null };
}

// The per-request ceiling at its best: the higher of pgbench at the run's concurrency and at the pool's size.
export function bestPgbenchTps(m: Partial<Measurements>, endpoint: 'checkout' | 'purchase'): number | null {
  const runs = endpoint === 'checkout' ? [m.pgbenchCheckout, m.pgbenchCheckoutPool] : [m.pgbenchPurchase, m.pgbenchPurchasePool];
  return Math.max(...runs.map((run) => run?.tps ?? 0)) || null;
}

const soldOut = (summary: LoadSummary | undefined) => (summary?.facts['time to sell out (s)'] as number | null | undefined) ?? null;

// Throughput is held to the higher of the two PostgreSQL ceilings (at the run's concurrency and at the
// pool's size): the per-request design at its best, not at a concurrency that happens to suit the service.
function targets(ratios: Ratio[], half: HalfPeak[], m: Partial<Measurements>): Target[] {
  const list: Target[] = [];
  for (const endpoint of ['checkout', 'purchase']) {
    const candidates = ratios.filter((row) => row.figure === `${endpoint} req/s (1 process)` && row.ceilingName.startsWith('pgbench') && row.ceiling !== null);
    const row = candidates.toSorted((a, b) => b.ceiling! - a.ceiling!)[0];
    if (!row) continue;
    list.push({ name: `${row.figure} >= 80% of ${row.ceilingName}`, value: row.ratio === null ? 'n/a' : `${round(row.ratio * 100, 1)}%`, target: '>= 80%', met: row.ratio === null ? null : row.ratio >= 0.8 });
  }
  for (const row of half) {
    list.push({ name: `${row.endpoint} p99 at half of peak (${row.rate ?? '?'} req/s, 1 process)`, value: row.p99 === null ? 'n/a' : `${row.p99} ms`, target: '< 20 ms', met: row.p99 === null ? null : row.p99 < 20 });
  }
  for (const [label, summary] of [['1 process', m.stampede1], ['2 processes', m.stampede2]] as const) {
    const seconds = soldOut(summary);
    list.push({ name: `stampede: 10,000 items sold out, ${label}`, value: seconds === null ? 'did not sell out' : `${seconds} s`, target: '< 2 s', met: summary ? seconds !== null && seconds < 2 : null });
  }
  return list;
}

// This benchmark's own CPU per request: the machine's busy time less the neighbours' share.
export function ownCpuMs(row: TimeRow | undefined): number | null {
  const machine = row?.msPerRequest?.machine;
  return machine === undefined ? null : round(machine - (row!.msPerRequest!.other ?? 0), 3);
}

type Pair = [figure: string, service: number | null, serviceStep: string, ceilingName: string, ceiling: number | null, ceilingStep: string];

export function assess(m: Partial<Measurements>): Assessment {
  const time = timeRows(m);
  const step = (name: string) => time.find((row) => row.step === name);
  const checkout = rps(m.checkout1, 'checkout');
  const purchase = rps(m.purchase1, 'purchase');
  const pgCheckout = m.pgbenchCheckout?.tps ?? null;
  const pgPurchase = m.pgbenchPurchase?.tps ?? null;
  const bare = m.bareHttp?.rps ?? null;
  const clients = (run: PgbenchResult | undefined) => `${run?.clients ?? '?'} clients`;
  // pgbench at the pool's size, run only when that differs from the run's concurrency.
  const atPoolSize: [string, number | null, PgbenchResult | undefined][] = [['checkout', checkout, m.pgbenchCheckoutPool], ['purchase', purchase, m.pgbenchPurchasePool]];
  const pool = atPoolSize.flatMap(([endpoint, service, run]): Pair[] => {
    if (!run) return [];
    const name = `pgbench ${endpoint}, ${clients(run)}`;
    return [[`${endpoint} req/s (1 process)`, service, `service ${endpoint}, 1 process`, `${name} (the pool's size)`, run.tps, name]];
  });
  const pairs: Pair[] = [
    ['checkout req/s (1 process)', checkout, 'service checkout, 1 process', `pgbench checkout, ${clients(m.pgbenchCheckout)} (the same concurrency)`, pgCheckout, 'pgbench checkout'],
    ['purchase req/s (1 process)', purchase, 'service purchase, 1 process', `pgbench purchase, ${clients(m.pgbenchPurchase)} (the same concurrency)`, pgPurchase, 'pgbench purchase'],
    ...pool,
    ['checkout req/s (1 process)', checkout, 'service checkout, 1 process', 'bare node:http req/s', bare, 'bare node:http'],
    ['purchase req/s (1 process)', purchase, 'service purchase, 1 process', 'bare node:http req/s', bare, 'bare node:http'],
    ['checkout req/s (2 processes)', rps(m.checkout2, 'checkout'), 'service checkout, 2 processes', `pgbench checkout, ${clients(m.pgbenchCheckout)}`, pgCheckout, 'pgbench checkout'],
    ['purchase req/s (2 processes)', rps(m.purchase2, 'purchase'), 'service purchase, 2 processes', `pgbench purchase, ${clients(m.pgbenchPurchase)}`, pgPurchase, 'pgbench purchase'],
  ];
  const ratios: Ratio[] = pairs.map(([figure, service, serviceStep, ceilingName, ceiling, ceilingStep]) => ({
    figure, service, ceilingName, ceiling, ratio: ratio(service, ceiling),
    cpuRatio: ratio(ownCpuMs(step(ceilingStep)), ownCpuMs(step(serviceStep))),
  }));
  const scaling: Scaling[] = [
    { endpoint: 'checkout', one: checkout, two: rps(m.checkout2, 'checkout'), ratio: ratio(rps(m.checkout2, 'checkout'), checkout) },
    { endpoint: 'purchase', one: purchase, two: rps(m.purchase2, 'purchase'), ratio: ratio(rps(m.purchase2, 'purchase'), purchase) },
  ];
  const half = [halfPeak(m.checkoutHalf, 'checkout', m.pgbenchCheckoutHalf), halfPeak(m.purchaseHalf, 'purchase', m.pgbenchPurchaseHalf)];
  return { ratios, scaling, halfPeak: half, targets: targets(ratios, half, m), time };
}
