// Audit: the tamper-evident chain's verification (GET /admin/v1/audit/verify) and the log
// searched newest first (GET /admin/v1/audit: action, principal and target exactly or by a
// prefix ending in *, decision, outcome, conversation), paged on the server with
// before/next_before.

import { get, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, field, input, select, button, link, int, timeEl, statusBadge, dl,
  jsonBlock, errorBox, emptyState, loading, qs, nextId, shortHash,
} from './ui.js';

const FILTERS = [
  ['action', 'Action', 'e.g. key.create, or mcp.* for a prefix'],
  ['principal', 'Principal', 'a key ID, master, or a prefix ending in *'],
  ['target', 'Target', 'e.g. tools/echo, or echo/* for a prefix'],
  ['decision', 'Decision', 'allow, deny, require_approval, …'],
  ['outcome', 'Outcome', 'success, failure, error, …'],
  ['conversation', 'Conversation ID', ''],
];
const LIMITS = ['25', '50', '100', '200', '500'];

export async function render(root, ctx) {
  const q = ctx.query;
  const inputs = {};
  const fields = FILTERS.map(([name, label, hint]) => {
    inputs[name] = input({ name, value: q.get(name) || '', autocomplete: 'off', placeholder: hint });
    return field(label, inputs[name]);
  });
  const limitSel = select(LIMITS.map((l) => [l, `${l} per page`]), q.get('limit') || '50', { name: 'limit' });
  const form = h('form', { class: 'filters', 'aria-label': 'Search the audit log' },
    fields, field('Page size', limitSel),
    h('div', { class: 'filters-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary' }, 'Search'),
      h('button', { type: 'button', class: 'btn', onclick: () => ctx.go({}) }, 'Clear')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = { limit: limitSel.value === '50' ? '' : limitSel.value };
    for (const [name] of FILTERS) p[name] = inputs[name].value.trim();
    ctx.go(p);
  });
  const verifyBox = h('div', { class: 'verify', 'aria-live': 'polite' }, loading('Verifying the chain…'));
  const results = h('div', null, loading());
  add(root, 
    pageHeader('Audit', 'Every admin action, tool call and agent hop, hash-chained so that tampering shows. Newest first; times are UTC.'),
    h('section', { class: 'card', 'aria-label': 'Chain verification' }, verifyBox),
    h('section', { class: 'card', 'aria-label': 'Search' }, form),
    h('section', { class: 'card', 'aria-label': 'Audit records' }, results));

  await Promise.all([verify(verifyBox), search(results, ctx)]);
}

async function verify(box) {
  fill(box, loading('Verifying the chain…'));
  try {
    const v = await get('/admin/v1/audit/verify');
    clear(box);
    const intact = v.status === 'intact';
    add(box, h('div', { class: ['verify-status', intact ? 'ok' : 'bad'] },
      statusBadge(v.status),
      h('span', null, intact
        ? ` The chain is intact: ${int(v.records)} records verified${v.head_seq !== null && v.head_seq !== undefined ? `, head #${v.head_seq}` : ''}.`
        : ` The chain is broken: ${v.problem || 'unknown problem'}.`),
      v.checked_at ? h('span', { class: 'muted small' }, ' Checked ', timeEl(v.checked_at), ' UTC.') : null,
      button('Verify again', () => verify(box), { small: true })));
  } catch (e) {
    fill(box, errorBox(e), button('Verify again', () => verify(box), { small: true }));
  }
}

async function search(box, ctx) {
  const q = ctx.query;
  const params = { limit: q.get('limit') || 50, before: q.get('before') || undefined };
  for (const [name] of FILTERS) params[name] = q.get(name) || undefined;
  let r;
  try {
    r = await get(`/admin/v1/audit${qs(params)}`);
  } catch (e) {
    fill(box, errorBox(e));
    return;
  }
  if (!ctx.alive()) return;
  clear(box);
  const rows = r.data || [];
  if (!rows.length) {
    add(box, emptyState(params.before ? 'No older records.' : 'No records match.'));
  } else {
    add(box, auditTable(rows));
  }
  const nav = h('nav', { class: 'pager', 'aria-label': 'Audit pages' });
  const current = Object.fromEntries([...q.entries()]);
  if (params.before) {
    const newest = { ...current };
    delete newest.before;
    add(nav, link(`/ui/audit${qs(newest)}`, 'Newest records'));
  }
  if (r.next_before !== null && r.next_before !== undefined) {
    add(nav, link(`/ui/audit${qs({ ...current, before: r.next_before })}`, 'Older records', { class: 'btn' }));
  }
  add(nav, h('span', { class: 'muted pager-info' }, rows.length
    ? `Records #${rows[0].seq} to #${rows[rows.length - 1].seq}`
    : ''));
  add(box, nav);
}

/** Targets that have a console page link to it. */
function targetCell(a) {
  const t = a.target;
  if (!t) return '–';
  if (/^key\./.test(a.action) && /^key_/.test(t)) return link(`/ui/keys/${enc(t)}`, t);
  if (/^a2a\./.test(a.action)) {
    const agent = t.split('/')[0];
    return h('span', null, link(`/ui/agents/${enc(agent)}`, agent), t.slice(agent.length));
  }
  return t;
}

export function auditTable(rows) {
  const tbody = h('tbody');
  for (const a of rows) {
    const detailId = nextId('audit');
    // The record number is the disclosure button for the record's details.
    const toggle = h('button', {
      type: 'button', class: 'disclosure mono', 'aria-expanded': 'false', 'aria-controls': detailId,
      'aria-label': `Details of record ${a.seq}`,
    }, `#${a.seq}`);
    const detail = h('tr', { id: detailId, class: 'detail-row', hidden: true },
      h('td', { colspan: '7' }, dl([
        ['Request ID', a.request_id ? h('span', { class: 'mono' }, a.request_id) : null],
        ['Trace ID', a.trace_id ? h('span', { class: 'mono' }, a.trace_id) : null],
        ['Conversation', a.conversation_id ? link(`/ui/conversations/${enc(a.conversation_id)}`, a.conversation_id, { class: 'mono' }) : null],
        ['Hash', a.hash ? h('span', { class: 'mono small', title: a.hash }, shortHash(a.hash, 24)) : null],
      ]), a.detail ? jsonBlock(a.detail, `Detail of record ${a.seq}`) : null));
    toggle.addEventListener('click', () => {
      const open = detail.hidden;
      detail.hidden = !open;
      toggle.setAttribute('aria-expanded', String(open));
    });
    add(tbody, h('tr', null,
      h('th', { scope: 'row', class: 'nowrap' }, toggle),
      h('td', null, timeEl(a.time || a.time_ms)),
      h('td', { class: 'mono small wrap-anywhere' }, a.principal || '–'),
      h('td', null, a.action),
      h('td', { class: 'mono small' }, targetCell(a)),
      h('td', null, statusBadge(a.decision), a.rule ? h('div', { class: 'muted small' }, a.rule) : null),
      h('td', null, statusBadge(a.outcome))), detail);
  }
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data' },
    h('caption', { class: 'visually-hidden' }, 'Audit records, newest first'),
    h('thead', null, h('tr', null,
      ['Record', 'Time', 'Principal', 'Action', 'Target', 'Decision and rule', 'Outcome'].map((c) => h('th', { scope: 'col' }, c)))),
    tbody));
}
