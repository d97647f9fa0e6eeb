// CPU accounting from /proc: how many cores each party (the server under test, PostgreSQL, the load
// client) used while a step ran, and how busy the whole machine was. Processes are sampled every
// 250 ms, so one that exits during the step (a pgbench backend) loses at most its last 250 ms.
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';

function clockTicks(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}

const ticksPerSecond = clockTicks();

// utime + stime of the whole process (all its threads), in clock ticks; null once it is gone.
async function processTicks(pid: number): Promise<number | null> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (!stat) return null;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function machineTicks(): Promise<{ busy: number; total: number; interrupts: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const values = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = values.reduce((sum, value) => sum + value, 0);
  return { busy: total - values[3]! - values[4]!, total, interrupts: values[5]! + values[6]! };
}

export type PidSource = () => number[] | Promise<number[]>;
// machineInterruptCores: the part of the busy time spent in interrupts and softirqs (loopback networking
// among them), which the kernel charges to no process.
export type CpuUse = { seconds: number; cores: Record<string, number>; machineBusyCores: number; machineInterruptCores: number; machineCores: number };

export class CpuMeter {
  private readonly sources: Record<string, PidSource>;
  private readonly first = new Map<string, Map<number, number>>();
  private readonly last = new Map<string, Map<number, number>>();
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private machineStart = { busy: 0, total: 0, interrupts: 0 };

  constructor(sources: Record<string, PidSource>) {
    this.sources = sources;
  }

  async start(): Promise<void> {
    this.startedAt = performance.now();
    this.machineStart = await machineTicks();
    await this.sample(true);
    this.timer = setInterval(() => {
      this.chain = this.chain.then(() => this.sample(false)).catch(() => {});
    }, 250);
  }

  // A process first seen after the start was born during the step: it counts from zero.
  private async sample(initial: boolean): Promise<void> {
    for (const [name, source] of Object.entries(this.sources)) {
      const first = this.first.get(name) ?? new Map<number, number>();
      const last = this.last.get(name) ?? new Map<number, number>();
      for (const pid of await source()) {
        const ticks = await processTicks(pid);
        if (ticks === null) continue;
        if (!first.has(pid)) first.set(pid, initial ? ticks : 0);
        last.set(pid, ticks);
      }
      this.first.set(name, first);
      this.last.set(name, last);
    }
  }

  async stop(): Promise<CpuUse> {
    clearInterval(this.timer);
    await this.chain;
    await this.sample(false).catch(() => {});
    const seconds = (performance.now() - this.startedAt) / 1000;
    const machine = await machineTicks();
    const cores: Record<string, number> = {};
    for (const [name, last] of this.last) {
      let ticks = 0;
      for (const [pid, value] of last) ticks += value - (this.first.get(name)!.get(pid) ?? 0);
      cores[name] = round(ticks / ticksPerSecond / seconds);
    }
    const perSecond = (ticks: number) => ticks / ticksPerSecond / seconds;
    return {
      seconds: round(seconds),
      cores,
      machineBusyCores: round(perSecond(machine.busy - this.machineStart.busy)),
      machineInterruptCores: round(perSecond(machine.interrupts - this.machineStart.interrupts)),
      machineCores: Math.round(perSecond(machine.total - this.machineStart.total)),
    };
  }
}

const round = (value: number) => Math.round(value * 100) / 100;
