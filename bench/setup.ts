// What the benchmark creates and must remove again: its own database and its own Redis key prefix.
// Also the description of the machine it ran on.
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import postgres from 'postgres';
import { createClient } from 'redis';
import { connect, type Sql } from '../src/db.ts';
import { pgbenchCommand } from './ceilings.ts';

export type BenchDatabase = { name: string; url: string; sql: Sql; drop: () => Promise<void> };

// An empty database with function timing on (pg_stat_user_functions: time inside checkout() and
// purchase()); the first service instance applies the migrations.
export async function createDatabase(adminUrl: string, name: string): Promise<BenchDatabase> {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  await admin`create database ${admin(name)}`;
  await admin`alter database ${admin(name)} set track_functions = 'all'`.catch(() => {});
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const sql = connect(url.toString(), { max: 2 });
  let dropped = false;
  return {
    name,
    url: url.toString(),
    sql,
    async drop() {
      if (dropped) return;
      dropped = true;
      await sql.end({ timeout: 5 }).catch(() => {});
      await admin`drop database if exists ${admin(name)} with (force)`;
      await admin.end({ timeout: 5 });
    },
  };
}

// Deletes every key under the prefix (SCAN + UNLINK: never FLUSHDB on a shared server). Returns the count.
export async function dropRedisPrefix(url: string, prefix: string): Promise<number> {
  const client = createClient({ url, socket: { connectTimeout: 2_000, reconnectStrategy: false } });
  await client.connect();
  let count = 0;
  try {
    for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1_000 })) {
      if (keys.length > 0) count += await client.unlink(keys);
    }
  } finally {
    client.destroy();
  }
  return count;
}

// Redis's own process id (INFO server), if that process is on this machine (/proc/<pid>/comm says so).
export async function localRedisPid(url: string): Promise<number | null> {
  const client = createClient({ url, socket: { connectTimeout: 2_000, reconnectStrategy: false } });
  try {
    await client.connect();
    const pid = Number(/process_id:(\d+)/.exec(await client.info('server'))?.[1]);
    const comm = pid ? await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '') : '';
    return comm.includes('redis') ? pid : null;
  } catch {
    return null;
  } finally {
    client.destroy();
  }
}

function commandOutput(command: string, args: string[]): string | null {
  try {
    return execFileSync(command, args, { encoding: 'utf8', timeout: 5_000 }).trim();
  } catch {
    return null;
  }
}

export type Machine = {
  cpus: number;
  cpuModel: string;
  memoryGb: number;
  loadAverageAtStart: number[];
  node: string;
  postgres: string;
  pgbench: string | null;
  redis: string | null;
  kernel: string | null;
  // the code measured: commit, and the files under src/ and migrations/ that differ from it
  commit: string | null;
  uncommitted: string[];
};

export async function describeMachine(sql: Sql, redisUrl: string): Promise<Machine> {
  const [pg] = await sql<{ version: string }[]>`select version()`;
  let redis: string | null;
  const client = createClient({ url: redisUrl, socket: { connectTimeout: 2_000, reconnectStrategy: false } });
  try {
    await client.connect();
    redis = /redis_version:(\S+)/.exec(await client.info('server'))?.[1] ?? null;
  } catch {
    redis = null;
  } finally {
    client.destroy();
  }
  return {
    cpus: Number(commandOutput('nproc', [])) || cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGb: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    loadAverageAtStart: loadavg().map((value) => Math.round(value * 100) / 100),
    node: process.version,
    postgres: pg!.version.split(' on ')[0]!,
    pgbench: commandOutput(pgbenchCommand, ['--version']),
    redis,
    kernel: commandOutput('uname', ['-r']),
    commit: commandOutput('git', ['log', '-1', '--format=%h %s']),
    uncommitted: (commandOutput('git', ['status', '--porcelain', '--', 'src', 'migrations', 'package.json']) ?? '').split('\n').filter(Boolean),
  };
}
