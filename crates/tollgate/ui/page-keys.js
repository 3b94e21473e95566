// Keys: the virtual keys (GET /admin/v1/keys, paged with after/next_after), their cost over
// the last 30 days, and creating one (the secret is shown once) with its own limits. A key's
// page: its fields and limits, edit (PATCH), rotate (new secret shown once), revoke, daily
// usage for 30 days, and the budgets that count it (its own and the configured ones), with
// reset.

import { get, post, patch, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, section, field, input, select, checkbox, button, table, link, usd, int,
  timeEl, relative, statusBadge, loadMore, formDialog, secretDialog, confirmDialog, dl,
  errorBox, emptyState, loading, announce, showError, formValues, splitList, qs, isoDate, rawJson,
} from './ui.js';
import { barChart } from './charts.js';
import { limitFields, limitsFrom, limitsText } from './limits.js';

const PAGE = 50;

async function directoryOptions() {
  const [teams, users] = await Promise.all([
    get('/admin/v1/teams').catch(() => []),
    get('/admin/v1/users').catch(() => []),
  ]);
  return { teams: Array.isArray(teams) ? teams : [], users: Array.isArray(users) ? users : [] };
}

function modelsText(models) {
  if (!models || !models.length) return h('span', { class: 'muted' }, 'all models');
  return models.join(', ');
}

export async function renderList(root, ctx) {
  const createBtn = button('Create key', () => createKey((k) => {
    if (!ctx.alive()) return;
    tbody.prepend(keyRow(k, null));
    empty.hidden = true;
    tableEl.hidden = false;
  }), { kind: 'primary' });
  const tbody = h('tbody');
  const usage = h('span');
  const tableEl = h('table', { class: 'data' },
    h('caption', { class: 'visually-hidden' }, 'Virtual keys'),
    h('thead', null, h('tr', null,
      ['Name', 'Key ID', 'Secret prefix', 'Team', 'User', 'Models', 'Status', 'Cost, 30 days', 'Created', 'Expires']
        .map((c, i) => h('th', { scope: 'col', class: i === 7 ? 'num' : null }, c)))),
    tbody);
  const empty = emptyState('No virtual keys yet. Create one to give an application access without the master key.');
  empty.hidden = true;
  add(root, 
    pageHeader('Keys', 'Virtual keys for applications. A key’s secret is shown once, when it is created or rotated.', createBtn),
    h('section', { class: 'card', 'aria-label': 'Virtual keys' }, h('div', { class: 'table-wrap' }, tableEl), empty, usage));

  // Cost per key over 30 days, joined client-side (one spend query for the whole list).
  let costs = {};
  const costsReady = get(`/admin/v1/spend${qs({ group_by: 'key', since: '30d', limit: 100000 })}`)
    .then((r) => { costs = Object.fromEntries((r.rows || []).map((x) => [x.group, x])); })
    .catch(() => {});

  const pager = loadMore(async (after) => {
    const r = await get(`/admin/v1/keys${qs({ limit: PAGE, after })}`);
    await costsReady;
    return { items: r.data || [], next: r.next_after || null };
  }, (items) => {
    for (const k of items) add(tbody, keyRow(k, costs[k.id]));
    empty.hidden = tbody.childElementCount > 0;
    tableEl.hidden = tbody.childElementCount === 0;
  }, 'Load more keys');
  add(root.querySelector('section'), pager.el);
  await pager.next();
}

function keyRow(k, cost) {
  return h('tr', null,
    h('th', { scope: 'row' }, link(`/ui/keys/${enc(k.id)}`, k.name || k.id)),
    h('td', { class: 'mono small' }, k.id),
    h('td', { class: 'mono small' }, k.secret_prefix ? `${k.secret_prefix}…` : '–'),
    h('td', null, k.team ? k.team : h('span', { class: 'muted' }, '–')),
    h('td', null, k.user ? k.user : h('span', { class: 'muted' }, '–')),
    h('td', null, modelsText(k.models)),
    h('td', null, statusBadge(k.status)),
    h('td', { class: 'num' }, cost ? usd(cost.cost_usd) : usd(0), cost ? h('div', { class: 'muted small' }, `${int(cost.requests)} req`) : null),
    h('td', null, timeEl(k.created_at)),
    h('td', null, k.expires_at ? timeEl(k.expires_at) : h('span', { class: 'muted' }, 'never')));
}

function teamSelect(teams, value, name = 'team') {
  return select([['', '(none)'], ...teams.map((t) => [t.id, t.name ? `${t.name} (${t.id})` : t.id])], value || '', { name });
}

function userSelect(users, value, name = 'user') {
  return select([['', '(none)'], ...users.map((u) => [u.id, u.name ? `${u.name} (${u.id})` : u.id])], value || '', { name });
}

async function createKey(onCreated) {
  const { teams, users } = await directoryOptions();
  const name = input({ name: 'name', required: true, autocomplete: 'off', maxlength: 200 });
  formDialog('Create a virtual key', [
    field('Name', name, 'What the key is for, e.g. the application that uses it.'),
    field('Models', input({ name: 'models', autocomplete: 'off', placeholder: 'e.g. mock-*, gpt-4o' }),
      'Model names or globs, separated by commas. Leave empty to allow every model.'),
    field('Team', teamSelect(teams)),
    field('User', userSelect(users)),
    field('Expires', select([['', 'Never'], ['1d', 'In 1 day'], ['7d', 'In 7 days'], ['30d', 'In 30 days'], ['90d', 'In 90 days'], ['365d', 'In 1 year']], '', { name: 'expires_in' })),
    limitFields(),
  ], 'Create key', async (form, d) => {
    const v = formValues(form);
    if (!v.name) throw new Error('Give the key a name.');
    const body = { name: v.name, models: splitList(v.models), limits: limitsFrom(v) };
    if (v.team) body.team = v.team;
    if (v.user) body.user = v.user;
    if (v.expires_in) body.expires_in = v.expires_in;
    const created = await post('/admin/v1/keys', body);
    d.close();
    announce(`Key ${created.key.name} created.`);
    secretDialog(`Key “${created.key.name}” created`, created.secret,
      'Copy this secret now and give it to the application. It is shown only once: tollgate keeps only its hash.');
    onCreated(created.key);
  });
}

// ---- One key -----------------------------------------------------------------------------

export async function renderDetail(root, ctx) {
  const id = ctx.params[0];
  const title = h('h1', null, 'Key');
  const header = h('div', { class: 'page-header' },
    h('div', null, h('p', { class: 'crumbs' }, link('/ui/keys', 'Keys'), ' / ', h('span', { class: 'mono' }, id)), title),
    h('div', { class: 'page-actions' }));
  const props = h('div', null, loading());
  const usageBox = h('div', null, loading());
  const budgetsBox = h('div', null, loading());
  add(root, header,
    section('Details', props),
    section('Usage, last 30 days', usageBox),
    section('Budgets counting this key', budgetsBox));

  let key;
  try {
    key = await get(`/admin/v1/keys/${enc(id)}`);
  } catch (e) {
    fill(props, errorBox(e));
    title.textContent = 'Key not found';
    clear(usageBox);
    clear(budgetsBox);
    return;
  }
  if (!ctx.alive()) return;
  const showKey = (k) => {
    key = k;
    title.textContent = k.name || k.id;
    document.title = `${title.textContent} · tollgate console`;
    const actions = header.querySelector('.page-actions');
    fill(actions, 
      button('Edit', () => editKey(key, (k) => { showKey(k); budgets(budgetsBox, k); })),
      button('Rotate secret', () => rotateKey(key, showKey), { disabled: key.status === 'revoked' }),
      button('Revoke', () => revokeKey(key, showKey), { kind: 'danger', disabled: key.status === 'revoked' }),
    );
    fill(props, dl([
      ['Status', statusBadge(k.status)],
      ['Key ID', h('span', { class: 'mono' }, k.id)],
      ['Secret prefix', k.secret_prefix ? h('span', { class: 'mono' }, `${k.secret_prefix}…`) : null],
      ['Models', modelsText(k.models)],
      ['Limits', limitsText(k.limits).join(' · ') || h('span', { class: 'muted' }, 'none of its own')],
      ['Team', k.team ? k.team : null],
      ['User', k.user ? k.user : null],
      ['Enabled', k.enabled ? 'yes' : 'no'],
      ['Expires', k.expires_at ? h('span', null, timeEl(k.expires_at), ` (${relative(k.expires_at)})`) : 'never'],
      ['Revoked', k.revoked_at ? timeEl(k.revoked_at) : null],
      ['Created', timeEl(k.created_at)],
      ['Updated', timeEl(k.updated_at)],
    ]), k.metadata && Object.keys(k.metadata).length ? rawJson('Metadata', k.metadata) : null);
  };
  showKey(key);
  await Promise.all([usage(usageBox, key), budgets(budgetsBox, key)]);
}

async function usage(box, key) {
  try {
    const r = await get(`/admin/v1/spend${qs({ group_by: 'day', filter_by: 'key', filter: key.id, since: '30d' })}`);
    const byDay = Object.fromEntries((r.rows || []).map((x) => [x.group, x]));
    const days = [];
    const today = new Date();
    for (let i = 29; i >= 0; i -= 1) days.push(isoDate(new Date(today.getTime() - i * 86400000)));
    clear(box);
    add(box, h('div', { class: 'tiles tiles-small' },
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Requests'), h('div', { class: 'tile-value' }, int(r.total_requests))),
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Cost'), h('div', { class: 'tile-value' }, usd(r.total_cost_usd)))));
    add(box, h('div', { class: 'grid-2' },
      barChart({
        title: 'Cost per day', xLabel: 'Day', xs: days,
        summary: `Cost per day over the last 30 days: ${usd(r.total_cost_usd)} in total.`,
        series: [{ name: 'Cost', values: days.map((d) => (byDay[d] ? byDay[d].cost_usd : 0)) }],
        yFormat: usd, xFormat: (d, long) => (long ? d : d.slice(5)), height: 180,
      }),
      barChart({
        title: 'Requests per day', xLabel: 'Day', xs: days,
        summary: `Requests per day over the last 30 days: ${int(r.total_requests)} in total.`,
        series: [{ name: 'Requests', values: days.map((d) => (byDay[d] ? byDay[d].requests : 0)) }],
        yFormat: int, integer: true, xFormat: (d, long) => (long ? d : d.slice(5)), height: 180,
      })));
    add(box, h('p', { class: 'card-foot' }, link(`/ui/spend${qs({ group_by: 'model', filter_by: 'key', filter: key.id })}`, 'This key’s spend by model')));
  } catch (e) {
    fill(box, errorBox(e));
  }
}

async function budgets(box, key) {
  try {
    const [r, own] = await Promise.all([
      get('/admin/v1/budgets'),
      get(`/admin/v1/keys/${enc(key.id)}/budget`),
    ]);
    const rows = [];
    if (own && own.data) {
      for (const c of own.data.counters || []) rows.push({ b: own.data, c, own: true });
      if (!(own.data.counters || []).length) rows.push({ b: own.data, c: { id: key.id, spent_usd: 0, reserved_usd: 0, remaining_usd: own.data.limit_usd }, own: true });
    }
    for (const b of r.data || []) {
      for (const c of b.counters || []) {
        const counts = (b.scope === 'key' && c.id === key.id)
          || (b.scope === 'team' && key.team && c.id === key.team)
          || (b.scope === 'user' && key.user && c.id === key.user);
        if (counts) rows.push({ b, c });
      }
    }
    clear(box);
    if (!rows.length) {
      add(box, emptyState('No budget has counted this key in its current period. Give the key a budget of its own (Edit), or add rules to the gateway’s configuration (budgets:); a key’s counter appears there once it spends under one.'));
      return;
    }
    const resetUrl = ({ b, own: mine }) => (mine ? `/admin/v1/keys/${enc(key.id)}/budget/reset` : `/admin/v1/budgets/${enc(b.name)}/reset`);
    add(box, table([
      { label: 'Budget', rowHeader: true, class: 'nowrap', value: ({ b, own: mine }) => (mine ? 'this key’s own' : b.name) },
      { label: 'Counts', value: ({ b, c }) => (b.scope === 'key' ? 'this key' : `${b.scope} ${c.id}`) },
      { label: 'Period', value: ({ b }) => b.period },
      { label: 'Limit', num: true, value: ({ b }) => usd(b.limit_usd) },
      { label: 'Spent', num: true, value: ({ c }) => usd(c.spent_usd) },
      { label: 'Reserved', num: true, value: ({ c }) => usd(c.reserved_usd) },
      { label: 'Remaining', num: true, value: ({ c }) => usd(c.remaining_usd) },
      { label: 'Used', value: ({ b, c }) => meter(c.spent_usd, b.limit_usd) },
      { label: 'Resets', value: ({ b }) => (b.resets_at ? timeEl(b.resets_at) : null) },
      { label: 'Actions', hidden: true, value: (row) => button('Reset', async () => {
        const { b, c, own: mine } = row;
        const what = mine ? 'this key’s own budget' : `budget “${b.name}”`;
        if (!(await confirmDialog(`Reset ${what}?`, `This sets the spend counted for ${b.scope} ${c.id} in the current period back to zero.`, 'Reset counter', true))) return;
        try {
          await post(resetUrl(row), mine ? {} : { id: c.id });
          announce(`Budget ${mine ? 'of this key' : b.name} reset for ${c.id}.`);
          await budgets(box, key);
        } catch (e) {
          box.prepend(errorBox(e));
        }
      }, { small: true, ariaLabel: `Reset ${row.own ? 'this key’s own budget' : `budget ${row.b.name}`} for ${row.c.id}` }) },
    ], rows, { caption: 'Budgets counting this key' }));
  } catch (e) {
    fill(box, errorBox(e));
  }
}

export function meter(v, max) {
  const frac = max > 0 ? Math.min(1, (Number(v) || 0) / max) : 0;
  const el = h('meter', { min: '0', max: '1', low: '0.75', high: '0.9', optimum: '0', value: String(frac), 'aria-label': `${Math.round(frac * 100)}% of the limit used` });
  return h('span', { class: 'meter' }, el, ` ${Math.round(frac * 100)}%`);
}

async function editKey(key, done) {
  const { teams, users } = await directoryOptions();
  const enabled = checkbox('Enabled (a disabled key is refused until enabled again)', key.enabled, { name: 'enabled' });
  formDialog(`Edit key “${key.name}”`, [
    field('Name', input({ name: 'name', value: key.name, required: true, autocomplete: 'off' })),
    field('Models', input({ name: 'models', value: (key.models || []).join(', '), autocomplete: 'off' }),
      'Model names or globs, separated by commas. Empty allows every model.'),
    field('Team', teamSelect(teams, key.team)),
    field('User', userSelect(users, key.user)),
    enabled.el,
    limitFields(key.limits),
  ], 'Save changes', async (form, d) => {
    const v = formValues(form);
    if (!v.name) throw new Error('The name cannot be empty.');
    const body = {
      name: v.name,
      models: splitList(v.models),
      team: v.team || null,
      user: v.user || null,
      enabled: enabled.box.checked,
      limits: limitsFrom(v),
    };
    const k = await patch(`/admin/v1/keys/${enc(key.id)}`, body);
    d.close();
    announce(`Key ${k.name} saved.`);
    done(k);
  });
}

async function rotateKey(key, done) {
  formDialog(`Rotate the secret of “${key.name}”`, [
    h('p', null, 'A new secret replaces the current one. The old secret can keep working for a grace period so applications can switch over.'),
    field('Old secret keeps working for', select([['', 'The configured default (keys.rotation_grace)'], ['0s', 'No time: it stops working now'], ['5m', '5 minutes'], ['1h', '1 hour'], ['24h', '24 hours'], ['7d', '7 days']], '', { name: 'grace' })),
  ], 'Rotate secret', async (form, d) => {
    const v = formValues(form);
    const r = await post(`/admin/v1/keys/${enc(key.id)}/rotate`, v.grace ? { grace: v.grace } : {});
    d.close();
    announce(`Secret of ${key.name} rotated.`);
    done(r.key);
    secretDialog(`New secret for “${key.name}”`, r.secret);
  }, { danger: true });
}

async function revokeKey(key, done) {
  const ok = await confirmDialog(`Revoke key “${key.name}”?`,
    'Requests with this key are refused from now on. Revoking cannot be undone: create a new key instead.', 'Revoke key', true);
  if (!ok) return;
  try {
    const k = await post(`/admin/v1/keys/${enc(key.id)}/revoke`, {});
    announce(`Key ${key.name} revoked.`);
    done(k);
  } catch (e) {
    showError(e);
  }
}

