// The one place that creates postgres.js instances, and what their errors mean.
import postgres from 'postgres';

export type Sql = postgres.Sql;

// `statementTimeoutMs` bounds every statement (and lock wait) on the server's side; command-line tools
// (the audit, the migrator) leave it out.
export function connect(databaseUrl: string, options: { max?: number; statementTimeoutMs?: number } = {}): Sql {
  const timeouts = options.statementTimeoutMs === undefined ? {} : {
    statement_timeout: options.statementTimeoutMs,
    lock_timeout: options.statementTimeoutMs,
    idle_in_transaction_session_timeout: Math.max(10_000, options.statementTimeoutMs * 5),
  };
  return postgres(databaseUrl, {
    max: options.max ?? 10,
    // Short: a request waits for a connection no longer than a client would wait for an answer.
    connect_timeout: 2,
    idle_timeout: 60,
    onnotice: () => {},
    connection: { application_name: 'flash-sale', ...timeouts },
    // bigint and count(*) arrive as numbers: ids and counts stay far below 2^53.
    types: {
      bigint: { to: 20, from: [20], serialize: (value: number) => String(value), parse: (value: string) => Number(value) },
    },
  });
}

// postgres.js and PostgreSQL codes that mean "the connection is gone", not "the query is wrong".
const connectionLostCodes = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN',
  'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED',
  '53300', '57P01', '57P02', '57P03',
]);
// The database did not answer in time: statement_timeout (57014), lock_timeout (55P03), or our own deadline.
const tooSlowCodes = new Set(['57014', '55P03', 'STATEMENT_DEADLINE']);

function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : '';
}

const isConnectionLost = (error: unknown) => connectionLostCodes.has(codeOf(error)) || codeOf(error).startsWith('08');

export const isLockTimeout = (error: unknown) => codeOf(error) === '55P03';

export function isDatabaseUnavailable(error: unknown): boolean {
  return isConnectionLost(error) || tooSlowCodes.has(codeOf(error));
}

// Runs an idempotent statement once more after a connection failure (a cut, a restart): sent again, a
// checkout finds its own record and a purchase that did buy replays its receipt. A statement that was
// too slow is not sent again: the database is busy or stalled.
export async function retryOnce<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (!isConnectionLost(error)) throw error;
    return work();
  }
}

// A frozen or unreachable server cannot enforce its own statement_timeout: this bounds the wait here.
// The statement may still finish on the server; an idempotent one is safe to send again.
export async function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`no answer from PostgreSQL within ${ms} ms`), { code: 'STATEMENT_DEADLINE' })), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

