// The "where the time goes" paragraphs of BENCHMARKS.md, worded from the run's own figures.
import { bestPgbenchTps, ownCpuMs, type Assessment, type TimeRow } from './analysis.ts';
import type { Measurements } from './phases.ts';

const n = (value: number | null | undefined, digits = 2) =>
  value === null || value === undefined || Number.isNaN(value) ? 'n/a' : value.toLocaleString('en-US', { maximumFractionDigits: digits });

const row = (a: Assessment, step: string) => a.time.find((candidate) => candidate.step === step);
const ms = (r: TimeRow | undefined, party: string) => r?.msPerRequest?.[party] ?? null;
const cores = (r: TimeRow | undefined, party: string) => r?.cpu?.cores[party] ?? null;

function endpointNote(a: Assessment, endpoint: 'checkout' | 'purchase', concurrency: number): string {
  const pg = row(a, `pgbench ${endpoint}`);
  const svc = row(a, `service ${endpoint}, 1 process`);
  if (!pg || !svc) return '';
  const outside = svc.meanMs !== null && svc.functionMs !== null ? svc.meanMs - svc.functionMs : null;
  return [
    `- **${endpoint}**: pgbench ran ${n(pg.perSecond, 0)} tps at ${n(pg.meanMs)} ms per transaction (${concurrency} clients), ` +
      `${n(pg.functionMs, 3)} ms of it inside \`${endpoint}()\`; the service answered ${n(svc.perSecond, 0)} req/s at ${n(svc.meanMs)} ms mean, ` +
      `${n(svc.functionMs, 3)} ms of it inside \`${endpoint}()\` and ${n(outside)} ms outside (Node, the driver, Redis, the HTTP client, waiting for a core).`,
    `  Machine CPU per request: ${n(ms(svc, 'machine'), 3)} ms through the service (service process ${n(ms(svc, 'server'), 3)}, PostgreSQL ${n(ms(svc, 'postgres'), 3)}, ` +
      `Redis ${n(ms(svc, 'redis'), 3)}, load client ${n(ms(svc, 'client'), 3)}, interrupts ${n(ms(svc, 'interrupts'), 3)}, other ${n(ms(svc, 'other'), 3)}) ` +
      `against ${n(ms(pg, 'machine'), 3)} ms per pgbench transaction (PostgreSQL ${n(ms(pg, 'postgres'), 3)}, pgbench ${n(ms(pg, 'client'), 3)}, ` +
      `interrupts ${n(ms(pg, 'interrupts'), 3)}, other ${n(ms(pg, 'other'), 3)}); ` +
      `the machine was ${n(svc.cpu?.machineBusyCores)} of ${svc.cpu?.machineCores ?? 'n/a'} cores busy (under pgbench ${n(pg.cpu?.machineBusyCores)}).`,
  ].join('\n');
}

const ours = ownCpuMs;

// Reaching 80% of pgbench's rate on a CPU-bound machine means costing at most pgbench's CPU / 0.8.
function budget(a: Assessment, endpoint: 'checkout' | 'purchase'): string {
  const pg = row(a, `pgbench ${endpoint}`);
  const svc = row(a, `service ${endpoint}, 1 process`);
  const allowed = ours(pg) === null ? null : ours(pg)! / 0.8;
  const postgres = ms(svc, 'postgres');
  const rest = ours(svc) === null || postgres === null ? null : ours(svc)! - postgres;
  return `${endpoint} costs ${n(ours(svc), 3)} ms against an allowance of ${n(allowed, 3)} ms (pgbench: ${n(ours(pg), 3)} ms); PostgreSQL takes ${n(postgres, 3)} ms of it ` +
    `(${n(ms(pg, 'postgres'), 3)} under pgbench), so the HTTP side (service, Redis, load client, interrupts) would have to fit in ` +
    `${n(allowed === null || postgres === null ? null : allowed - postgres, 3)} ms; it takes ${n(rest, 3)} ms`;
}

const pgSellOut = (m: Partial<Measurements>) => {
  const checkout = bestPgbenchTps(m, 'checkout');
  const purchase = bestPgbenchTps(m, 'purchase');
  return checkout && purchase ? 10_000 / checkout + 10_000 / purchase : null;
};

// What the 80% allowance leaves for the HTTP side if PostgreSQL cost no more per statement than under
// pgbench, against what an empty HTTP exchange costs.
function emptyExchange(a: Assessment, empty: number | null): string {
  const left = (['checkout', 'purchase'] as const).map((endpoint) => {
    const pg = row(a, `pgbench ${endpoint}`);
    return ours(pg) === null || ms(pg, 'postgres') === null ? null : ours(pg)! / 0.8 - ms(pg, 'postgres')!;
  });
  if (empty === null || left.some((value) => value === null)) return '.';
  const [checkout, purchase] = left as number[];
  const service = (endpoint: string) => n(ms(row(a, `service ${endpoint}, 1 process`), 'server'), 3);
  return `. Even with PostgreSQL at its pgbench cost per statement, the 80% target leaves ${n(checkout, 3)} ms per checkout and ${n(purchase, 3)} ms per purchase ` +
    `for the whole HTTP side: ${n(checkout! - empty, 3)} and ${n(purchase! - empty, 3)} ms after an empty exchange, against ${service('checkout')} and ${service('purchase')} ms in the service process alone.`;
}

function reading(m: Partial<Measurements>, a: Assessment): string[] {
  const svc = row(a, 'service checkout, 1 process');
  const pg = row(a, 'pgbench checkout');
  const bare = row(a, 'bare node:http');
  const purchase = row(a, 'service purchase, 1 process');
  if (!svc?.cpu || !pg?.cpu) return [];
  const machineCores = svc.cpu.machineCores || 1;
  const serverCores = Math.max(cores(svc, 'server') ?? 0, cores(purchase, 'server') ?? 0);
  const scaling = a.scaling.map((s) => `${s.endpoint} x${n(s.ratio)}`).join(', ');
  const lines = [
    `- The SQL is not slower when the service sends it: mean time inside \`checkout()\` ${n(svc.functionMs, 3)} ms (pgbench ${n(pg.functionMs, 3)}), ` +
      `inside \`purchase()\` ${n(purchase?.functionMs, 3)} ms (pgbench ${n(row(a, 'pgbench purchase')?.functionMs, 3)}).`,
    `- Every party shares the same ${machineCores} cores, and they were ${n(svc.cpu.machineBusyCores)} busy during checkout and ${n(pg.cpu.machineBusyCores)} under pgbench: ` +
      `throughput is about the cores it gets x 1000 / (CPU ms per request), so 80% of pgbench's rate allows at most 1.25 x pgbench's CPU per request ` +
      `(this benchmark's processes and interrupts, neighbours left out). ${budget(a, 'checkout')}. ${budget(a, 'purchase')}.`,
    serverCores >= 0.85
      ? `- The service process is at its one core's limit (${n(serverCores)} cores): its own CPU per request caps it at about ${n(1000 / (ms(svc, 'server') ?? 1), 0)} checkouts/s.`
      : `- The service process is not at its one core's limit (at most ${n(serverCores)} of a core): most of a request's time it waits for PostgreSQL, ` +
        `Redis and the load client, which hold the rest of the machine. A second process gives ${scaling}, with the machine ` +
        `${n(row(a, 'service checkout, 2 processes')?.cpu?.machineBusyCores)} (checkout) and ${n(row(a, 'service purchase, 2 processes')?.cpu?.machineBusyCores)} (purchase) of ${machineCores} cores busy.`,
  ];
  if (bare) {
    lines.push(`- For scale, bare node:http answers ${n(bare.perSecond, 0)} req/s to the same client at ${n(ms(bare, 'server'), 3)} ms of server CPU per request; ` +
      `the service spends ${n(ms(svc, 'server'), 3)} ms per checkout and ${n(ms(purchase, 'server'), 3)} ms per purchase in its Node process (Fastify, validation, postgres.js, node-redis, metrics). ` +
      `An empty HTTP exchange with this client already costs ${n(ours(bare), 3)} ms of CPU (server, client, interrupts)` + emptyExchange(a, ours(bare)));
  }
  lines.push(...tailNotes(m, a));
  const stampede = m.stampede1;
  const seconds = stampede?.facts['time to sell out (s)'] as number | null | undefined;
  if (stampede && seconds) {
    lines.push(`- The stampede sends ${n(stampede.totals.requests, 0)} requests to sell 10,000 items (a checkout and a purchase per item, plus item pages and refusals): ` +
      `at its ${n(stampede.totals.rps, 0)} req/s that is ${n(seconds)} s; selling out in 2 s would take ${n(stampede.totals.requests / 2, 0)} req/s. ` +
      `The per-request design, at pgbench's best rates on this machine, needs ${n(pgSellOut(m), 2)} s for the 10,000 checkouts and 10,000 purchases.`);
    lines.push(...endgame(stampede.facts, stampede.totals.rps));
  }
  return lines;
}

// Where the stampede's requests go: the first 90% of the items, and the last 10%, when users' pages of
// the list are mostly sold items.
function endgame(facts: Record<string, unknown>, rps: number): string[] {
  const first = facts['time to sell the first 90% (s)'] as number | null | undefined;
  const total = facts['time to sell out (s)'] as number | null | undefined;
  const before = facts['requests until 90% sold'] as number | null | undefined;
  const after = facts['requests for the last 10%'] as number | null | undefined;
  const lost = facts['items lost to another buyer (409) in the last 10%'] as number | null | undefined;
  if (!first || !total || !before || !after) return [];
  return [`- The first 9,000 items sold in ${n(first)} s (${n(before, 0)} requests), the last 1,000 in ${n(total - first)} s ` +
    `(${n(after, 0)} requests, ${n(lost, 0)} of them checkouts or purchases of items already gone). At the stampede's own rate, ` +
    `the bare minimum of 20,000 requests (no pages, no refusals) takes ${n(20_000 / rps)} s.`];
}

// At half of peak the machine has room: the tail is then PostgreSQL's own, or the service's pauses.
function tailNotes(m: Partial<Measurements>, a: Assessment): string[] {
  const steps: [string, 'checkoutHalf' | 'purchaseHalf'][] = [['checkout', 'checkoutHalf'], ['purchase', 'purchaseHalf']];
  return steps.flatMap(([endpoint, key]) => {
    const half = a.halfPeak.find((row) => row.endpoint === endpoint);
    const gc = m.gcBySteps?.find((entry) => entry.step === key)?.pauses[0];
    const seconds = m[key]?.durationS;
    if (!half || half.p99 === null) return [];
    return [`- ${endpoint} at half of peak (${n(half.rate, 0)} req/s): p99 ${n(half.p99)} ms through the service against ${n(half.pg?.p99)} ms for the per-request design at the same rate and concurrency (pgbench -R). ` +
      (gc ? `In that step (${n(seconds, 0)} s of load plus its setup) the service stopped for ${gc.scavenges} scavenges (max ${n(gc.maxScavengeMs)} ms, ${n(gc.scavengeMs)} ms in all) ` +
        `and ${gc.markCompacts} mark-compacts (max ${n(gc.maxMarkCompactMs)} ms): each pause holds every request in flight and queues the ones arriving.` : '')];
  });
}

function statements(m: Partial<Measurements>): string {
  if (!m.statements) return 'not available: it is not in shared_preload_libraries on this server';
  return 'its top statements are in bench.json under measurements.statements';
}

export function whereTheTimeGoes(m: Partial<Measurements>, a: Assessment, concurrency: number): string {
  return [
    'Server = the service process(es) (or the bare server); postgres = the backends of the benchmark\'s database and PostgreSQL\'s',
    'background processes; redis = the local Redis server (shared, but idle otherwise); client = the load generator or pgbench;',
    'interrupts = irq and softirq time (loopback networking among it), charged to no process; other = the rest of the machine\'s',
    'busy time (neighbours, kernel threads, the benchmark itself). CPU from /proc over each measured phase;',
    'time inside the SQL functions from `pg_stat_user_functions` (`track_functions = all` on the benchmark\'s database; pg_stat_statements is',
    `${statements(m)}). With ${concurrency} requests in flight, mean latency is ${concurrency} / throughput (Little's law).`,
    '',
    endpointNote(a, 'checkout', concurrency),
    endpointNote(a, 'purchase', concurrency),
    '',
    'Reading:',
    '',
    ...reading(m, a),
  ].join('\n');
}
