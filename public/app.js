// The storefront: one ES module, no framework, no build. Text from the service reaches the DOM only as
// text nodes (textContent, append of strings), never as HTML.

const USER_KEY = 'flash-sale:user-id';
const PENDING_KEY = 'flash-sale:pending-purchase';
const USER_ID = /^[A-Za-z0-9_.:@-]{1,64}$/;
const PAGE_SIZE = 24;
const POLL_MS = 2000;
const SCROLL_AHEAD = 600; // px below the screen at which the next page of items is fetched

const numbers = new Intl.NumberFormat('en-US');
const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const clockSeconds = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dayAndClock = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

const ui = {
  userForm: $('user-form'),
  userInput: /** @type {HTMLInputElement} */ ($('user-id')),
  userError: $('user-error'),
  userView: $('user-view'),
  userName: $('user-name'),
  userAvatar: $('user-avatar'),
  userChange: $('user-change'),
  countdown: $('countdown'),
  live: $('live-state'),
  sales: $('sales'),
  salesEmpty: $('sales-empty'),
  olderRow: $('older-row'),
  olderSales: /** @type {HTMLButtonElement} */ ($('older-sales')),
  salesStatus: $('sales-status'),
  itemsHeading: $('items-heading'),
  itemsMeta: $('items-meta'),
  grid: $('grid'),
  gridEmpty: $('grid-empty'),
  gridStatus: $('grid-status'),
  sentinel: $('sentinel'),
  more: /** @type {HTMLButtonElement} */ ($('more')),
  result: $('result'),
  announcer: $('announcer'),
  resultBody: $('result-body'),
  resultClose: $('result-close'),
  purchases: $('purchases'),
  purchasesMeta: $('purchases-meta'),
  purchasesRefresh: $('purchases-refresh'),
  purchasesPanel: $('purchases-panel'),
  purchasesHeading: $('purchases-heading'),
  purchasesOpen: $('purchases-open'),
  purchasesClose: $('purchases-close'),
};

const state = {
  userId: /** @type {string | null} */ (null),
  sales: /** @type {Map<number, any>} */ (new Map()), // every sale listed, newest first (see mergeSales)
  firstPage: /** @type {any[]} */ ([]), // GET /sales as last polled
  firstAfter: /** @type {number | null} */ (null), // its next_after
  older: /** @type {Map<number, any>} */ (new Map()), // sales from the pages after it, and the one the hash named
  olderAfter: /** @type {number | null | undefined} */ (undefined), // next_after of the last older page (undefined: none shown)
  loadingOlder: false,
  hashLookup: /** @type {'pending' | 'done' | null} */ (null),
  saleId: /** @type {number | null} */ (null),
  nextAfter: /** @type {number | null} */ (0),
  loading: false,
  resultTimer: /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined),
  gridToken: 0,
  sentinelVisible: false,
  inFlight: false,
  purchasesToken: 0,
  nextSaleAt: /** @type {number | null} */ (null),
  clockSkew: 0,
  boundaryPolled: /** @type {number | null} */ (null),
  lastTrigger: /** @type {HTMLElement | null} */ (null),
};

// ---------------------------------------------------------------------------------------------- helpers

/** Creates an element; `text` sets textContent, other keys are attributes; children are nodes or plain text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

/** An image path from the service, accepted only when it stays on this origin. */
function imageSrc(url, itemId) {
  return typeof url === 'string' && url.startsWith('/') && !url.startsWith('//') ? url : `/items/${Number(itemId)}/image`;
}

function storage(kind) {
  try {
    return kind === 'local' ? window.localStorage : window.sessionStorage;
  } catch {
    return null; // storage disabled: the page still works, it only forgets on reload
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  // The service's own refusal (4xx with its JSON error): definite, retrying the same request cannot help.
  get definite() {
    return this.status >= 400 && this.status < 500 && this.code !== 'http' && !(this.status === 429 && this.code !== 'limit_reached');
  }
}

async function api(method, path) {
  let response;
  try {
    response = await fetch(path, { method, headers: { accept: 'application/json' }, cache: 'no-store' });
  } catch {
    throw new ApiError(0, 'network', "Can't reach the shop right now. Check your connection and try again.");
  }
  const date = Date.parse(response.headers.get('date') ?? '');
  if (Number.isFinite(date)) {
    // The Date header has whole seconds: only a clock that is clearly off is corrected.
    const skew = date + 500 - Date.now();
    state.clockSkew = Math.abs(skew) > 2000 ? skew : 0;
  }
  const body = await response.json().catch(() => null);
  if (response.ok && body) return body;
  if (body && typeof body.message === 'string') {
    throw new ApiError(response.status, typeof body.error === 'string' ? body.error : 'error', body.message);
  }
  throw new ApiError(response.status, 'http', `The shop answered with an unexpected error (HTTP ${response.status}). Please try again.`);
}

// ------------------------------------------------------------------------------------------------ user

function setUser(userId) {
  if (userId !== state.userId) forgetPreviousUser();
  state.userId = userId;
  ui.userForm.hidden = Boolean(userId);
  ui.userView.hidden = !userId;
  if (userId) {
    ui.userName.textContent = userId;
    ui.userAvatar.textContent = userId.charAt(0);
  }
  loadPurchases();
}

// What the page showed for the previous user (their latest result, the items marked Yours) is not the next one's.
function forgetPreviousUser() {
  hideResult();
  for (const card of ui.grid.querySelectorAll('li.mine')) markSold(/** @type {HTMLElement} */ (card).dataset.item, false);
}

function showUserError(message) {
  ui.userError.textContent = message;
  ui.userError.hidden = !message;
  if (message) ui.userInput.setAttribute('aria-invalid', 'true');
  else ui.userInput.removeAttribute('aria-invalid');
}

ui.userForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const value = ui.userInput.value.trim();
  if (!USER_ID.test(value)) {
    showUserError(value ? 'Use 1–64 letters, digits or _ . : @ - (no spaces).' : 'Enter a user id to buy.');
    ui.userInput.focus();
    return;
  }
  showUserError('');
  storage('local')?.setItem(USER_KEY, value);
  setUser(value);
  ui.userChange.focus();
});

ui.userInput.addEventListener('input', () => {
  if (!ui.userError.hidden && USER_ID.test(ui.userInput.value.trim())) showUserError('');
});

ui.userChange.addEventListener('click', () => {
  ui.userInput.value = state.userId ?? '';
  ui.userForm.hidden = false;
  ui.userView.hidden = true;
  ui.userInput.focus();
  ui.userInput.select();
});

// --------------------------------------------------------------------------------------------- results

// The result panel is what people see; the announcer (aria-live, always present) is what screen readers
// hear: the same words, as one sentence.
// A result leaves by itself after a while (not while the pointer or focus is on it), or when dismissed.
const RESULT_MS = 6000;

function hideResult() {
  clearTimeout(state.resultTimer);
  ui.result.hidden = true;
  ui.resultBody.replaceChildren();
}

function hideResultLater() {
  clearTimeout(state.resultTimer);
  state.resultTimer = setTimeout(() => (ui.result.matches(':hover, :focus-within') ? hideResultLater() : hideResult()), RESULT_MS);
}

function showResult(kind, build) {
  ui.result.hidden = false;
  if (kind === 'busy') clearTimeout(state.resultTimer);
  else hideResultLater();
  ui.result.className = `panel result ${kind}`;
  ui.resultBody.replaceChildren(...build().filter(Boolean));
  const words = [...ui.resultBody.querySelectorAll('.result-title, .result-message, .result-hint, .item-title')].map((node) => node.textContent);
  if (kind === 'ok') words.push(`Receipt code ${ui.resultBody.querySelector('code')?.textContent ?? ''}`);
  ui.announcer.textContent = words.join('. ');
}

function showBusy(title, message) {
  showResult('busy', () => [el('p', { class: 'result-title', text: title }), el('p', { class: 'result-message', text: message })]);
}

function showReceipt(receipt, pending) {
  const when = new Date(receipt.purchased_at);
  showResult('ok', () => [
    el('p', { class: 'result-title', text: receipt.message || 'Purchase successful' }),
    el(
      'div',
      { class: 'receipt' },
      el('img', { src: imageSrc(null, receipt.item_id), alt: '', width: 64, height: 64 }),
      el(
        'dl',
        {},
        pending?.name ? el('dd', { class: 'item-title', text: pending.name }) : null,
        el('dt', { text: 'Item' }),
        el('dd', { text: `#${receipt.item_id}` }),
        el('dt', { text: 'Sale' }),
        el('dd', { text: `#${receipt.sale_id}` }),
        el('dt', { text: 'Buyer' }),
        el('dd', { text: receipt.user_id }),
        el('dt', { text: 'Time' }),
        el('dd', {}, el('time', { datetime: receipt.purchased_at, text: clockSeconds.format(when) })),
        el('dt', { text: 'Receipt' }),
        el('dd', {}, el('code', { text: receipt.code })),
      ),
    ),
  ]);
}

const errorHints = {
  item_sold: 'Someone else got it first. Pick another item.',
  limit_reached: 'Your purchases in this sale are listed under My purchases.',
  code_expired: 'Press Buy again to get a fresh checkout.',
  item_unknown: 'This item no longer exists. Pick another one.',
  database_unavailable: 'Nothing was bought. Try again in a moment.',
};

function showError(title, error, retry) {
  showResult('bad', () => [
    el('p', { class: 'result-title', text: title }),
    el('p', { class: 'result-message', text: error.message }),
    errorHints[error.code] ? el('p', { class: 'result-hint', text: errorHints[error.code] }) : null,
    retry ? el('button', { type: 'button', class: 'button primary', 'data-action': 'retry', text: retry.label }) : null,
  ]);
  if (retry) ui.resultBody.querySelector('[data-action="retry"]').addEventListener('click', retry.run, { once: true });
}

ui.resultClose.addEventListener('click', () => {
  hideResult();
  const back = state.lastTrigger?.isConnected && !state.lastTrigger.disabled ? state.lastTrigger : ui.itemsHeading;
  back.focus({ preventScroll: back === ui.itemsHeading });
});

// ------------------------------------------------------------------------------------------ purchasing

function readPending() {
  const raw = storage('session')?.getItem(PENDING_KEY);
  if (!raw) return null;
  try {
    const pending = JSON.parse(raw);
    if (typeof pending?.code === 'string' && /^[A-Za-z0-9_-]{22}$/.test(pending.code)) return pending;
  } catch {
    // fall through: an unreadable record is dropped
  }
  storage('session')?.removeItem(PENDING_KEY);
  return null;
}

function setInFlight(inFlight) {
  state.inFlight = inFlight;
  for (const button of ui.grid.querySelectorAll('button.buy')) {
    button.disabled = inFlight || button.closest('.item').classList.contains('sold');
  }
}

function markSold(itemId, mine) {
  const card = ui.grid.querySelector(`li[data-item="${Number(itemId)}"]`);
  if (!card) return;
  card.classList.add('sold');
  card.classList.toggle('mine', mine);
  const button = card.querySelector('button.buy');
  button.disabled = true;
  button.replaceChildren(mine ? 'Bought ✓' : 'Sold');
  const art = card.querySelector('.item-art');
  art.querySelector('.badge')?.remove();
  art.append(el('span', { class: mine ? 'badge mine' : 'badge done', text: mine ? 'Yours' : 'Sold' }));
}

// Buys with a code already issued. The code is in sessionStorage until the service answers for sure, so
// a reload, the back button or a lost answer replays the same code: the service answers the same receipt
// for it, and nothing is bought twice.
async function finishPurchase(pending) {
  showBusy('Buying…', pending.name ? `Completing your purchase of ${pending.name}.` : 'Completing your purchase.');
  for (let attempt = 1; ; attempt += 1) {
    try {
      const receipt = await api('POST', `/purchase?code=${encodeURIComponent(pending.code)}`);
      storage('session')?.removeItem(PENDING_KEY);
      showReceipt(receipt, pending);
      markSold(receipt.item_id, true);
      pollSales();
      loadPurchases();
      return;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.definite) {
        storage('session')?.removeItem(PENDING_KEY);
        if (error.code === 'item_sold') markSold(pending.itemId, false);
        showError(pending.name ? `Couldn't buy ${pending.name}` : "Couldn't complete the purchase", error);
        return;
      }
      if (attempt >= 3) {
        // Unknown outcome: keep the code, offer to replay it (never a new checkout).
        showError('Purchase not confirmed yet', error, {
          label: 'Try again',
          run: () => runExclusive(() => finishPurchase(pending)),
        });
        return;
      }
      await sleep(700 * attempt);
    }
  }
}

async function runExclusive(work) {
  if (state.inFlight) return;
  const focused = document.activeElement;
  setInFlight(true);
  try {
    await work();
  } finally {
    setInFlight(false);
    // A disabled or replaced button loses focus: give keyboard users a sensible place to continue.
    if (focused instanceof HTMLElement && focused.isConnected && !(focused instanceof HTMLButtonElement && focused.disabled)) focused.focus();
    else if (document.activeElement === document.body || document.activeElement === null) ui.result.querySelector('button')?.focus();
  }
}

function buy(item) {
  if (!state.userId) {
    showError('Enter your user id first', { message: 'Your purchases are recorded under your user id.', code: '' });
    ui.userForm.hidden = false;
    ui.userView.hidden = true;
    ui.userInput.focus();
    return;
  }
  const userId = state.userId;
  runExclusive(async () => {
    if (readPending()) {
      await finishPurchase(readPending()); // an unfinished purchase first: one code at a time
      return;
    }
    showBusy('Checking out…', `Reserving a checkout code for ${item.name}.`);
    let checkout;
    try {
      checkout = await api('POST', `/checkout?user_id=${encodeURIComponent(userId)}&id=${Number(item.id)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === 'item_sold') markSold(item.id, false);
      showError(`Couldn't buy ${item.name}`, error);
      return;
    }
    const pending = { code: checkout.code, itemId: item.id, saleId: checkout.sale_id, userId, name: item.name };
    storage('session')?.setItem(PENDING_KEY, JSON.stringify(pending));
    await finishPurchase(pending);
  });
}

function resumePending() {
  const pending = readPending();
  if (pending && !state.inFlight) runExclusive(() => finishPurchase(pending));
}

// ----------------------------------------------------------------------------------------------- sales

function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  const two = (n) => String(n).padStart(2, '0');
  return hours > 0 ? `${hours}:${two(minutes)}:${two(seconds)}` : `${two(minutes)}:${two(seconds)}`;
}

function tickCountdown() {
  if (state.nextSaleAt === null) return;
  const left = state.nextSaleAt - (Date.now() + state.clockSkew);
  ui.countdown.textContent = left > 0 ? formatCountdown(left) : 'starting…';
  if (left <= 0 && state.boundaryPolled !== state.nextSaleAt) {
    state.boundaryPolled = state.nextSaleAt;
    pollSales(); // the new sale exists from its boundary on: fetch it at once
  }
}

function startedText(startsAt) {
  const date = new Date(startsAt);
  const today = new Date().toDateString() === date.toDateString();
  return `Started ${today ? clock.format(date) : dayAndClock.format(date)}`;
}

function saleCard(sale) {
  const button = el(
    'button',
    { type: 'button', class: 'sale-card', 'data-sale': sale.id, 'aria-pressed': 'false' },
    el('span', { class: 'sale-top' }, el('span', { class: 'sale-name', text: `Sale #${sale.id}` }), el('span', { class: 'badge' })),
    el('span', { class: 'sale-when' }),
    el('span', { class: 'sale-count' }, el('strong'), el('span')),
    el('span', { class: 'bar', 'aria-hidden': 'true' }, el('span', { class: 'bar-fill' })),
    el('span', { class: 'sale-limit' }),
  );
  button.addEventListener('click', () => selectSale(sale.id, true));
  return el('li', { 'data-sale': sale.id }, button);
}

function updateSaleCard(li, sale) {
  const button = li.querySelector('button');
  const badge = li.querySelector('.badge');
  badge.textContent = sale.open ? 'Live' : 'Sold out';
  badge.classList.toggle('done', !sale.open);
  li.querySelector('.sale-when').textContent = startedText(sale.starts_at);
  li.querySelector('.sale-count strong').textContent = numbers.format(sale.sold);
  li.querySelector('.sale-count span').textContent = ` / ${numbers.format(sale.items)} sold`;
  // A sliver stays visible from the first sale on.
  const percent = sale.items > 0 ? Math.min(100, Math.max(sale.sold > 0 ? 1 : 0, (sale.sold / sale.items) * 100)) : 0;
  li.querySelector('.bar-fill').style.width = `${percent}%`;
  li.querySelector('.sale-limit').textContent = `Up to ${numbers.format(sale.per_user_limit)} per buyer`;
  button.setAttribute('aria-pressed', String(sale.id === state.saleId));
}

function renderSales(list) {
  const visible = list.filter((sale) => sale.open || sale.id === state.saleId);
  const wanted = visible.map((sale) => String(sale.id));
  const current = [...ui.sales.children].map((li) => li.getAttribute('data-sale'));
  if (wanted.join() !== current.join()) {
    // Rebuild only when the set or order changed (a new sale, older ones): keep keyboard focus where it was.
    const focusedSale = document.activeElement?.closest?.('.sale-card')?.getAttribute('data-sale');
    const existing = new Map([...ui.sales.children].map((li) => [li.getAttribute('data-sale'), li]));
    ui.sales.replaceChildren(...visible.map((sale) => existing.get(String(sale.id)) ?? saleCard(sale)));
    if (focusedSale) ui.sales.querySelector(`button[data-sale="${Number(focusedSale)}"]`)?.focus();
  }
  for (const sale of visible) updateSaleCard(ui.sales.querySelector(`li[data-sale="${sale.id}"]`), sale);
  ui.salesEmpty.hidden = visible.length > 0;
}

// The first page is the truth about every sale down to its last open one (about all of them when it is
// the only page); older pages only fill in below that line, so a sale sold out since they were read drops
// out with it. The selected sale stays listed whatever it is.
function mergeSales() {
  const line = state.firstPage.find((sale) => sale.id === state.firstAfter);
  const below = (sale) => line !== undefined && Date.parse(sale.starts_at) < Date.parse(line.starts_at);
  for (const sale of state.older.values()) if (!below(sale) && sale.id !== state.saleId) state.older.delete(sale.id);
  // The older pages' cursor is above the line now: paging goes on from the first page's.
  if (state.firstAfter === null || (typeof state.olderAfter === 'number' && !state.older.has(state.olderAfter))) {
    state.olderAfter = undefined;
  }
  const merged = new Map(state.firstPage.map((sale) => [sale.id, sale]));
  for (const sale of state.older.values()) if (!merged.has(sale.id)) merged.set(sale.id, sale);
  const newestFirst = (a, b) => Date.parse(b.starts_at) - Date.parse(a.starts_at);
  state.sales = new Map([...merged.values()].sort(newestFirst).map((sale) => [sale.id, sale]));
}

// Where the next page of older sales starts (null: every open sale is listed).
function olderCursor() {
  return state.olderAfter === undefined ? state.firstAfter : state.olderAfter;
}

function updateOlderSales() {
  ui.olderSales.hidden = olderCursor() === null;
  ui.olderSales.disabled = state.loadingOlder;
  ui.olderRow.hidden = ui.olderSales.hidden && !ui.salesStatus.textContent;
}

function showSales() {
  mergeSales();
  renderSales([...state.sales.values()]);
  updateItemsMeta();
  updateOlderSales();
}

// On load: the sale in the #sale-N hash (looked up once when the first page doesn't list it), else the
// newest open one.
function chooseSale() {
  if (state.hashLookup === 'pending') return;
  const fromHash = Number(/^#sale-(\d+)$/.exec(location.hash)?.[1]);
  if (fromHash > 0 && !state.sales.has(fromHash) && state.hashLookup === null) {
    state.hashLookup = 'pending';
    api('GET', `/sales/${fromHash}`)
      .then(
        (sale) => {
          state.older.set(sale.id, sale);
          if (state.saleId === null) selectSale(sale.id, false);
        },
        () => {}, // gone or unreachable: the newest open sale instead
      )
      .finally(() => {
        state.hashLookup = 'done';
        showSales();
        if (state.saleId === null) chooseSale();
      });
    return;
  }
  const choice = state.sales.has(fromHash) ? fromHash : [...state.sales.values()].find((sale) => sale.open)?.id;
  if (choice !== undefined) selectSale(choice, false);
}

function applySales(data) {
  // Once older pages are shown, sales that newer ones push off the first page stay listed below it.
  if (state.olderAfter !== undefined) for (const sale of state.firstPage) if (sale.open) state.older.set(sale.id, sale);
  state.firstPage = data.sales;
  state.firstAfter = data.next_after;
  const next = Date.parse(data.next_sale_at);
  if (Number.isFinite(next)) {
    state.nextSaleAt = next;
    ui.countdown.setAttribute('datetime', data.next_sale_at);
  }
  tickCountdown();
  showSales();
  if (state.saleId === null) chooseSale();
}

// The selected sale when the first page doesn't list it (an older one): read on its own, so that its card
// and what is left of it follow purchases too.
async function refreshSelected() {
  const saleId = state.saleId;
  if (saleId === null || state.firstPage.some((sale) => sale.id === saleId)) return;
  const sale = await api('GET', `/sales/${saleId}`).catch(() => null);
  if (!sale || saleId !== state.saleId) return;
  state.older.set(sale.id, sale);
  showSales();
}

async function loadOlderSales() {
  const after = olderCursor();
  if (state.loadingOlder || after === null) return;
  state.loadingOlder = true;
  ui.salesStatus.textContent = 'Loading older sales…';
  updateOlderSales();
  let fresh = [];
  let status = '';
  try {
    const data = await api('GET', `/sales?after=${after}`);
    // Unless a poll moved the first page meanwhile: this page could then leave a gap above it (click again).
    if (after === olderCursor()) {
      fresh = data.sales.filter((sale) => !state.sales.has(sale.id));
      for (const sale of data.sales) state.older.set(sale.id, sale);
      state.olderAfter = data.next_after;
    }
  } catch (error) {
    status = error instanceof ApiError ? error.message : 'Could not load older sales.';
  } finally {
    state.loadingOlder = false;
    ui.salesStatus.textContent = status;
    showSales();
  }
  // The button was disabled meanwhile (and may be gone now): unless focus went elsewhere since, it goes on
  // to the first sale the page brought.
  if (document.activeElement !== document.body && document.activeElement !== ui.olderSales) return;
  const first = fresh.length > 0 ? ui.sales.querySelector(`button[data-sale="${Number(fresh[0].id)}"]`) : null;
  (first ?? (ui.olderSales.hidden ? ui.sales.lastElementChild?.querySelector('button') : ui.olderSales))?.focus();
}

ui.olderSales.addEventListener('click', () => loadOlderSales());

let polling = null;
function pollSales() {
  polling ??= api('GET', '/sales')
    .then((data) => {
      applySales(data);
      ui.live.classList.remove('offline');
      ui.live.lastChild.textContent = 'Live';
      return refreshSelected();
    })
    .catch(() => {
      ui.live.classList.add('offline');
      ui.live.lastChild.textContent = 'Reconnecting…';
    })
    .finally(() => {
      polling = null;
    });
  return polling;
}

async function pollForever() {
  for (;;) {
    if (!document.hidden) await pollSales();
    await sleep(POLL_MS);
  }
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) pollSales();
});

// ----------------------------------------------------------------------------------------------- items

function itemCard(item) {
  const nameId = `item-name-${Number(item.id)}`;
  const button = el('button', { type: 'button', class: 'button primary buy', 'aria-describedby': nameId }, 'Buy');
  button.disabled = state.inFlight;
  button.addEventListener('click', () => {
    state.lastTrigger = button;
    buy(item);
  });
  return el(
    'li',
    { class: 'item', 'data-item': item.id },
    el(
      'div',
      { class: 'item-art' },
      el('img', { src: imageSrc(item.image_url, item.id), alt: '', width: 256, height: 256, loading: 'lazy', decoding: 'async' }),
    ),
    el(
      'div',
      { class: 'item-body' },
      el('h3', { class: 'item-name', id: nameId, text: item.name }),
      el('p', { class: 'item-id', text: `Item #${item.id}` }),
      button,
    ),
  );
}

function updateItemsMeta() {
  const sale = state.saleId === null ? undefined : state.sales.get(state.saleId);
  if (!sale) {
    ui.itemsMeta.textContent = '';
    return;
  }
  const left = Math.max(0, sale.items - sale.sold);
  ui.itemsMeta.textContent = `${numbers.format(left)} of ${numbers.format(sale.items)} still available`;
}

function updateMore() {
  const more = state.nextAfter !== null && state.saleId !== null;
  ui.more.hidden = !more;
  ui.more.disabled = state.loading;
}

function selectSale(saleId, byUser) {
  if (state.saleId === saleId && ui.grid.childElementCount > 0) return;
  state.saleId = saleId;
  state.gridToken += 1;
  state.nextAfter = 0;
  state.loading = false;
  ui.grid.replaceChildren();
  ui.gridEmpty.hidden = true;
  ui.gridStatus.textContent = '';
  ui.itemsHeading.textContent = `Items in sale #${saleId}`;
  history.replaceState(null, '', `#sale-${saleId}`);
  for (const button of ui.sales.querySelectorAll('button.sale-card')) {
    button.setAttribute('aria-pressed', String(Number(button.getAttribute('data-sale')) === saleId));
  }
  updateItemsMeta();
  updateMore();
  loadPurchases();
  loadItems(false);
  if (byUser && matchMedia('(max-width: 899px)').matches) ui.itemsHeading.scrollIntoView({ block: 'start', behavior: 'smooth' });
}

async function loadItems(focusNew) {
  if (state.loading || state.nextAfter === null || state.saleId === null) return;
  const token = state.gridToken;
  const saleId = state.saleId;
  state.loading = true;
  ui.grid.setAttribute('aria-busy', 'true');
  ui.gridStatus.textContent = 'Loading items…';
  updateMore();
  try {
    const data = await api('GET', `/sales/${saleId}/items?available=true&limit=${PAGE_SIZE}&after=${state.nextAfter}`);
    if (token !== state.gridToken) return;
    const cards = data.items.map(itemCard);
    ui.grid.append(...cards);
    state.nextAfter = data.next_after;
    const shown = ui.grid.childElementCount;
    ui.gridEmpty.hidden = shown > 0;
    ui.gridStatus.textContent =
      shown === 0 ? '' : `${numbers.format(shown)} items shown${state.nextAfter === null ? ' — that is all of them' : ''}`;
    if (focusNew) cards[0]?.querySelector('button')?.focus();
  } catch (error) {
    if (token !== state.gridToken) return;
    ui.gridStatus.textContent = error instanceof ApiError ? error.message : 'Could not load the items.';
  } finally {
    if (token === state.gridToken) {
      state.loading = false;
      ui.grid.setAttribute('aria-busy', 'false');
      updateMore();
    }
  }
  // The sentinel may still be near the screen after a short page (a tall window): keep filling it.
  // (Measured now: the observer only reports changes, and reports them after this.)
  if (token === state.gridToken && state.sentinelVisible && state.nextAfter !== null && sentinelNear()) loadItems(false);
}

function sentinelNear() {
  return ui.sentinel.getBoundingClientRect().top < window.innerHeight + SCROLL_AHEAD;
}

ui.more.addEventListener('click', () => loadItems(true));

if ('IntersectionObserver' in window) {
  new IntersectionObserver(
    (entries) => {
      state.sentinelVisible = entries.some((entry) => entry.isIntersecting);
      if (state.sentinelVisible) loadItems(false);
    },
    { rootMargin: `${SCROLL_AHEAD}px 0px` },
  ).observe(ui.sentinel);
}

// ------------------------------------------------------------------------------------------- purchases

async function loadPurchases() {
  const token = ++state.purchasesToken;
  const { userId, saleId } = state;
  if (!userId) {
    ui.purchasesMeta.textContent = 'Enter your user id to see your purchases.';
    ui.purchases.replaceChildren();
    return;
  }
  if (saleId === null) {
    ui.purchasesMeta.textContent = 'Choose a sale to see your purchases in it.';
    ui.purchases.replaceChildren();
    return;
  }
  try {
    const data = await api('GET', `/users/${encodeURIComponent(userId)}/purchases?sale_id=${saleId}`);
    if (token !== state.purchasesToken) return;
    const limit = state.sales.get(saleId)?.per_user_limit;
    const count = data.purchases.length;
    const quota = el('div', { class: 'quota' }, el('span', { text: `${count} of ${limit ?? '?'} bought in sale #${saleId}` }));
    if (limit) {
      const bar = el('span', { class: 'bar', 'aria-hidden': 'true' }, el('span', { class: 'bar-fill' }));
      bar.firstChild.style.width = `${Math.min(100, (count / limit) * 100)}%`;
      quota.append(bar);
    }
    ui.purchasesMeta.replaceChildren(count === 0 ? `Nothing bought in sale #${saleId} yet.` : quota);
    ui.purchases.replaceChildren(
      ...data.purchases.map((purchase) =>
        el(
          'li',
          { class: 'purchase' },
          el('img', { src: imageSrc(purchase.image_url, purchase.item_id), alt: '', width: 44, height: 44, loading: 'lazy' }),
          el(
            'div',
            {},
            el('p', { class: 'purchase-name', text: purchase.name }),
            el(
              'p',
              { class: 'purchase-meta' },
              `Item #${purchase.item_id} · `,
              el('time', { datetime: purchase.purchased_at, text: clockSeconds.format(new Date(purchase.purchased_at)) }),
            ),
          ),
        ),
      ),
    );
  } catch (error) {
    if (token !== state.purchasesToken) return;
    ui.purchasesMeta.textContent = error instanceof ApiError ? error.message : 'Could not load your purchases.';
  }
}

ui.purchasesRefresh.addEventListener('click', () => loadPurchases());

function setPurchasesOpen(open) {
  ui.purchasesPanel.classList.toggle('open', open);
  ui.purchasesOpen.setAttribute('aria-expanded', String(open));
  if (open) {
    loadPurchases();
    ui.purchasesHeading.focus();
  } else {
    ui.purchasesOpen.focus();
  }
}

ui.purchasesOpen.addEventListener('click', () => setPurchasesOpen(!ui.purchasesPanel.classList.contains('open')));
ui.purchasesClose.addEventListener('click', () => setPurchasesOpen(false));
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && ui.purchasesPanel.classList.contains('open')) setPurchasesOpen(false);
});

// -------------------------------------------------------------------------------------------- start-up

const savedUser = storage('local')?.getItem(USER_KEY) ?? null;
if (savedUser && USER_ID.test(savedUser)) {
  ui.userInput.value = savedUser;
  setUser(savedUser);
} else {
  setUser(null);
}

// Back/forward cache: a restored page may hold an unfinished purchase from before it was left.
window.addEventListener('pageshow', (event) => {
  if (event.persisted) resumePending();
});

setInterval(tickCountdown, 250);
pollSales().then(resumePending);
pollForever();
