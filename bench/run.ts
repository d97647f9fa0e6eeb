// The state one run shares between its scenario and the entry point: clients, the clock, the stop flag.
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Sql } from '../src/db.ts';
import { settle, snapshot, type Snapshot } from './database.ts';
import type { Http } from './http.ts';
import type { Options } from './options.ts';
import { startProgress, type Progress } from './progress.ts';
import type { Recorder } from './stats.ts';

export type Fact = [label: string, value: string | number | null];
export type ScenarioResult = { saleId: number; fullSaleId?: number; facts: Fact[] };

export class Run {
  stopReason: string | null = null;
  before: Snapshot | null = null;
  private deadline = Number.POSITIVE_INFINITY;
  private progress: Progress | null = null;

  readonly options: Options;
  readonly http: Http;
  readonly recorder: Recorder;
  readonly sql: Sql;
  readonly runId: string;

  constructor(parts: { options: Options; http: Http; recorder: Recorder; sql: Sql; runId: string }) {
    this.options = parts.options;
    this.http = parts.http;
    this.recorder = parts.recorder;
    this.sql = parts.sql;
    this.runId = parts.runId;
  }

  // Setup is over: warm the client, let the setup's writes settle (steady-state scenarios), remember the
  // database's counts, then start the clock and the measurements.
  async start(status: () => string = () => '', options: { settle?: boolean; durationS?: number } = {}): Promise<void> {
    if (this.options.warmUpMs > 0) await this.http.warmUp(this.options.warmUpMs);
    if (options.settle) await settle(this.sql);
    this.before = await snapshot(this.sql);
    this.recorder.begin();
    this.deadline = performance.now() + (options.durationS ?? this.options.durationS) * 1000;
    this.progress = startProgress(this.recorder, this.options.scenario, status);
  }

  finish(): void {
    this.recorder.end();
    this.progress?.stop();
    this.progress = null;
  }

  stop(reason: string): void {
    this.stopReason ??= reason;
  }

  shouldStop(): boolean {
    if (this.stopReason === null && performance.now() >= this.deadline) this.stop('duration reached');
    return this.stopReason !== null;
  }

  async think(): Promise<void> {
    const [min, max] = this.options.thinkMs;
    await sleep(randomInt(min, max + 1));
  }
}

// `concurrency` loops take task indexes 0, 1, 2, ... until `total` is reached, `stopAt` (a
// performance.now() time) passes, or the run stops.
export async function runLoops(run: Run, concurrency: number, total: number, task: (index: number) => Promise<void>, stopAt = Infinity): Promise<void> {
  let next = 0;
  const loop = async () => {
    while (next < total && !run.shouldStop() && performance.now() < stopAt) {
      const index = next;
      next += 1;
      await task(index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, loop));
}

// Open loop: task `index` is due at start + index / rate, and starts then whether or not earlier tasks
// have finished (the client's connection pool queues them), until `total` tasks, `stopAt`, or the run stops.
export async function runPaced(run: Run, rate: number, total: number, task: (index: number, dueAt: number) => Promise<void>, stopAt = Infinity): Promise<void> {
  const start = performance.now();
  const pending = new Set<Promise<void>>();
  let next = 0;
  while (next < total && !run.shouldStop() && performance.now() < stopAt) {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000) + 1);
    for (; next < due; next += 1) {
      const promise: Promise<void> = task(next, start + (next * 1000) / rate).finally(() => pending.delete(promise));
      pending.add(promise);
    }
    await sleep(1);
  }
  await Promise.all(pending);
}
