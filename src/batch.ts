// Coalesces concurrent calls into one: while a statement runs, arrivals wait and then go together.
// Under light load a call runs alone at once; under a stampede one statement serves many requests.
// Each caller's promise settles only after the whole batch's statement has returned (committed).
type Pending<I, O> = { input: I; resolve: (output: O) => void; reject: (error: unknown) => void };

// One statement at a time, a second one alongside only when a full batch is waiting: big batches cost
// PostgreSQL far less per request than several small ones at once (BENCHMARKS.md), and a queue longer
// than a batch still gets up to `maxInFlight` statements.
export function coalesce<I, O>(run: (inputs: I[]) => Promise<O[]>, limits: { maxBatch: number; maxInFlight: number }) {
  const queue: Pending<I, O>[] = [];
  let inFlight = 0;
  let scheduled = false;

  const mayStart = () =>
    queue.length > 0 && inFlight < limits.maxInFlight && (inFlight === 0 || queue.length >= limits.maxBatch);

  function flush(): void {
    scheduled = false;
    while (mayStart()) {
      const batch = queue.splice(0, limits.maxBatch);
      inFlight += 1;
      run(batch.map((pending) => pending.input))
        .then(
          (outputs) => batch.forEach((pending, index) => pending.resolve(outputs[index]!)),
          (error: unknown) => batch.forEach((pending) => pending.reject(error)),
        )
        .finally(() => {
          inFlight -= 1;
          flush();
        });
    }
  }

  return (input: I): Promise<O> =>
    new Promise<O>((resolve, reject) => {
      queue.push({ input, resolve, reject });
      // Calls made in the same turn of the event loop share the next batch.
      if (!scheduled && mayStart()) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}
