// Throwaway PostgreSQL clusters of a test's own (initdb into a temporary folder, its own port), for tests
// that need what the shared server on 5432 cannot give: a streaming replica, or a server to freeze or
// kill. They run as the unprivileged `postgres` user (initdb refuses root) and are removed afterwards.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { freePort } from './helpers.ts';

export type Cluster = {
  port: number;
  dir: string;
  server: ChildProcess;
  url: (database?: string) => string;
  output: () => string;
  // SIGSTOP and SIGCONT to every process of the cluster, as a stalled disk or a paused VM leaves it.
  freeze: () => void;
  thaw: () => void;
  stop: () => Promise<void>;
};

// The newest installed PostgreSQL's programs (Debian keeps them out of PATH).
function binary(name: string): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  return join('/usr/lib/postgresql', versions[0]!, 'bin', name);
}

function owner(): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

function run(program: string, args: string[]): void {
  execFileSync(binary(program), args, { ...owner(), stdio: ['ignore', 'pipe', 'pipe'] });
}

// The postmaster and every process it started (each backend is a process group of its own).
function signalAll(postmaster: number, signal: NodeJS.Signals): void {
  const children = readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ')'.
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster;
      } catch {
        return false;
      }
    })
    .map(Number);
  for (const pid of [postmaster, ...children]) {
    try {
      process.kill(pid, signal);
    } catch {
      // exited meanwhile
    }
  }
}

async function ready(url: string, server: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const sql = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} });
    try {
      await sql`select 1`;
      return;
    } catch (error) {
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(`PostgreSQL did not start\n${output()}`, { cause: error });
    } finally {
      await sql.end({ timeout: 1 });
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// A primary, or with `standbyOf` a streaming standby of that cluster (pg_basebackup -R).
export async function startCluster(options: { standbyOf?: Cluster } = {}): Promise<Cluster> {
  const dir = await mkdtemp(join(tmpdir(), 'flash-pg-'));
  const { uid, gid } = owner();
  await chown(dir, uid, gid);
  const data = join(dir, 'data');
  if (options.standbyOf) {
    run('pg_basebackup', ['-h', '127.0.0.1', '-p', String(options.standbyOf.port), '-U', 'postgres', '-D', data, '-R', '-X', 'stream']);
  } else {
    // Trust on the loopback, replication included (initdb's pg_hba.conf allows it with this method).
    run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync']);
  }
  const port = await freePort();
  const server = spawn(
    binary('postgres'),
    ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=100'],
    { uid, gid, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // A frozen cluster would outlive this process.
  const killGroup = () => signalAll(server.pid!, 'SIGCONT');
  process.once('exit', killGroup);
  let output = '';
  server.stdout!.on('data', (chunk) => (output += chunk));
  server.stderr!.on('data', (chunk) => (output += chunk));
  const url = (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`;
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
  const cluster: Cluster = {
    port,
    dir,
    server,
    url,
    output: () => output,
    freeze: () => signalAll(server.pid!, 'SIGSTOP'),
    thaw: () => signalAll(server.pid!, 'SIGCONT'),
    async stop() {
      // SIGCONT first: a test may have frozen it. Then a fast shutdown, or a kill if it hangs.
      if (server.exitCode === null && server.signalCode === null) {
        signalAll(server.pid!, 'SIGCONT');
        server.kill('SIGINT');
        const timer = setTimeout(() => server.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      process.off('exit', killGroup);
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await ready(url(), server, () => output);
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}
