// The entry point: config → database → migrations → app → listen, and an orderly drain on SIGTERM.
import { buildApp } from './app.ts';
import { createRedis } from './redis.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { connect, isDatabaseUnavailable } from './db.ts';
import { ensureDatabase, migrate, schemaDifference } from './migrate.ts';
import { localDependencies } from './local.ts';
import { startScheduler } from './scheduler.ts';
import { ensureCurrentSale } from './store.ts';

class SchemaError extends Error {}

// PostgreSQL may still be starting (compose, a reboot): try for a bounded while, then give up loudly.
async function withRetries<T>(work: () => Promise<T>, attempts: number, onRetry: (error: unknown) => void): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= attempts || error instanceof SchemaError) throw error;
      onRetry(error);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function main(config: Config): Promise<void> {
  const local = await localDependencies(config);
  const pool = { max: config.databasePoolMax, statementTimeoutMs: config.statementTimeoutMs };
  const sql = connect(local.databaseUrl, pool);
  const readSql = config.readDatabaseUrl ? connect(config.readDatabaseUrl, pool) : sql;
  const probeSql = connect(local.databaseUrl, { max: 1, statementTimeoutMs: config.healthTimeoutMs });
  const redis = createRedis({
    url: local.redisUrl,
    keyPrefix: config.redisKeyPrefix,
    timeoutMs: config.redisTimeoutMs,
    onError: (error) => app.log.warn({ err: error }, 'redis error; rate limits let requests through until it is back'),
  });
  const app = buildApp(config, { sql, readSql, probeSql, redis });
  for (const note of local.notes) app.log.info(note);
  // postgres.js drops the promise of the array-type fetch a new connection makes (fetchArrayTypes): a cut
  // just then rejects it unhandled. The pool recovers by itself, so that one is logged; any other stops us.
  process.on('unhandledRejection', (reason) => {
    if (!isDatabaseUnavailable(reason)) throw reason;
    app.log.warn({ err: reason }, 'a database connection was cut while it opened');
  });

  await withRetries(
    async () => {
      if (config.migrate) {
        await ensureDatabase(local.databaseUrl);
        const applied = await migrate(sql, {
          lockTimeoutMs: config.migrationLockTimeoutMs,
          onRetry: (file, attempt, error) => app.log.warn({ err: error, file, attempt }, 'migration could not take its locks in time; trying again'),
          onFunctionsApplied: (checksum) => app.log.info({ checksum }, 'sql/functions.sql applied'),
        });
        if (applied.length > 0) app.log.info({ applied }, 'migrations applied');
      }
      // Serve only the schema this code was written for: a newer one is a newer release's (a rollback
      // would need its migrations undone), an older one lacks what this code calls.
      const { missing, unknown } = await schemaDifference(sql);
      if (unknown.length > 0) throw new SchemaError(`the database has migrations this version does not know (${unknown.join(', ')}): a newer release migrated it; deploy that release`);
      if (missing.length > 0) throw new SchemaError(`the database lacks migrations this version needs (${missing.join(', ')}): run npm run migrate with this version first, or start with MIGRATE=on`);
      // The current sale is open before the first request (read endpoints never create it).
      const sale = await ensureCurrentSale(sql, config);
      if (sale.created) app.log.info({ saleId: sale.saleId }, 'sale opened');
    },
    30,
    (error) => app.log.warn({ err: error }, 'database not ready; retrying'),
  );
  redis.start();
  const scheduler = startScheduler(sql, config, app.log, { retentionDays: config.attemptsRetentionDays });
  await app.listen({ port: config.port, host: config.host });

  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'draining');
    setTimeout(() => {
      app.log.error('grace period over; exiting with requests still open');
      process.exit(1);
    }, config.shutdownGraceMs).unref();
    scheduler.stop();
    await app.close(); // stops accepting, waits for in-flight requests
    await redis.close();
    if (readSql !== sql) await readSql.end({ timeout: 5 });
    await probeSql.end({ timeout: 5 });
    await sql.end({ timeout: 5 });
    await local.stop();
    app.log.info('stopped');
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

try {
  await main(loadConfig());
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(`configuration error: ${error.message}`);
  } else if (error instanceof SchemaError) {
    console.error(`refusing to start: ${error.message}`);
  } else {
    console.error('failed to start:', error);
  }
  process.exit(1);
}
