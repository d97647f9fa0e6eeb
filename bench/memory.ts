// Memory of the service processes: resident memory sampled every second while a step runs, and the
// garbage collector's pauses, read from the lines --trace-gc writes to each process's log.
import { open, stat } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { rssKb } from './procs.ts';

export type RssSample = { atS: number; mb: (number | null)[] };
export type Memory = { samples: RssSample[]; startMb: (number | null)[]; endMb: (number | null)[]; maxMb: (number | null)[] };

const mb = (kb: number | null) => (kb === null ? null : Math.round(kb / 102.4) / 10);

export function sampleRss(pids: number[], everyMs = 1_000): { stop: () => Promise<Memory> } {
  const startedAt = performance.now();
  const samples: RssSample[] = [];
  let chain = Promise.resolve();
  const take = () => {
    chain = chain.then(async () => {
      const values = await Promise.all(pids.map(rssKb));
      samples.push({ atS: Math.round(performance.now() - startedAt) / 1000, mb: values.map(mb) });
    });
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    async stop() {
      clearInterval(timer);
      take();
      await chain;
      const column = (index: number) => samples.map((sample) => sample.mb[index] ?? null).filter((value): value is number => value !== null);
      return {
        samples,
        startMb: pids.map((_, index) => column(index)[0] ?? null),
        endMb: pids.map((_, index) => column(index).at(-1) ?? null),
        maxMb: pids.map((_, index) => (column(index).length > 0 ? Math.max(...column(index)) : null)),
      };
    },
  };
}

export type GcPauses = { scavenges: number; scavengeMs: number; maxScavengeMs: number; markCompacts: number; markCompactMs: number; maxMarkCompactMs: number };

export async function logSize(file: string): Promise<number> {
  return stat(file).then((info) => info.size, () => 0);
}

// "[pid:0x..]  8139 ms: Scavenge 81.1 (171.6) -> 38.2 (171.6) MB, pooled: 1 MB, 10.71 / 0.32 ms ..."
// The first figure is the pause of the main thread.
export async function gcPausesSince(file: string, offset: number): Promise<GcPauses> {
  const end = await logSize(file);
  const handle = await open(file, 'r');
  const buffer = Buffer.alloc(Math.max(0, end - offset));
  try {
    await handle.read(buffer, 0, buffer.length, offset);
  } finally {
    await handle.close();
  }
  const pauses: GcPauses = { scavenges: 0, scavengeMs: 0, maxScavengeMs: 0, markCompacts: 0, markCompactMs: 0, maxMarkCompactMs: 0 };
  const pattern = /\d+ ms: (Scavenge|Mark-Compact)\b[^\n]*? MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \/ [\d.]+ ms/g;
  for (const [, kind, ms] of buffer.toString('utf8').matchAll(pattern)) {
    const pause = Number(ms);
    if (kind === 'Scavenge') {
      pauses.scavenges += 1;
      pauses.scavengeMs += pause;
      pauses.maxScavengeMs = Math.max(pauses.maxScavengeMs, pause);
    } else {
      pauses.markCompacts += 1;
      pauses.markCompactMs += pause;
      pauses.maxMarkCompactMs = Math.max(pauses.maxMarkCompactMs, pause);
    }
  }
  pauses.scavengeMs = Math.round(pauses.scavengeMs * 10) / 10;
  pauses.markCompactMs = Math.round(pauses.markCompactMs * 10) / 10;
  return pauses;
}
