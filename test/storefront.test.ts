// The storefront in a real browser (Debian's Chromium through playwright-core) against a real instance:
// buy through the page up to the limit, live sold counts, a lost answer finished on reload without
// buying twice, and a phone-sized screen without horizontal scrolling; then, with more open sales than
// one page of GET /sales, every one of them reached through "Show older sales".
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { createDatabase, dropRedisPrefix, startInstance, testEnv, uniquePrefix, type Instance, type TestDatabase } from './helpers.ts';

const chromiumPath = '/usr/bin/chromium';
// The README's screenshot is refreshed on request (STOREFRONT_SCREENSHOT=1); a plain test run writes to
// the temporary directory, so running the tests never changes the repository.
const screenshotPath = process.env.STOREFRONT_SCREENSHOT === '1'
  ? fileURLToPath(new URL('../docs/storefront.png', import.meta.url))
  : join(tmpdir(), `flash-sale-storefront-${process.pid}.png`);
const launchArgs = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run',
  '--disable-component-update', '--disable-sync',
];

async function itemsOwned(database: TestDatabase, saleId: number, userId: string): Promise<number> {
  const [row] = await database.sql<{ count: number }[]>`
    select count(*)::int as count from items where sale_id = ${saleId} and buyer_id = ${userId}`;
  return row!.count;
}

async function pendingCode(page: Page): Promise<string | null> {
  return (await page.evaluate(`sessionStorage.getItem('flash-sale:pending-purchase')`)) as string | null;
}

// The sale ids the page lists, in its order.
async function listedSales(page: Page): Promise<number[]> {
  return (await page.evaluate(`[...document.querySelectorAll('#sales li')].map((li) => Number(li.dataset.sale))`)) as number[];
}

async function openSales(database: TestDatabase): Promise<number[]> {
  const rows = await database.sql<{ id: number }[]>`select id::int from sales where sold < size order by starts_at desc`;
  return rows.map((row) => row.id);
}

// Every lazy image loaded, so the screenshot shows the pictures.
async function loadAllImages(page: Page): Promise<void> {
  await page.evaluate(`document.querySelectorAll('img[loading="lazy"]').forEach((img) => { img.loading = 'eager'; })`);
  await page.waitForFunction(`[...document.images].every((img) => img.complete && img.naturalWidth > 0)`, undefined, { timeout: 15_000 });
}

type Opened = { database?: TestDatabase; instance?: Instance; browser?: Browser };

// A database and a service instance of the test's own, closed after it with the browser the test opens;
// null (and the test skipped) where Debian's Chromium is missing.
async function openService(t: TestContext, env: Record<string, string> = {}) {
  if (!existsSync(chromiumPath)) {
    t.skip(`${chromiumPath} is missing: install Debian's Chromium (apt-get install -y chromium) to run the browser test`);
    return null;
  }
  const opened: Opened = {};
  const prefix = uniquePrefix();
  t.after(async () => {
    await opened.browser?.close();
    await opened.instance?.stop();
    await opened.database?.drop();
    await dropRedisPrefix(prefix);
  });
  const database = (opened.database = await createDatabase());
  const instance = (opened.instance = await startInstance(testEnv(database, prefix, env)));
  return { opened, database, instance };
}

// The storefront in Chromium at 1280x900, with every error the page reports collected.
async function openStorefront(opened: Opened, url: string) {
  const browser = (opened.browser = await chromium.launch({ executablePath: chromiumPath, args: launchArgs }));
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text());
  });
  await page.goto(`${url}/`);
  return { browser, page, pageErrors };
}

test('the storefront buys through the page up to the limit, updates live, and fits a phone', { timeout: 240_000 }, async (t) => {
  // The limit is stored with the sale when it is created, which this instance does at start-up.
  const fixture = await openService(t, { PER_USER_LIMIT: '2' });
  if (!fixture) return;
  const { opened, database, instance } = fixture;
  const [sale] = await database.sql<{ id: number; perUserLimit: number }[]>`
    select id::int, per_user_limit as "perUserLimit" from sales order by starts_at desc limit 1`;
  assert.equal(sale!.perUserLimit, 2);
  const saleId = sale!.id;

  const { browser, page, pageErrors } = await openStorefront(opened, instance.url);

  // The open sale, chosen by default, with its sold count and a countdown to the next one.
  const saleCard = page.locator(`#sales button.sale-card[data-sale="${saleId}"]`);
  await saleCard.waitFor();
  assert.equal(await saleCard.getAttribute('aria-pressed'), 'true');
  assert.match(await saleCard.innerText(), /0\s*\/ 10,000 sold/);
  await page.waitForFunction(`/^\\d+:\\d\\d(:\\d\\d)?$/.test(document.getElementById('countdown').textContent)`);

  // The first page of available items, each with its picture, its name and a Buy button.
  const cards = page.locator('#grid li.item');
  await cards.first().waitFor();
  assert.equal(await cards.count(), 24);
  assert.equal(await cards.first().locator('img').getAttribute('src'), `/items/${await cards.first().getAttribute('data-item')}/image`);

  // The user id: refused by the page with the API's rules, then kept in localStorage.
  await page.getByLabel('User id').fill('not valid!');
  await page.getByRole('button', { name: 'Save' }).click();
  assert.match(await page.locator('#user-error').innerText(), /letters, digits/);
  await page.getByLabel('User id').fill('shopper_1');
  await page.getByLabel('User id').press('Enter');
  assert.equal(await page.locator('#user-name').innerText(), 'shopper_1');
  assert.equal(await page.evaluate(`localStorage.getItem('flash-sale:user-id')`), 'shopper_1');

  const result = page.locator('#result');

  // First purchase, with the mouse.
  const first = cards.nth(0);
  const firstId = await first.getAttribute('data-item');
  const firstName = await first.locator('.item-name').innerText();
  await first.getByRole('button', { name: 'Buy' }).click();
  await page.locator('#result.ok').waitFor();
  let text = await result.innerText();
  assert.match(text, /Purchase successful/);
  assert.ok(text.includes(`#${firstId}`), text);
  assert.ok(text.includes(firstName), text);
  assert.equal(await first.getByRole('button').innerText(), 'Bought ✓');
  assert.equal(await pendingCode(page), null);
  assert.match(await page.locator('#announcer[aria-live="polite"]').textContent() ?? '', /^Purchase successful\./);

  // Second purchase, with the keyboard.
  const second = cards.nth(1);
  const secondId = await second.getAttribute('data-item');
  await second.getByRole('button', { name: 'Buy' }).focus();
  await page.keyboard.press('Enter');
  await page.waitForFunction(`document.querySelector('#result.ok')?.textContent.includes('#${secondId}')`);

  // The third is refused with the service's own message; the item stays for sale.
  const third = cards.nth(2);
  await third.getByRole('button', { name: 'Buy' }).click();
  await page.locator('#result.bad').waitFor();
  text = await result.innerText();
  assert.match(text, /User has reached the maximum of 2 items per sale/);
  assert.match(await page.locator('#announcer').textContent() ?? '', /User has reached the maximum of 2 items per sale/);
  assert.equal(await third.getByRole('button', { name: 'Buy' }).isEnabled(), true);
  assert.equal(await pendingCode(page), null);

  // My purchases: both items of this sale.
  await page.waitForFunction(`document.querySelectorAll('#purchases li').length === 2`);
  assert.match(await page.locator('#purchases-meta').innerText(), /2 of 2 bought/);

  // The database agrees.
  assert.equal(await itemsOwned(database, saleId, 'shopper_1'), 2);
  await page.waitForFunction(`/2\\s*\\/ 10,000 sold/.test(document.querySelector('#sales .sale-card').textContent)`);

  await loadAllImages(page);
  await mkdir(dirname(screenshotPath), { recursive: true });
  await page.screenshot({ path: screenshotPath, fullPage: true });

  // Live: a purchase made elsewhere shows up in the sold count without touching the page.
  const otherItem = await cards.nth(5).getAttribute('data-item');
  const checkout = (await fetch(`${instance.url}/checkout?user_id=elsewhere&id=${otherItem}`, { method: 'POST' }).then((r) => r.json())) as {
    code: string;
  };
  const bought = await fetch(`${instance.url}/purchase?code=${checkout.code}`, { method: 'POST' });
  assert.equal(bought.status, 200);
  await page.waitForFunction(`/3\\s*\\/ 10,000 sold/.test(document.querySelector('#sales .sale-card').textContent)`, undefined, { timeout: 6_000 });

  // A lost answer: the purchase happens, the page never hears it, keeps the code and offers a retry.
  await page.getByRole('button', { name: 'Change' }).click();
  await page.getByLabel('User id').fill('resumer');
  await page.getByLabel('User id').press('Enter');
  // Another user: nothing of the previous one's stays (their latest result, their items marked Yours).
  assert.equal(await page.locator('#grid li.mine').count(), 0);
  assert.equal(await first.getByRole('button').innerText(), 'Sold');
  assert.equal(await result.isHidden(), true);
  await page.waitForFunction(`document.querySelectorAll('#purchases li').length === 0 && /Nothing bought/.test(document.getElementById('purchases-meta').textContent)`);
  let purchaseRequests = 0;
  await page.route('**/purchase?*', async (route) => {
    purchaseRequests += 1;
    await route.fetch(); // reaches the service, which buys (or replays)...
    await route.abort('connectionreset'); // ...but the answer is lost on the way back
  });
  const fourth = cards.nth(3);
  const fourthId = await fourth.getAttribute('data-item');
  await fourth.getByRole('button', { name: 'Buy' }).click();
  await page.waitForFunction(`document.querySelector('#result.bad')?.textContent.includes('not confirmed')`);
  assert.equal(await fourth.getByRole('button', { name: 'Buy' }).isEnabled(), true);
  const code = await pendingCode(page);
  assert.ok(code, 'the pending code is kept in sessionStorage');
  assert.ok(purchaseRequests >= 1);
  assert.equal(await itemsOwned(database, saleId, 'resumer'), 1);

  // Reload: the page finishes with the same code (the same receipt), never a second checkout.
  await page.unroute('**/purchase?*');
  await page.reload();
  await page.waitForFunction(`document.querySelector('#result.ok')?.textContent.includes('#${fourthId}')`);
  assert.ok((await result.innerText()).includes(JSON.parse(code!).code));
  assert.equal(await pendingCode(page), null);
  // The result leaves by itself after a few seconds.
  await result.waitFor({ state: 'hidden', timeout: 10_000 });
  await page.reload();
  await page.locator('#grid li.item').first().waitFor();
  assert.equal(await itemsOwned(database, saleId, 'resumer'), 1);
  const [attempts] = await database.sql<{ count: number }[]>`select count(*)::int as count from checkout_attempts where user_id = 'resumer'`;
  assert.equal(attempts!.count, 1);
  assert.equal(await itemsOwned(database, saleId, 'shopper_1'), 2);
  assert.deepEqual(pageErrors.filter((message) => !/ERR_CONNECTION_RESET|Failed to load resource/.test(message)), []);

  // A phone-sized screen: the grid is there, two columns wide, with nothing to scroll sideways.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const small = await phone.newPage();
  await small.goto(`${instance.url}/`);
  const smallCards = small.locator('#grid li.item');
  await smallCards.first().waitFor();
  await smallCards.first().scrollIntoViewIfNeeded();
  assert.equal(await smallCards.first().isVisible(), true);
  const widths = (await small.evaluate(
    `({ scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth, body: document.body.scrollWidth })`,
  )) as { scroll: number; client: number; body: number };
  assert.ok(widths.scroll <= widths.client && widths.body <= widths.client, `no horizontal scrolling: ${JSON.stringify(widths)}`);
  const a = (await smallCards.nth(0).boundingBox())!;
  const b = (await smallCards.nth(1).boundingBox())!;
  assert.ok(a.x >= 0 && b.x + b.width <= 390, `cards inside the screen: ${JSON.stringify({ a, b })}`);
  assert.equal(Math.round(a.y), Math.round(b.y), 'two cards side by side');

  // Deep in the grid (500 items scrolled), My purchases is one tap away, and the receipt's code fits one line.
  await small.getByLabel('User id').fill('shopper_1');
  await small.getByLabel('User id').press('Enter');
  while ((await smallCards.count()) < 500) {
    const before = await smallCards.count();
    await small.evaluate('window.scrollTo(0, document.body.scrollHeight)');
    await small.waitForFunction(`document.querySelectorAll('#grid li.item').length > ${before}`);
  }
  assert.ok((await small.evaluate('window.scrollY')) as number > 20_000, 'scrolled far down the grid');
  await small.getByRole('button', { name: 'My purchases' }).tap();
  const drawer = small.locator('#purchases-panel');
  await small.waitForFunction(`document.querySelectorAll('#purchases li').length === 2`);
  const box = (await drawer.boundingBox())!;
  assert.ok(box.y >= 0 && box.y + box.height <= 844, `the drawer is on screen: ${JSON.stringify(box)}`);
  if (process.env.STOREFRONT_SCREENSHOT === '1') await small.screenshot({ path: join(dirname(screenshotPath), 'storefront-phone-purchases.png') });
  await small.keyboard.press('Escape');
  assert.equal(await drawer.isHidden(), true);
  const buyHere = small.locator('#grid li.item:not(.sold) button.buy').last();
  await buyHere.tap();
  await small.locator('#result.bad').waitFor(); // shopper_1 has used the limit of 2
  const sheet = (await small.locator('#result').boundingBox())!;
  assert.ok(sheet.y + sheet.height <= 844);
  await small.getByRole('button', { name: 'Dismiss result' }).tap();
  assert.equal(await small.locator('#result').isHidden(), true);
  await phone.close();
});

test('the storefront pages back to the oldest open sale, keeps older pages across polls, buys in them', { timeout: 120_000 }, async (t) => {
  const fixture = await openService(t);
  if (!fixture) return;
  const { opened, database, instance } = fixture;
  // 45 quiet hours before the current sale, nothing sold in any: with it, 46 open sales, which GET /sales
  // lists 20 at a time.
  const [current] = await database.sql<{ id: number; startsAt: Date }[]>`
    select id::int, starts_at as "startsAt" from sales order by starts_at desc limit 1`;
  await database.sql`
    with made as (
      insert into sales (starts_at, size, per_user_limit, sold)
      select ${current!.startsAt}::timestamptz - make_interval(hours => n), 3, 2, 0 from generate_series(1, 45) as n
      returning id
    )
    insert into items (sale_id, seed) select id, seed from made, generate_series(1, 3) as seed`;
  let expected = await openSales(database);
  assert.equal(expected.length, 46);

  const { browser, page, pageErrors } = await openStorefront(opened, instance.url);

  // The first page: the 20 newest open sales, the current one chosen.
  await page.waitForFunction(`document.querySelectorAll('#sales li').length === 20`);
  assert.deepEqual(await listedSales(page), expected.slice(0, 20));
  assert.equal(await page.locator(`#sales button[data-sale="${current!.id}"]`).getAttribute('aria-pressed'), 'true');

  // "Show older sales" until it is gone: each click appends the next page below the ones shown.
  const older = page.getByRole('button', { name: 'Show older sales' });
  let clicks = 0;
  while (await older.isVisible()) {
    const before = (await listedSales(page)).length;
    await older.click();
    clicks += 1;
    await page.waitForFunction(`document.querySelectorAll('#sales li').length > ${before}`);
    assert.ok(clicks <= 3, 'the button goes once every open sale is listed');
  }
  assert.equal(clicks, 2);
  assert.deepEqual(await listedSales(page), expected, 'every open sale, newest first, each once');
  // Focus moved on to the first sale the last click brought (the button is gone).
  assert.equal(await page.evaluate(`document.activeElement?.dataset.sale`), String(expected[40]));

  // Polls replace the first page only: the older pages stay.
  const firstPagePolled = () =>
    page.waitForResponse((response) => {
      const url = new URL(response.url());
      return url.pathname === '/sales' && url.search === '';
    });
  await firstPagePolled();
  await firstPagePolled();
  assert.deepEqual(await listedSales(page), expected);

  // A newer sale pushes the first page's last sale off it: that sale stays listed, the list whole.
  await database.sql`
    with made as (
      insert into sales (starts_at, size, per_user_limit, sold)
      values (${current!.startsAt}::timestamptz - interval '30 minutes', 3, 2, 0) returning id
    )
    insert into items (sale_id, seed) select id, seed from made, generate_series(1, 3) as seed`;
  expected = await openSales(database);
  await page.waitForFunction(`[...document.querySelectorAll('#sales li')].map((li) => li.dataset.sale).join() === '${expected.join()}'`);
  assert.equal(await older.isVisible(), false);

  // The oldest sale: selected like any other, its items listed, and bought from.
  const oldest = expected.at(-1)!;
  const oldestCard = page.locator(`#sales button[data-sale="${oldest}"]`);
  await oldestCard.click();
  assert.equal(await oldestCard.getAttribute('aria-pressed'), 'true');
  assert.equal(await page.locator('#items-heading').innerText(), `Items in sale #${oldest}`);
  const items = await database.sql<{ id: number }[]>`select id::int from items where sale_id = ${oldest} order by id`;
  await page.waitForFunction(`document.querySelectorAll('#grid li.item').length === 3`);
  assert.deepEqual(
    await page.evaluate(`[...document.querySelectorAll('#grid li.item')].map((li) => Number(li.dataset.item))`),
    items.map((item) => item.id),
  );
  assert.equal(await page.evaluate('location.hash'), `#sale-${oldest}`);
  await page.getByLabel('User id').fill('old_hand');
  await page.getByLabel('User id').press('Enter');
  await page.locator('#grid li.item').first().getByRole('button', { name: 'Buy' }).click();
  await page.locator('#result.ok').waitFor();
  assert.equal(await itemsOwned(database, oldest, 'old_hand'), 1);
  // Not in the first page, the selected sale is read on its own: its count follows the purchase.
  await page.waitForFunction(`/1\\s*\\/ 3 sold/.test(document.querySelector('#sales button[data-sale="${oldest}"]').textContent)`);

  // Reloaded at #sale-N: the oldest sale, which no first page lists, is looked up and chosen again.
  await page.reload();
  await page.waitForFunction(`document.querySelector('#sales button[data-sale="${oldest}"]')?.getAttribute('aria-pressed') === 'true'`);
  assert.equal(await page.locator('#items-heading').innerText(), `Items in sale #${oldest}`);
  await page.waitForFunction(`document.querySelectorAll('#grid li.item').length === 2`);
  assert.equal(await older.isVisible(), true);
  assert.deepEqual(pageErrors, []);

  // On a phone the button sits under the row of sales, inside the screen, with nothing to scroll sideways.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const small = await phone.newPage();
  await small.goto(`${instance.url}/`);
  const smallOlder = small.getByRole('button', { name: 'Show older sales' });
  await smallOlder.waitFor();
  const box = (await smallOlder.boundingBox())!;
  const row = (await small.locator('#sales').boundingBox())!;
  const placed = box.x >= 0 && box.x + box.width <= 390 && box.y >= row.y + row.height;
  assert.ok(placed, `the button under the sales, inside the screen: ${JSON.stringify({ box, row })}`);
  const widths = (await small.evaluate(
    `({ scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth })`,
  )) as { scroll: number; client: number };
  assert.ok(widths.scroll <= widths.client, `no horizontal scrolling: ${JSON.stringify(widths)}`);
  await phone.close();
});
