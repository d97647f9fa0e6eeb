// Load generator for the flash-sale service: node bench/load.ts <scenario> [options] (--help for all).
// Sends traffic to the instances named by --url, then reads the database back to check the invariants,
// prints a report and writes bench/results/<scenario>.json and .html. Exits 1 on a 5xx, an unexpected
// answer, a network error or a broken invariant; 2 on a usage error.
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from '../src/db.ts';
import { htmlReport } from './html.ts';
import { Http } from './http.ts';
import { checkInvariants } from './invariants.ts';
import { parseOptions, usage, UsageError, type Options } from './options.ts';
import { withoutPassword } from '../src/config.ts';
import { buildReport, textReport, type Report } from './report.ts';
import { Run } from './run.ts';
import { scenarios } from './scenarios.ts';
import { Recorder } from './stats.ts';

function readOptions(): Options | null {
  try {
    const options = parseOptions(process.argv.slice(2));
    if (options === 'help') {
      console.log(usage);
      return null;
    }
    return options;
  } catch (error) {
    const known = error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    if (!known) throw error;
    console.error(`${(error as Error).message}\n\n${usage}`);
    process.exitCode = 2;
    return null;
  }
}

// Ctrl-C once: stop sending, finish what is in flight, report. Twice: leave at once.
function onInterrupt(run: Run): void {
  let interrupted = false;
  process.on('SIGINT', () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    run.stop('interrupted');
  });
}

async function writeResults(options: Options, report: Report): Promise<string[]> {
  await mkdir(options.out, { recursive: true });
  const json = join(options.out, `${options.scenario}.json`);
  const html = join(options.out, `${options.scenario}.html`);
  await writeFile(json, `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(html, htmlReport(report));
  return [json, html];
}

async function main(options: Options): Promise<boolean> {
  const recorder = new Recorder(options.scenario === 'overload');
  const http = new Http(options.urls, options.connections, recorder);
  const sql = connect(options.databaseUrl, { max: 2 });
  const run = new Run({ options, http, recorder, sql, runId: `lt${randomBytes(4).toString('hex')}` });
  onInterrupt(run);
  const startedAt = new Date();
  try {
    const problems = await http.preflight();
    if (problems.length > 0) throw new Error(`not every instance is ready:\n  ${problems.join('\n  ')}`);
    await sql`select 1 from sales limit 1`.catch((error: Error) => {
      throw new Error(`cannot read the service's database (${withoutPassword(options.databaseUrl)}): ${error.message}. The load generator prepares its sale and checks the invariants in PostgreSQL itself: give it the service's DATABASE_URL with --database-url`);
    });
    const result = await scenarios[options.scenario](run);
    run.finish();
    if (!run.before) throw new Error('the scenario never started its measured phase');
    const invariants = await checkInvariants(sql, run.before, recorder, result.fullSaleId);
    const report = buildReport({ options, recorder, startedAt, stopReason: run.stopReason, facts: result.facts, invariants });
    console.log(textReport(report));
    const files = await writeResults(options, report);
    console.log(`written: ${files.join(', ')}`);
    return report.ok;
  } finally {
    run.finish();
    await http.close();
    await sql.end({ timeout: 5 });
  }
}

const options = readOptions();
if (options) {
  try {
    process.exitCode = (await main(options)) ? 0 : 1;
  } catch (error) {
    console.error(`load: ${(error as Error).message}`);
    if (process.env.DEBUG) console.error(error);
    process.exitCode = 1;
  }
}
