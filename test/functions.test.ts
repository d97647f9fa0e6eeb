// sql/functions.sql holds the live definition of every SQL function: the migrator applies it after the
// numbered migrations whenever it changed, and never over a newer release's schema.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Sql } from '../src/db.ts';
import { migrate } from '../src/migrate.ts';
import { cleanUp, createDatabase } from './helpers.ts';

const functionsFile = fileURLToPath(new URL('../sql/functions.sql', import.meta.url));
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

async function definitions(sql: Sql): Promise<Map<string, string>> {
  const rows = await sql<{ signature: string; definition: string }[]>`
    select p.oid::regprocedure::text as signature, pg_get_functiondef(p.oid) as definition
    from pg_proc p where p.pronamespace = 'public'::regnamespace`;
  return new Map(rows.map((row) => [row.signature, row.definition]));
}

async function recordedChecksum(sql: Sql): Promise<string | undefined> {
  const [table] = await sql<{ exists: boolean }[]>`select to_regclass('schema_functions') is not null as exists`;
  if (!table!.exists) return undefined;
  const rows = await sql<{ checksum: string }[]>`select checksum from schema_functions`;
  assert.ok(rows.length <= 1, 'one checksum recorded');
  return rows[0]?.checksum;
}

// A copy of sql/functions.sql with one function's body changed, in a directory of its own.
async function changedCopy(): Promise<{ file: string; text: string; marker: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'flash-functions-'));
  const marker = '-- changed by test/functions.test.ts';
  const original = await readFile(functionsFile, 'utf8');
  const anchor = '  recount_id bigint;\nbegin\n';
  assert.ok(original.includes(anchor), 'refresh_sold_counts() is where the test expects it');
  const text = original.replace(anchor, `${anchor}  ${marker}\n`);
  const file = join(dir, 'functions.sql');
  await writeFile(file, text);
  return { file, text, marker, remove: () => rm(dir, { recursive: true }) };
}

const refreshDefinition = async (sql: Sql) =>
  (await sql<{ definition: string }[]>`select pg_get_functiondef('refresh_sold_counts()'::regprocedure) as definition`)[0]!.definition;

test('a database migrated from nothing has exactly the functions of sql/functions.sql', async () => {
  const database = await createDatabase();
  try {
    const text = await readFile(functionsFile, 'utf8');
    assert.equal(await recordedChecksum(database.sql), sha256(text), 'the migrator applied the file and recorded it');

    const named = [...text.matchAll(/^create or replace function (\w+)\(/gm)].map((match) => match[1]!).sort();
    const defined = [...(await definitions(database.sql)).keys()].map((signature) => signature.replace(/\(.*$/, '')).sort();
    assert.deepEqual(defined, named, 'every function in the schema is defined in sql/functions.sql, once');

    const before = await definitions(database.sql);
    await database.sql.file(functionsFile);
    assert.deepEqual(await definitions(database.sql), before, 'applying the file again changes no definition');
  } finally {
    await database.drop();
  }
});

test('a changed sql/functions.sql is applied by the next migrate() and recorded; an unchanged one is not applied again', async () => {
  const database = await createDatabase();
  const changed = await changedCopy();
  try {
    const { sql } = database;
    const applied: string[] = [];
    const onFunctionsApplied = (checksum: string) => applied.push(checksum);

    assert.deepEqual(await migrate(sql, { functionsFile: changed.file, onFunctionsApplied }), [], 'no migration was pending');
    assert.deepEqual(applied, [sha256(changed.text)]);
    assert.equal(await recordedChecksum(sql), sha256(changed.text));
    assert.ok((await refreshDefinition(sql)).includes(changed.marker), 'the changed body is live');

    // Put the original functions back behind the migrator's back: the recorded checksum still names the
    // changed file, so migrating with it again must leave the database alone.
    await sql.file(functionsFile);
    await migrate(sql, { functionsFile: changed.file, onFunctionsApplied });
    assert.equal(applied.length, 1, 'the unchanged file was not applied again');
    assert.ok(!(await refreshDefinition(sql)).includes(changed.marker));

    await migrate(sql, { onFunctionsApplied });
    const original = await readFile(functionsFile, 'utf8');
    assert.deepEqual(applied, [sha256(changed.text), sha256(original)], 'back to the original file: applied again');
    assert.equal(await recordedChecksum(sql), sha256(original));
  } finally {
    await cleanUp([() => database.drop(), () => changed.remove()]);
  }
});

test('a migrator whose migrations are older than the database\'s, or stop short of its own, applies no functions', async () => {
  const database = await createDatabase();
  const earlier = await createDatabase({ migrateThrough: '0003_cached_plans.sql' });
  const changed = await changedCopy();
  try {
    const original = sha256(await readFile(functionsFile, 'utf8'));
    const applied: string[] = [];
    await database.sql`insert into schema_migrations (version) values ('9999_from_a_newer_release.sql')`;
    await migrate(database.sql, { functionsFile: changed.file, onFunctionsApplied: (checksum) => applied.push(checksum) });
    assert.deepEqual(applied, [], 'an older release left a newer release\'s functions alone');
    assert.equal(await recordedChecksum(database.sql), original);
    assert.ok(!(await refreshDefinition(database.sql)).includes(changed.marker));

    // A test of an old migration stops there: today's functions would not fit that schema.
    assert.equal(await recordedChecksum(earlier.sql), undefined);
    const [codeKey] = await earlier.sql<{ exists: boolean }[]>`select to_regproc('code_key') is not null as exists`;
    assert.equal(codeKey!.exists, false, 'no function from a later migration was made');
  } finally {
    await cleanUp([() => database.drop(), () => earlier.drop(), () => changed.remove()]);
  }
});
