// Command line: node bench/load.ts <scenario> [options]. Defaults depend on the scenario.
import { parseArgs } from 'node:util';

export const scenarioNames = ['flow', 'stampede', 'checkout-only', 'purchase-only', 'overload'] as const;
export type ScenarioName = (typeof scenarioNames)[number];

export type Options = {
  scenario: ScenarioName;
  urls: string[];
  databaseUrl: string;
  durationS: number;
  users: number;
  connections: number;
  concurrency: number;
  items: number;
  codes: number;
  thinkMs: [number, number];
  abandon: number;
  // checkout-only and purchase-only: requests per second sent on a fixed schedule (open loop); null: as fast
  // as answered. overload: the flood's rate; null: three times the closed-loop peak it measures first
  rate: number | null;
  warmUpMs: number;
  out: string;
};

export class UsageError extends Error {}

export const usage = `usage: node bench/load.ts <${scenarioNames.join('|')}> [options]

  --url URL              an instance of the service; repeat for several (default http://127.0.0.1:8080)
  --database-url URL     the service's database, read for setup and invariants
                         (default $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/flash_sale)
  --duration S           seconds of load (stampede: the most it may take to sell out)
                         (default flow 30, stampede 300, checkout-only 10, purchase-only 10;
                         overload 10: the closed-loop peak, then the flood, each this long)
  --users N              simulated users (default flow 1000, stampede 20000, checkout-only and overload 10000)
  --connections N        keep-alive connections per instance (default 32)
  --concurrency N        users or request loops active at once
                         (default flow 100; others: connections x instances)
  --items N              size of the fresh sale created in the database (stampede 10000, purchase-only 50000)
  --codes N              purchase-only: checkout codes pre-issued in SQL, the run ends when they are used up
                         (default --items; more than --items adds item_sold refusals)
  --think-ms MIN-MAX     flow: think time between steps (default 10-100)
  --abandon F            flow: share of users who check out and never buy (default 0.2)
  --rate N               checkout-only, purchase-only: send N requests per second on a fixed schedule
                         (open loop: latency counts from when each request was due, so queueing shows)
                         instead of as fast as the answers come back
                         overload: the flood's rate (default three times the closed-loop peak)
  --warm-up MS           unrecorded GET /health over every connection before the clock starts, so that
                         the load generator's own JIT and connections are warm (default 1000; 0: none)
  --out DIR              where <scenario>.json and <scenario>.html go (default bench/results)`;

const defaults: Record<ScenarioName, { durationS: number; users: number; items: number }> = {
  flow: { durationS: 30, users: 1000, items: 0 },
  stampede: { durationS: 300, users: 20_000, items: 10_000 },
  'checkout-only': { durationS: 10, users: 10_000, items: 0 },
  'purchase-only': { durationS: 10, users: 0, items: 50_000 },
  overload: { durationS: 10, users: 10_000, items: 0 },
};

function wholeNumber(name: string, raw: string | undefined, fallback: number, min = 1, max = 10_000_000): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`);
  return value;
}

function thinkRange(raw: string | undefined): [number, number] {
  if (raw === undefined) return [10, 100];
  const match = /^(\d+)-(\d+)$/.exec(raw);
  if (!match || Number(match[1]) > Number(match[2])) throw new UsageError('--think-ms must look like 10-100');
  return [Number(match[1]), Number(match[2])];
}

function share(raw: string | undefined): number {
  if (raw === undefined) return 0.2;
  const value = Number(raw);
  if (raw.trim() === '' || !(value >= 0 && value <= 1)) throw new UsageError('--abandon must be a number from 0 to 1');
  return value;
}

function targetUrls(raw: string[] | undefined): string[] {
  const urls = raw && raw.length > 0 ? raw : ['http://127.0.0.1:8080'];
  for (const url of urls) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new UsageError(`--url ${url} is not a URL`);
    }
    if (parsed.protocol !== 'http:') throw new UsageError(`--url ${url} must start with http://`);
  }
  return urls.map((url) => new URL(url).origin);
}

export function parseOptions(argv: string[]): Options | 'help' {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: 'string', multiple: true },
      'database-url': { type: 'string' },
      duration: { type: 'string' },
      users: { type: 'string' },
      connections: { type: 'string' },
      concurrency: { type: 'string' },
      items: { type: 'string' },
      codes: { type: 'string' },
      'think-ms': { type: 'string' },
      abandon: { type: 'string' },
      rate: { type: 'string' },
      'warm-up': { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  const scenario = positionals[0] as ScenarioName | undefined;
  if (!scenario || !scenarioNames.includes(scenario) || positionals.length > 1) {
    throw new UsageError(`pick one scenario: ${scenarioNames.join(', ')}`);
  }
  const base = defaults[scenario];
  const urls = targetUrls(values.url);
  const connections = wholeNumber('connections', values.connections, 32, 1, 10_000);
  const items = wholeNumber('items', values.items, base.items, 1, 1_000_000);
  const rate = values.rate === undefined ? null : wholeNumber('rate', values.rate, 0, 1, 1_000_000);
  if (rate !== null && scenario !== 'checkout-only' && scenario !== 'purchase-only' && scenario !== 'overload') {
    throw new UsageError('--rate applies to checkout-only, purchase-only and overload');
  }
  return {
    scenario,
    urls,
    databaseUrl: values['database-url'] ?? (process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/flash_sale'),
    durationS: wholeNumber('duration', values.duration, base.durationS, 1, 3600),
    users: wholeNumber('users', values.users, base.users, 1, 1_000_000),
    connections,
    concurrency: wholeNumber('concurrency', values.concurrency, scenario === 'flow' ? 100 : connections * urls.length, 1, 100_000),
    items,
    codes: wholeNumber('codes', values.codes, items, 1, 1_000_000),
    thinkMs: thinkRange(values['think-ms']),
    abandon: share(values.abandon),
    rate,
    warmUpMs: wholeNumber('warm-up', values['warm-up'], 1000, 0, 60_000),
    out: values.out ?? 'bench/results',
  };
}
