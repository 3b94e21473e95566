// The admin console in a real browser: playwright-core (pinned in e2e/node/package.json)
// drives Debian's chromium against a running tollgate.
//
//   ORIGIN=http://127.0.0.1:PORT MASTER_KEY=... ARTIFACTS=dir node e2e/ui/flow.mjs
//
// Optional: CHROMIUM (default /usr/bin/chromium), CONVERSATION (a conversation id recorded
// before the run, e.g. one joining agent, model and tool calls, to view as well), ADMIN_KEY (a
// virtual key whose user or team has the admin role: it must be able to sign in) and
// NON_ADMIN_KEY (a valid key without it: it must be refused with a clear message).
//
// The flow: the sign-in form (labelled), a refused key, sign-in with the master key by
// keyboard alone; keyboard navigation (skip link, Tab to the nav links, visible focus); a key
// created in the Keys dialog (Escape closes it, focus moves in and back), its secret read from
// the dialog that shows it once; a model call to mock-echo with that secret (outside the
// browser); the call and its cost on the overview, the spend explorer and the key's page;
// every page visited, checked for accessibility (names of controls, buttons, images, one h1, a
// main landmark, header scopes, unique ids) and saved as a full-page screenshot in ARTIFACTS;
// a change without the CSRF header refused; sign-out. It prints a JSON summary and exits 1 on
// the first failure, with a screenshot of the page as it was.

import { createRequire } from 'node:module';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

const require = createRequire(new URL('../node/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const ORIGIN = (process.env.ORIGIN || '').replace(/\/+$/, '');
const MASTER_KEY = process.env.MASTER_KEY || '';
const ARTIFACTS = path.resolve(process.env.ARTIFACTS || 'ui-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const EXTRA_CONVERSATION = process.env.CONVERSATION || '';
const ADMIN_KEY = process.env.ADMIN_KEY || '';
const NON_ADMIN_KEY = process.env.NON_ADMIN_KEY || '';
const POLL_MS = 15000;

if (!ORIGIN || !MASTER_KEY) {
  console.error('flow.mjs: set ORIGIN and MASTER_KEY');
  process.exit(2);
}

const summary = {
  ok: false, origin: ORIGIN, steps: [], screenshots: [], a11y: {}, csrf: {}, key: null,
  model_call: null, page_errors: [], csp_violations: [], console_errors: [], wide_tables: {},
};
let page;
let browser;

class Failure extends Error {}

function check(cond, message) {
  if (!cond) throw new Failure(message);
}

async function step(name, fn) {
  const started = Date.now();
  try {
    const note = await fn();
    summary.steps.push({ name, ok: true, ms: Date.now() - started, ...(note ? { note } : {}) });
    return note;
  } catch (e) {
    summary.steps.push({ name, ok: false, ms: Date.now() - started, error: e.message });
    if (page) {
      try {
        const file = path.join(ARTIFACTS, `FAILED-${name.replace(/[^a-z0-9]+/gi, '-')}.png`);
        await page.screenshot({ path: file, fullPage: true });
        summary.screenshots.push(file);
        summary.failure_url = page.url();
        summary.failure_text = (await page.locator('body').innerText()).slice(0, 2000);
      } catch { /* the browser may be gone */ }
    }
    throw new Failure(`step "${name}" failed: ${e.message}`);
  }
}

async function shot(name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  summary.screenshots.push(file);
}

/** Waits until a page has finished loading its data (no "Loading…" placeholders left). */
async function settled() {
  await page.waitForFunction(() => !document.querySelector('.loading'), null, { timeout: 15000 });
}

/** Accessibility checks on the current page; returns the list of problems. */
async function a11y(name) {
  const problems = await page.evaluate(() => {
    const out = [];
    const text = (el) => (el ? (el.textContent || '').replace(/\s+/g, ' ').trim() : '');
    const describe = (el) => {
      const id = el.id ? `#${el.id}` : '';
      const cls = el.className && typeof el.className === 'string' ? `.${el.className.split(' ').filter(Boolean).join('.')}` : '';
      return `<${el.tagName.toLowerCase()}${id}${cls}> ${text(el).slice(0, 40)}`;
    };
    const labelledBy = (el) => (el.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean)
      .map((id) => text(document.getElementById(id))).join(' ').trim();
    const accessibleName = (el) => (el.getAttribute('aria-label') || '').trim()
      || labelledBy(el)
      || (el.labels ? [...el.labels].map(text).join(' ').trim() : '')
      || (el.getAttribute('title') || '').trim();
    for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
      if (!accessibleName(el)) out.push(`form control without a label: ${describe(el)}`);
    }
    for (const el of document.querySelectorAll('button, [role=button]')) {
      if (!text(el) && !accessibleName(el)) out.push(`button without text or aria-label: ${describe(el)}`);
    }
    for (const el of document.querySelectorAll('a[href]')) {
      if (!text(el) && !accessibleName(el) && !el.querySelector('img[alt]:not([alt=""])')) out.push(`link without text: ${describe(el)}`);
    }
    for (const el of document.querySelectorAll('img')) {
      if (!el.hasAttribute('alt')) out.push(`image without alt: ${el.getAttribute('src')}`);
    }
    for (const el of document.querySelectorAll('[role=img]')) {
      if (!accessibleName(el)) out.push(`role=img without a name: ${describe(el)}`);
    }
    for (const el of document.querySelectorAll('th')) {
      if (el.closest('thead') && !el.getAttribute('scope')) out.push(`column header without scope: ${describe(el)}`);
      if (el.closest('tbody') && el.getAttribute('scope') !== 'row') out.push(`row header without scope=row: ${describe(el)}`);
    }
    const h1s = document.querySelectorAll('h1');
    if (h1s.length !== 1) out.push(`expected exactly one h1, found ${h1s.length}: ${[...h1s].map(text).join(' | ')}`);
    const mains = document.querySelectorAll('main, [role=main]');
    if (mains.length !== 1) out.push(`expected one main landmark, found ${mains.length}`);
    if (!document.documentElement.lang) out.push('<html> has no lang');
    if (!document.title.trim()) out.push('the document has no title');
    const seen = new Map();
    for (const el of document.querySelectorAll('[id]')) {
      if (seen.has(el.id)) out.push(`duplicate id: ${el.id}`);
      seen.set(el.id, true);
    }
    if (!document.querySelector('[aria-live], [role=status], [role=alert]')) out.push('no live region');
    return out;
  });
  summary.a11y[name] = problems;
  check(problems.length === 0, `accessibility problems on ${name}:\n  ${problems.join('\n  ')}`);
}

async function visit(name, url, { heading, wait } = {}) {
  if (url) {
    await page.goto(`${ORIGIN}${url}`);
  }
  if (heading) await page.getByRole('heading', { level: 1, name: heading }).waitFor();
  await settled();
  if (wait) await wait();
  await a11y(name);
  await noSideScroll(name);
  await shot(name);
}

/** Wide tables scroll inside their card; the page itself never scrolls sideways. */
async function noSideScroll(name) {
  const r = await page.evaluate(() => {
    const W = document.documentElement.clientWidth;
    const over = [];
    for (const el of document.querySelectorAll('body *')) {
      const rc = el.getBoundingClientRect();
      const parent = el.parentElement ? el.parentElement.getBoundingClientRect() : null;
      if (rc.width > 0 && rc.right > W + 1 && (!parent || parent.right <= W + 1)) {
        over.push(`<${el.tagName.toLowerCase()} class="${el.getAttribute('class') || ''}"> right edge ${Math.round(rc.right)} px`);
      }
    }
    const scrolled = [...document.querySelectorAll('.table-wrap')]
      .filter((w) => w.scrollWidth > w.clientWidth + 1)
      .map((w) => (w.querySelector('caption') || {}).textContent || 'a table');
    return { scrollWidth: document.documentElement.scrollWidth, width: W, over: over.slice(0, 5), scrolled };
  });
  // Information only: tables wider than their card scroll inside it.
  if (r.scrolled.length) summary.wide_tables[name] = r.scrolled;
  check(r.scrollWidth <= r.width, `${name} scrolls sideways (${r.scrollWidth} px in ${r.width} px): ${r.over.join('; ')}`);
}

/** Parses "$0.000123" / "1,234" into a number. */
function parseNumber(s) {
  const t = String(s || '').replace(/[$,<\s]/g, '');
  const v = Number(t);
  return Number.isFinite(v) ? v : NaN;
}

async function pollUntil(what, fn, reload) {
  const deadline = Date.now() + POLL_MS;
  let last;
  for (;;) {
    last = await fn();
    if (last.ok) return last;
    if (Date.now() > deadline) throw new Failure(`${what}: still ${JSON.stringify(last)} after ${POLL_MS / 1000} s`);
    await page.waitForTimeout(700);
    await reload();
  }
}

async function focusedInfo() {
  return page.evaluate(() => {
    const el = document.activeElement;
    if (!el) return null;
    const cs = getComputedStyle(el);
    return {
      tag: el.tagName.toLowerCase(),
      id: el.id,
      text: (el.textContent || '').trim().slice(0, 60),
      inNav: !!el.closest('nav'),
      inDialog: !!el.closest('dialog'),
      href: el.getAttribute('href'),
      outline: `${cs.outlineStyle} ${cs.outlineWidth} ${cs.outlineColor}`,
      visible: (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || (cs.boxShadow && cs.boxShadow !== 'none'),
      matchesFocusVisible: el.matches(':focus-visible'),
    };
  });
}

async function run() {
  await mkdir(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => summary.page_errors.push(String(e && e.stack ? e.stack : e)));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const t = msg.text();
    if (/Content Security Policy/i.test(t)) summary.csp_violations.push(t);
    else summary.console_errors.push(t);
  });

  await step('sign-in form', async () => {
    await page.goto(`${ORIGIN}/ui`);
    const field = page.getByLabel('Master key or admin API key');
    await field.waitFor();
    check(await field.getAttribute('type') === 'password', 'the key field is not a password field');
    await a11y('signin');
    await shot('signin');
  });

  await step('a wrong key is refused', async () => {
    await page.getByLabel('Master key or admin API key').fill('tg-not-a-real-key');
    await page.keyboard.press('Enter');
    const err = page.locator('#signin-error');
    await err.waitFor({ state: 'visible' });
    const msg = await err.innerText();
    check(/not accepted/i.test(msg), `unexpected sign-in error text: ${msg}`);
    await page.getByLabel('Master key or admin API key').fill('');
  });

  await step('sign in with the keyboard only', async () => {
    // A fresh load: focus starts at the top of the document.
    await page.goto(`${ORIGIN}/ui`);
    await page.getByLabel('Master key or admin API key').waitFor();
    let reached = false;
    for (let i = 0; i < 10 && !reached; i += 1) {
      await page.keyboard.press('Tab');
      const f = await focusedInfo();
      reached = f && f.id === 'signin-key';
    }
    check(reached, 'Tab never reached the key field');
    await page.keyboard.type(MASTER_KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
    check(new URL(page.url()).pathname === '/ui/overview', `landed on ${page.url()}, not /ui/overview`);
    await page.getByRole('navigation', { name: 'Console' }).waitFor();
    return 'signed in; on the overview';
  });

  await step('keyboard navigation', async () => {
    await page.goto(`${ORIGIN}/ui/overview`);
    await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
    await page.keyboard.press('Tab');
    const skip = await focusedInfo();
    check(skip && /skip to content/i.test(skip.text), `the first Tab stop is not the skip link: ${JSON.stringify(skip)}`);
    check(skip.visible, `the skip link has no visible focus: ${skip.outline}`);
    let nav = null;
    for (let i = 0; i < 8; i += 1) {
      await page.keyboard.press('Tab');
      const f = await focusedInfo();
      if (f && f.inNav) { nav = f; break; }
    }
    check(nav, 'Tab never reached the navigation links');
    check(nav.visible && nav.matchesFocusVisible, `a focused nav link shows no focus ring: ${JSON.stringify(nav)}`);
    // Walk to Keys and follow it with Enter.
    for (let i = 0; i < 12; i += 1) {
      const f = await focusedInfo();
      if (f && f.href === '/ui/keys') break;
      await page.keyboard.press('Tab');
    }
    const f = await focusedInfo();
    check(f && f.href === '/ui/keys', `Tab did not reach the Keys link: ${JSON.stringify(f)}`);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
    const h1 = await focusedInfo();
    check(h1 && h1.tag === 'h1', `focus did not move to the new page's heading: ${JSON.stringify(h1)}`);
    // The skip link moves focus to the main content.
    await page.goto(`${ORIGIN}/ui/keys`);
    await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
    const m = await focusedInfo();
    check(m && m.tag === 'main', `the skip link did not move focus to main: ${JSON.stringify(m)}`);
    return `nav focus ring: ${nav.outline}`;
  });

  let secret = '';
  let keyId = '';
  await step('create a key in the dialog', async () => {
    await page.goto(`${ORIGIN}/ui/keys`);
    await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
    await settled();
    const open = page.getByRole('button', { name: 'Create key' });
    await open.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Create a virtual key' });
    await dialog.waitFor();
    let f = await focusedInfo();
    check(f && f.inDialog, `focus did not move into the dialog: ${JSON.stringify(f)}`);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    f = await focusedInfo();
    check(f && f.text === 'Create key' && !f.inDialog, `Escape did not return focus to the opener: ${JSON.stringify(f)}`);
    await page.keyboard.press('Enter');
    await dialog.waitFor();
    await dialog.getByLabel('Name').fill('ui-flow');
    await a11y('keys-create-dialog');
    await shot('keys-create-dialog');
    await dialog.getByRole('button', { name: 'Create key' }).click();
    const shown = page.getByRole('dialog', { name: /Key “ui-flow” created/ });
    await shown.waitFor();
    secret = await shown.getByLabel('Secret key').inputValue();
    check(/^tg-/.test(secret), `the dialog shows no tg- secret: ${secret.slice(0, 6)}…`);
    await a11y('keys-secret-dialog');
    await shot('keys-secret-dialog');
    await shown.getByRole('button', { name: 'Done' }).click();
    await shown.waitFor({ state: 'detached' });
    const row = page.getByRole('row', { name: /ui-flow/ });
    await row.first().waitFor();
    keyId = ((await row.first().locator('td').first().innerText()) || '').trim();
    check(keyId.length > 0, 'the new key has no id in the list');
    summary.key = { id: keyId, name: 'ui-flow', secret_prefix: secret.slice(0, 8) };
    await visit('keys');
    return `key ${keyId}`;
  });

  const conversation = `ui-flow-${Date.now().toString(36)}`;
  await step('call mock-echo with the new key', async () => {
    const res = await fetch(`${ORIGIN}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${secret}`,
        'content-type': 'application/json',
        'x-tollgate-conversation-id': conversation,
      },
      body: JSON.stringify({ model: 'mock-echo', messages: [{ role: 'user', content: 'Hello from the console test' }] }),
    });
    const body = await res.text();
    check(res.status === 200, `POST /v1/chat/completions: ${res.status} ${body.slice(0, 300)}`);
    const json = JSON.parse(body);
    summary.model_call = {
      status: res.status, model: json.model, usage: json.usage,
      cost_header: res.headers.get('x-tollgate-cost-usd'), conversation,
    };
    return summary.model_call;
  });

  await step('the call and its cost on the overview', async () => {
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Overview' }).click();
    await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
    const seen = await pollUntil('overview requests and cost', async () => {
      await settled();
      const requests = parseNumber(await page.locator('[data-metric=requests]').innerText());
      const cost = parseNumber(await page.locator('[data-metric=cost]').innerText());
      const today = parseNumber(await page.locator('[data-metric=spend-today]').innerText());
      return { ok: requests >= 1 && cost > 0 && today > 0, requests, cost, today };
    }, () => page.getByRole('button', { name: 'Refresh' }).click());
    // The key is among the top keys, by name.
    await page.getByRole('table', { name: 'Top keys' }).getByRole('link', { name: 'ui-flow' }).waitFor();
    await visit('overview');
    return seen;
  });

  await step('the call and its cost in the spend explorer', async () => {
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Spend' }).click();
    await page.getByRole('heading', { level: 1, name: 'Spend' }).waitFor();
    await settled();
    // The new key's spend by model, through the form.
    await page.getByLabel('Group by').selectOption('model');
    await page.getByLabel('Filter by').selectOption('key');
    await page.getByLabel('Filter value').fill(keyId);
    await page.getByRole('button', { name: 'Apply' }).click();
    const seen = await pollUntil('spend of the new key', async () => {
      await settled();
      const requests = parseNumber(await page.locator('[data-metric=spend-requests]').innerText());
      const cost = parseNumber(await page.locator('[data-metric=spend-total]').innerText());
      const row = await page.getByRole('table', { name: /Spend by model/ }).getByRole('row', { name: /mock-echo/ }).count();
      return { ok: requests === 1 && cost > 0 && row === 1, requests, cost, row };
    }, () => page.reload());
    check(new URL(page.url()).searchParams.get('filter') === keyId, 'the query is not in the address');
    await visit('spend');
    // By day, split by model: the stacked chart and the day x model table.
    await page.goto(`${ORIGIN}/ui/spend?group_by=day&period=7d&split=model`);
    await page.getByRole('heading', { level: 1, name: 'Spend' }).waitFor();
    await settled();
    await page.getByRole('table', { name: /Cost per day by model/ }).first().waitFor();
    await visit('spend-by-day-and-model');
    // CSV export: a real download of the server's CSV, fetched with the CSRF header.
    await page.goto(`${ORIGIN}/ui/spend?group_by=key&period=7d`);
    await settled();
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Export CSV' }).click(),
    ]);
    const file = path.join(ARTIFACTS, download.suggestedFilename());
    await download.saveAs(file);
    const csv = await readFile(file, 'utf8');
    check(/^key,requests,prompt_tokens,completion_tokens,cost_usd/m.test(csv), `unexpected CSV: ${csv.slice(0, 200)}`);
    check(csv.includes(keyId), 'the CSV has no row for the new key');
    return { ...seen, csv: path.basename(file) };
  });

  await step('the key page shows its usage', async () => {
    await page.goto(`${ORIGIN}/ui/keys`);
    await settled();
    await page.getByRole('link', { name: 'ui-flow' }).first().click();
    await page.getByRole('heading', { level: 1, name: 'ui-flow' }).waitFor();
    await settled();
    const text = await page.locator('main').innerText();
    check(/Cost per day/.test(text), 'no usage chart on the key page');
    const tiles = await page.locator('.tiles .tile-value').allInnerTexts();
    check(parseNumber(tiles[0]) === 1, `the key page counts ${tiles[0]} requests, not 1`);
    check(parseNumber(tiles[1]) > 0, `the key page shows cost ${tiles[1]}`);
    await visit('key-detail');
    // The edit dialog is labelled too.
    await page.getByRole('button', { name: 'Edit' }).click();
    const dlg = page.getByRole('dialog', { name: /Edit key/ });
    await dlg.waitFor();
    await a11y('key-edit-dialog');
    await page.keyboard.press('Escape');
    await dlg.waitFor({ state: 'detached' });
    return { requests: tiles[0], cost: tiles[1] };
  });

  await step('give the key limits of its own, and they hold', async () => {
    await page.getByRole('button', { name: 'Edit' }).click();
    const dlg = page.getByRole('dialog', { name: /Edit key/ });
    await dlg.waitFor();
    const limits = dlg.getByRole('group', { name: 'Limits of this key' });
    await limits.getByLabel('Budget, USD').fill('5');
    await limits.getByLabel('Budget period').selectOption('daily');
    await limits.getByLabel('Requests per minute').fill('1');
    await shot('key-edit-limits');
    await dlg.getByRole('button', { name: 'Save changes' }).click();
    await dlg.waitFor({ state: 'detached' });
    const props = await page.locator('dl.props').innerText();
    check(/\$5\.00 per day/.test(props) && /1 request\/min/.test(props), `the key page does not show its limits: ${props}`);
    // The key's own budget is listed with the spend so far (read from the ledger).
    const own = page.getByRole('table', { name: 'Budgets counting this key' }).getByRole('row', { name: /this key’s own/ });
    await own.waitFor();
    const ownText = await own.innerText();
    check(/\$5\.00/.test(ownText), `the key's own budget row shows no limit: ${ownText}`);
    // One request a minute: the first call goes through, the second is refused.
    const call = () => fetch(`${ORIGIN}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-echo', messages: [{ role: 'user', content: 'limited' }] }),
    });
    const first = await call();
    await first.text();
    const second = await call();
    const refusal = await second.json();
    check(first.status === 200, `the first call under the key's rpm got ${first.status}`);
    check(second.status === 429 && refusal.error && refusal.error.code === 'rate_limit_exceeded',
      `the second call within a minute was not refused: ${second.status} ${JSON.stringify(refusal)}`);
    await visit('key-detail-limits');
    // Limits cleared again: the form sends none.
    await page.getByRole('button', { name: 'Edit' }).click();
    await dlg.waitFor();
    await limits.getByLabel('Budget, USD').fill('');
    await limits.getByLabel('Requests per minute').fill('');
    await dlg.getByRole('button', { name: 'Save changes' }).click();
    await dlg.waitFor({ state: 'detached' });
    const cleared = await page.locator('dl.props').innerText();
    check(/none of its own/.test(cleared), `the limits were not cleared: ${cleared}`);
    return { limited: second.status, refusal: refusal.error.message };
  });

  await step('give a team limits of its own in its dialog', async () => {
    await page.goto(`${ORIGIN}/ui/teams`);
    await page.getByRole('heading', { level: 1, name: 'Teams' }).waitFor();
    await settled();
    await page.getByRole('button', { name: 'Edit team research' }).click();
    const dlg = page.getByRole('dialog', { name: 'Edit team research' });
    await dlg.waitFor();
    const limits = dlg.getByRole('group', { name: /Limits of this team/ });
    await limits.getByLabel('Budget, USD').fill('250');
    await limits.getByLabel('Tokens per minute').fill('100000');
    await a11y('team-edit-dialog');
    await dlg.getByRole('button', { name: 'Save changes' }).click();
    await dlg.waitFor({ state: 'detached' });
    const row = page.getByRole('row', { name: /Research/ });
    const text = await pollUntil('the team row shows its limits', async () => {
      await settled();
      const t = await row.innerText();
      return { ok: /\$250\.00 per month/.test(t) && /100,000 tokens\/min/.test(t) && /own: \$[0-9.,]+ of \$250\.00/.test(t), text: t };
    }, () => page.reload());
    return text;
  });

  await step('every other page', async () => {
    const visited = [];
    const nav = page.getByRole('navigation', { name: 'Console' });
    for (const [name, label, heading] of [
      ['teams', 'Teams', 'Teams'],
      ['users', 'Users', 'Users'],
      ['models', 'Models', 'Models'],
      ['mcp', 'MCP tools', 'MCP tools'],
      ['agents', 'Agents', 'Agents'],
      ['audit', 'Audit', 'Audit'],
      ['conversations', 'Conversations', 'Conversations'],
    ]) {
      await nav.getByRole('link', { name: label, exact: true }).click();
      await visit(name, null, { heading });
      visited.push(name);
    }
    // The models page lists mock-echo with a healthy target.
    await page.goto(`${ORIGIN}/ui/models`);
    await settled();
    await page.getByRole('heading', { level: 2, name: 'mock-echo' }).waitFor();
    // The audit page: the chain verifies, and the key's creation is in the log.
    await page.goto(`${ORIGIN}/ui/audit?action=key.*`);
    await settled();
    const verify = await page.locator('.verify-status').innerText();
    check(/intact/i.test(verify), `the audit chain is not reported intact: ${verify}`);
    await page.getByRole('cell', { name: 'key.create' }).first().waitFor();
    const disclosure = page.getByRole('button', { name: /Details of record/ }).first();
    await disclosure.click();
    check(await disclosure.getAttribute('aria-expanded') === 'true', 'the record did not open');
    await visit('audit-search');
    // An agent's page, when the gateway has agents.
    await page.goto(`${ORIGIN}/ui/agents`);
    await settled();
    const agentLinks = page.getByRole('table', { name: 'Registered agents' }).getByRole('link');
    if (await agentLinks.count()) {
      await agentLinks.first().click();
      await page.getByRole('heading', { name: 'Agent card' }).waitFor();
      await visit('agent-detail');
      visited.push('agent-detail');
    }
    return visited;
  });

  await step('the conversation of the call', async () => {
    await page.goto(`${ORIGIN}/ui/conversations`);
    await settled();
    await page.getByLabel('Conversation ID').fill(conversation);
    await page.getByRole('button', { name: 'Open' }).click();
    await page.getByRole('heading', { level: 1, name: 'Conversation' }).waitFor();
    await settled();
    const row = page.getByRole('table', { name: 'Conversation timeline' }).getByRole('row', { name: /Model call/ });
    check(await row.count() === 1, 'the timeline does not show exactly one model call');
    const cost = parseNumber(await page.locator('[data-metric=conversation-cost]').innerText());
    check(cost > 0, `the conversation costs ${cost}`);
    await visit('conversation');
    if (EXTRA_CONVERSATION) {
      await page.goto(`${ORIGIN}/ui/conversations/${encodeURIComponent(EXTRA_CONVERSATION)}`);
      await page.getByRole('heading', { level: 1, name: 'Conversation' }).waitFor();
      await settled();
      const kinds = await page.getByRole('table', { name: 'Conversation timeline' }).locator('tbody .badge').allInnerTexts();
      check(kinds.some((k) => /Agent hop/.test(k)) && kinds.some((k) => /Tool call/.test(k)) && kinds.some((k) => /Model call/.test(k)),
        `the cross-layer conversation lacks a kind: ${kinds.join(', ')}`);
      await visit('conversation-agents-tools');
    }
    // Back to the MCP page, now that tools may have been used, for its screenshot.
    await page.goto(`${ORIGIN}/ui/mcp`);
    await visit('mcp', null, { heading: 'MCP tools' });
    return { conversation, cost };
  });

  await step('a team created in its dialog', async () => {
    await page.goto(`${ORIGIN}/ui/teams`);
    await settled();
    await page.getByRole('button', { name: 'Create team' }).click();
    const dlg = page.getByRole('dialog', { name: 'Create a team' });
    await dlg.getByLabel('Team ID').fill('ui-flow-team');
    await dlg.getByLabel('Name').fill('Console flow');
    await a11y('teams-create-dialog');
    await dlg.getByRole('button', { name: 'Create team' }).click();
    await dlg.waitFor({ state: 'detached' });
    await page.getByRole('row', { name: /Console flow/ }).waitFor();
  });

  await step('budget reset, rotation and revocation of the key', async () => {
    await page.goto(`${ORIGIN}/ui/keys/${encodeURIComponent(keyId)}`);
    await page.getByRole('heading', { level: 1, name: 'ui-flow' }).waitFor();
    await settled();
    const notes = [];
    const reset = page.getByRole('button', { name: /^Reset budget / });
    if (await reset.count()) {
      await reset.first().click();
      const confirm = page.getByRole('dialog', { name: /Reset budget/ });
      await confirm.getByRole('button', { name: 'Reset counter' }).click();
      await page.getByRole('status').filter({ hasText: /reset for/ }).waitFor();
      notes.push('budget counter reset');
    }
    await page.getByRole('button', { name: 'Rotate secret' }).click();
    const rot = page.getByRole('dialog', { name: /Rotate the secret/ });
    await rot.getByLabel('Old secret keeps working for').selectOption('0s');
    await rot.getByRole('button', { name: 'Rotate secret' }).click();
    const shown = page.getByRole('dialog', { name: /New secret for/ });
    const rotated = await shown.getByLabel('Secret key').inputValue();
    check(/^tg-/.test(rotated) && rotated !== secret, 'rotation showed no new secret');
    await shown.getByRole('button', { name: 'Done' }).click();
    const call = async (s) => (await fetch(`${ORIGIN}/v1/models`, { headers: { authorization: `Bearer ${s}` } })).status;
    check(await call(secret) === 401, 'the old secret still works after a rotation without grace');
    check(await call(rotated) === 200, 'the rotated secret does not work');
    await page.getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('dialog', { name: /Revoke key/ }).getByRole('button', { name: 'Revoke key' }).click();
    await page.locator('dl.props .badge', { hasText: 'revoked' }).waitFor();
    check(await call(rotated) === 401, 'a revoked key still works');
    notes.push('rotated', 'revoked');
    return notes;
  });

  await step('a pending tool approval granted', async () => {
    await page.goto(`${ORIGIN}/ui/mcp`);
    await settled();
    const approve = page.getByRole('button', { name: /^Approve .* for / });
    const n = await approve.count();
    if (!n) return 'no pending approval on this gateway';
    await approve.first().click();
    const dlg = page.getByRole('dialog', { name: /^Approve / });
    await dlg.getByLabel('Note (optional)').fill('approved from the console test');
    await a11y('mcp-approve-dialog');
    await dlg.getByRole('button', { name: 'Approve call' }).click();
    await dlg.waitFor({ state: 'detached' });
    await page.waitForFunction((before) => document.querySelectorAll('button[aria-label^="Approve "]').length === before - 1, n);
    return `approved 1 of ${n}`;
  });

  await step('a tool drift reviewed and approved', async () => {
    await page.goto(`${ORIGIN}/ui/mcp`);
    await settled();
    const review = page.getByRole('button', { name: /^Review drift of / });
    const n = await review.count();
    if (!n) return 'no drift on this gateway';
    const transfer = page.getByRole('button', { name: /^Review drift of .*\/transfer$/ });
    await (await transfer.count() ? transfer : review).first().click();
    const dlg = page.getByRole('dialog', { name: /^Drift of / });
    await dlg.waitFor();
    const text = await dlg.innerText();
    await a11y('mcp-drift-dialog');
    await shot('mcp-drift-dialog');
    await dlg.getByRole('button', { name: 'Approve new definition' }).click();
    await dlg.waitFor({ state: 'detached' });
    await page.waitForFunction((before) => document.querySelectorAll('button[aria-label^="Review drift of "]').length === before - 1, n);
    return { reviewed: n, widened: /schema widened/.test(text), hidden: /U\+200B/.test(text) };
  });

  await step('changes without the CSRF header are refused', async () => {
    const r = await page.evaluate(async () => {
      const post = await fetch('/admin/v1/keys', {
        method: 'POST', credentials: 'same-origin',
        headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'csrf-probe' }),
      });
      const postBody = await post.text();
      const getNoHeader = await fetch('/admin/v1/keys?limit=1', { credentials: 'same-origin' });
      const wrong = await fetch('/admin/v1/keys/does-not-matter/revoke', {
        method: 'POST', credentials: 'same-origin', headers: { 'x-tollgate-csrf': 'forged' },
      });
      const logout = await fetch('/ui/api/logout', { method: 'POST', credentials: 'same-origin' });
      const session = await fetch('/ui/api/session', { credentials: 'same-origin' });
      const s = await session.json();
      const ok = await fetch('/admin/v1/keys?limit=1', { credentials: 'same-origin', headers: { 'x-tollgate-csrf': s.csrf } });
      return {
        post: post.status, post_body: postBody.slice(0, 300), get_without_header: getNoHeader.status,
        forged_header: wrong.status, logout_without_header: logout.status, with_header: ok.status,
      };
    });
    summary.csrf = r;
    check(r.post === 403, `POST /admin/v1/keys without x-tollgate-csrf: ${r.post} ${r.post_body}`);
    check(r.get_without_header === 403, `GET /admin/v1/keys without x-tollgate-csrf: ${r.get_without_header}`);
    check(r.forged_header === 403, `a forged x-tollgate-csrf: ${r.forged_header}`);
    check(r.logout_without_header === 403, `POST /ui/api/logout without x-tollgate-csrf: ${r.logout_without_header}`);
    check(r.with_header === 200, `the session itself no longer works: ${r.with_header}`);
    // No key named csrf-probe was created.
    await page.goto(`${ORIGIN}/ui/keys`);
    await settled();
    check(await page.getByRole('link', { name: 'csrf-probe' }).count() === 0, 'a key was created without the CSRF header');
    return r;
  });

  await step('sign out', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Master key or admin API key').waitFor();
    const r = await page.evaluate(async () => (await fetch('/ui/api/session', { credentials: 'same-origin' })).status);
    check(r === 401, `GET /ui/api/session after sign-out: ${r}`);
    await page.goto(`${ORIGIN}/ui/keys`);
    await page.getByLabel('Master key or admin API key').waitFor();
    return 'signed out; pages show the sign-in form again';
  });

  if (NON_ADMIN_KEY) {
    await step('a key without the admin role is refused', async () => {
      await page.getByLabel('Master key or admin API key').fill(NON_ADMIN_KEY);
      await page.getByRole('button', { name: 'Sign in' }).click();
      const err = page.locator('#signin-error');
      await err.waitFor({ state: 'visible' });
      const msg = await err.innerText();
      check(/no admin role/i.test(msg), `unexpected message for a non-admin key: ${msg}`);
      return msg;
    });
  }

  if (ADMIN_KEY) {
    await step('an admin principal signs in with their own key', async () => {
      await page.getByLabel('Master key or admin API key').fill(ADMIN_KEY);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
      const who = await page.locator('#session-who').innerText();
      check(!/master/.test(who), `an admin principal is shown as ${who}`);
      await settled();
      await page.getByRole('link', { name: 'ui-flow' }).first().waitFor();
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByLabel('Master key or admin API key').waitFor();
      return who;
    });
  }

  check(summary.page_errors.length === 0, `uncaught errors in the page:\n${summary.page_errors.join('\n')}`);
  check(summary.csp_violations.length === 0, `Content Security Policy violations:\n${summary.csp_violations.join('\n')}`);
  // Refused requests (401, 403) are the flow's own probes; anything else logged as an error is not.
  const unexpected = summary.console_errors.filter((t) => !/^Failed to load resource: the server responded with a status of 40[13]/.test(t));
  check(unexpected.length === 0, `errors in the browser console:\n${unexpected.join('\n')}`);
  summary.ok = true;
}

let code = 0;
try {
  await run();
} catch (e) {
  code = 1;
  summary.error = e instanceof Failure ? e.message : String(e && e.stack ? e.stack : e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
try {
  await writeFile(path.join(ARTIFACTS, 'summary.json'), JSON.stringify(summary, null, 2));
} catch { /* the directory may not exist */ }
console.log(JSON.stringify(summary, null, 2));
if (code) console.error(`\nUI flow FAILED: ${summary.error}`);
process.exit(code);
