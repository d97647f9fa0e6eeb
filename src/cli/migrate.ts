// npm run migrate: creates the database if missing and applies pending migrations.
import { loadConfig } from '../config.ts';
import { connect, ensureDatabase, migrate } from '../db.ts';

const config = loadConfig();
await ensureDatabase(config.databaseUrl);
const sql = connect(config.databaseUrl, { max: 1 });
try {
  const applied = await migrate(sql, {
    lockTimeoutMs: config.migrationLockTimeoutMs,
    onRetry: (file, attempt, error) => console.error(`${file}: ${(error as Error).message}; trying again (attempt ${attempt + 1})`),
  });
  console.log(applied.length > 0 ? `applied ${applied.join(', ')}` : 'schema is up to date');
} finally {
  await sql.end({ timeout: 5 });
}
