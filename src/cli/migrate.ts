// npm run migrate: creates the database if missing, applies pending migrations, then sql/functions.sql if it changed.
import { loadConfig } from '../config.ts';
import { connect } from '../db.ts';
import { ensureDatabase, migrate } from '../migrate.ts';

const config = loadConfig();
await ensureDatabase(config.databaseUrl);
const sql = connect(config.databaseUrl, { max: 1 });
try {
  let functionsChecksum: string | undefined;
  const applied = await migrate(sql, {
    lockTimeoutMs: config.migrationLockTimeoutMs,
    onRetry: (file, attempt, error) => console.error(`${file}: ${(error as Error).message}; trying again (attempt ${attempt + 1})`),
    onFunctionsApplied: (checksum) => (functionsChecksum = checksum),
  });
  console.log(applied.length > 0 ? `applied ${applied.join(', ')}` : 'no migration pending');
  if (functionsChecksum !== undefined) console.log(`applied sql/functions.sql (sha256 ${functionsChecksum})`);
} finally {
  await sql.end({ timeout: 5 });
}
