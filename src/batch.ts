// Coalesces concurrent calls into one: while a statement runs, arrivals wait and then go together.
// Under light load a call runs alone at once; under a stampede one statement serves many requests.
// Each caller's promise settles only after the whole batch's statement has returned (committed).
// The wait is bounded twice: a call that finds `maxQueued` calls already waiting, or that has not
// started its statement within `queueTimeoutMs`, is refused at once with `overloaded` and never sent.
import { AppError, messages } from './errors.ts';

type Pending<I, O> = { input: I; resolve: (output: O) => void; reject: (error: unknown) => void; timer: NodeJS.Timeout | null };

// `lingerMs`: how long a batch that is not full waits for company before it starts, when it may start.
export type Limits = { maxBatch: number; maxInFlight: number; maxQueued: number; queueTimeoutMs: number; lingerMs?: number };

// One statement at a time, a second one alongside only when a full batch is waiting: big batches cost
// PostgreSQL far less per request than several small ones at once (BENCHMARKS.md), and a queue longer
// than a batch still gets up to `maxInFlight` statements.
export function coalesce<I, O>(run: (inputs: I[]) => Promise<O[]>, limits: Limits, onShed: () => void = () => {}) {
  const queue: Pending<I, O>[] = [];
  let inFlight = 0;
  let scheduled = false;

  // Every call waits the same budget in arrival order, so the expired ones are always at the front.
  const dropExpired = () => {
    while (queue.length > 0 && queue[0]!.timer === null) queue.shift();
  };

  const mayStart = () =>
    queue.length > 0 && inFlight < limits.maxInFlight && (inFlight === 0 || queue.length >= limits.maxBatch);

  function flush(): void {
    scheduled = false;
    clearTimeout(linger);
    linger = undefined;
    dropExpired();
    while (mayStart()) {
      const batch = queue.splice(0, limits.maxBatch).filter((pending) => pending.timer !== null);
      for (const pending of batch) clearTimeout(pending.timer!);
      inFlight += 1;
      run(batch.map((pending) => pending.input))
        .then(
          (outputs) => batch.forEach((pending, index) => pending.resolve(outputs[index]!)),
          (error: unknown) => batch.forEach((pending) => pending.reject(error)),
        )
        .finally(() => {
          inFlight -= 1;
          if (limits.lingerMs) schedule();
          else flush();
        });
      dropExpired();
    }
  }

  // Soon, or after lingerMs for a batch that is not full (a full one cuts the linger short).
  let linger: NodeJS.Timeout | undefined;
  function schedule(): void {
    if (!mayStart()) return;
    if (limits.lingerMs && queue.length < limits.maxBatch) linger ??= setTimeout(flush, limits.lingerMs);
    else if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  }

  const shed = (reject: (error: unknown) => void) => {
    onShed();
    reject(new AppError('overloaded', messages.overloaded()));
  };

  return (input: I): Promise<O> =>
    new Promise<O>((resolve, reject) => {
      dropExpired();
      if (queue.length >= limits.maxQueued) return shed(reject);
      const pending: Pending<I, O> = { input, resolve, reject, timer: null };
      pending.timer = setTimeout(() => {
        pending.timer = null;
        shed(reject);
      }, limits.queueTimeoutMs);
      queue.push(pending);
      // Calls made in the same turn of the event loop share the next batch.
      schedule();
    });
}
