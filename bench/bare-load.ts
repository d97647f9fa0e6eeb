// The HTTP ceiling's client: the load generator's own HTTP client (bench/http.ts, undici, keep-alive)
// sending POSTs as fast as they are answered over a fixed number of connections, for a fixed time.
// node bench/bare-load.ts --url URL --connections N --duration S --out FILE
import { writeFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Http } from './http.ts';
import { startProgress } from './progress.ts';
import { Recorder } from './stats.ts';

const { values } = parseArgs({
  options: { url: { type: 'string' }, connections: { type: 'string' }, duration: { type: 'string' }, out: { type: 'string' } },
});
if (!values.url || !values.out) throw new Error('usage: node bench/bare-load.ts --url URL --connections N --duration S --out FILE');
const connections = Number(values.connections ?? 16);
const durationS = Number(values.duration ?? 10);

const recorder = new Recorder();
const http = new Http([values.url], connections, recorder);
recorder.begin();
const progress = startProgress(recorder, 'bare-http', () => '');
const deadline = performance.now() + durationS * 1000;
let next = 0;
await Promise.all(Array.from({ length: connections }, async () => {
  while (performance.now() < deadline) {
    next += 1;
    await http.call('checkout', 'POST', `/checkout?user_id=bare-${next % 10_000}&id=${next}`);
  }
}));
recorder.end();
progress.stop();
await http.close();

const seconds = recorder.elapsedMs() / 1000;
const histogram = recorder.byEndpoint.get('checkout')!.histogram;
const ms = (percentile: number) => Math.min(histogram.getValueAtPercentile(percentile), histogram.maxValue) / 1000;
const result = {
  requests: recorder.total,
  errors: recorder.errors,
  durationS: Math.round(seconds * 1000) / 1000,
  rps: Math.round((recorder.total / seconds) * 10) / 10,
  latencyMs: { p50: ms(50), p90: ms(90), p99: ms(99), p999: ms(99.9), max: histogram.maxValue / 1000, mean: Math.round(histogram.mean) / 1000 },
};
await writeFile(values.out, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result));
process.exitCode = recorder.errors > 0 ? 1 : 0;
