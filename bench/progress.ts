// One line of progress on stderr: rewritten in place on a terminal, a new line every few seconds otherwise.
// The measured phase opens with "[label] measuring" and closes with "[label] done ...", so that a
// supervising process (bench/bench.ts) can tell exactly when it ran.
import type { Recorder } from './stats.ts';

export type Progress = { stop: () => void };

export function startProgress(recorder: Recorder, label: string, status: () => string): Progress {
  const tty = process.stderr.isTTY === true;
  const everyMs = tty ? 500 : 5_000;
  let lastTotal = 0;
  let lastAt = recorder.elapsedMs();
  // The rate since the previous line; the last line gives the whole run's.
  const line = (final = false) => {
    const now = recorder.elapsedMs();
    const rate = final ? (recorder.total * 1000) / Math.max(1, now) : ((recorder.total - lastTotal) * 1000) / Math.max(1, now - lastAt);
    lastTotal = recorder.total;
    lastAt = now;
    const extra = status();
    return `[${label}]${final ? ' done' : ''} ${(now / 1000).toFixed(1)}s  ${Math.round(rate)} req/s  ${recorder.total} requests  ${recorder.errors} errors${extra ? `  ${extra}` : ''}`;
  };
  process.stderr.write(`[${label}] measuring\n`);
  const timer = setInterval(() => {
    if (tty) process.stderr.write(`\r${line()}\x1b[K`);
    else process.stderr.write(`${line()}\n`);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      process.stderr.write(tty ? `\r${line(true)}\x1b[K\n` : `${line(true)}\n`);
    },
  };
}
