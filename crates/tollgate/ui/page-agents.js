// Agents: the registered A2A agents (GET /admin/v1/a2a/agents). An agent's page: its card as
// the gateway serves it (GET /admin/v1/a2a/agents/{name}/card), its registration (secrets
// redacted by the server) and its recent calls (the audit chain, action a2a.call, target
// <agent>/*, paged with before/next_before).

import { get, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, section, table, link, timeEl, statusBadge, badge, dl, rawJson,
  errorBox, emptyState, loading, loadMore, qs, ms,
} from './ui.js';

/** An agent's upstream address(es): `urls` (one per replica) or `url`. */
function upstream(agent) {
  if (!agent) return null;
  const urls = [].concat(agent.urls || agent.url || []);
  if (!urls.length) return null;
  return h('span', { class: 'mono small' }, urls.join(', '));
}

export async function renderList(root, ctx) {
  const box = h('div', null, loading());
  add(root, 
    pageHeader('Agents', 'A2A agents behind the gateway at /a2a/{agent}: from the configuration (a2a.agents) or registered through the admin API.'),
    h('section', { class: 'card', 'aria-label': 'Agents' }, box));
  try {
    const r = await get('/admin/v1/a2a/agents');
    if (!ctx.alive()) return;
    clear(box);
    const list = r.agents || [];
    if (!list.length) {
      add(box, emptyState('No agents are registered.'));
      return;
    }
    add(box, table([
      { label: 'Agent', rowHeader: true, value: (a) => link(`/ui/agents/${enc(a.name)}`, a.name) },
      { label: 'Source', value: (a) => badge(a.source, 'neutral') },
      { label: 'Upstream', value: (a) => upstream(a.agent) },
      { label: 'Gateway address', value: (a) => h('span', { class: 'mono small' }, `/a2a/${a.name}`) },
      { label: 'Status', value: (a) => (a.error ? h('span', { class: 'inline-error small' }, [].concat(a.error).join('; ')) : statusBadge('active')) },
      { label: 'Updated', value: (a) => (a.updated_ms || a.created_ms ? timeEl(a.updated_ms || a.created_ms) : null) },
    ], list, { caption: 'Registered agents' }));
  } catch (e) {
    fill(box, e.status === 404 ? emptyState('The agent gateway is not configured (a2a: in the configuration).') : errorBox(e));
  }
}

export async function renderDetail(root, ctx) {
  const name = ctx.params[0];
  const reg = h('div', null, loading());
  const card = h('div', null, loading());
  const calls = h('div', null, loading());
  add(root, 
    h('div', { class: 'page-header' }, h('div', null,
      h('p', { class: 'crumbs' }, link('/ui/agents', 'Agents'), ' / ', name),
      h('h1', null, name),
      h('p', { class: 'subtitle' }, 'Served at ', h('span', { class: 'mono' }, `/a2a/${name}`)))),
    section('Agent card', card),
    section('Registration', reg),
    section('Recent calls', calls));
  await Promise.all([
    get(`/admin/v1/a2a/agents/${enc(name)}`).then((a) => {
      fill(reg, 
        dl([
          ['Source', a.source],
          ['Upstream', upstream(a.agent)],
          ['Card', a.agent && a.agent.card_url ? h('span', { class: 'mono small' }, a.agent.card_url) : null],
          ['Created', a.created_ms ? timeEl(a.created_ms) : null],
          ['Updated', a.updated_ms ? timeEl(a.updated_ms) : null],
          ['Problems', a.error ? [].concat(a.error).join('; ') : null],
        ]),
        a.agent ? rawJson('Configuration (secrets redacted)', a.agent) : null);
    }).catch((e) => fill(reg, errorBox(e))),
    get(`/admin/v1/a2a/agents/${enc(name)}/card`).then((r) => {
      clear(card);
      if (r.error) add(card, h('p', { class: 'inline-error' }, `The card could not be fetched: ${r.error}`));
      if (r.card) add(card, cardView(r.card));
      else if (!r.error) add(card, emptyState('No card.'));
    }).catch((e) => fill(card, errorBox(e))),
    recentCalls(calls, name),
  ]);
}

function cardView(c) {
  const skills = c.skills || [];
  const caps = c.capabilities || {};
  const ifaces = c.supportedInterfaces || c.supported_interfaces || c.additionalInterfaces || [];
  return h('div', null,
    dl([
      ['Name', c.name],
      ['Description', c.description],
      ['Version', c.version],
      ['Protocol', c.protocolVersion || (ifaces[0] && ifaces[0].protocolVersion) || null],
      ['URL', c.url ? h('span', { class: 'mono' }, c.url) : (ifaces[0] && ifaces[0].url ? h('span', { class: 'mono' }, ifaces[0].url) : null)],
      ['Provider', c.provider ? [c.provider.organization, c.provider.url].filter(Boolean).join(' · ') : null],
      ['Capabilities', Object.entries(caps).filter(([, v]) => v === true).map(([k]) => k).join(', ') || null],
      ['Signed', c.signatures && c.signatures.length ? 'yes' : 'no'],
    ]),
    skills.length ? table([
      { label: 'Skill', rowHeader: true, value: (s) => s.name || s.id },
      { label: 'Description', value: (s) => s.description },
      { label: 'Tags', value: (s) => (s.tags && s.tags.length ? s.tags.join(', ') : null) },
    ], skills, { caption: 'Skills' }) : emptyState('The card lists no skills.'),
    rawJson('Card JSON', c));
}

async function recentCalls(box, name) {
  clear(box);
  const tbody = h('tbody');
  const tableEl = h('table', { class: 'data' },
    h('caption', { class: 'visually-hidden' }, `Recent calls to ${name}`),
    h('thead', null, h('tr', null, ['Time', 'Caller', 'Method', 'Task state', 'Status', 'Latency', 'Conversation']
      .map((c, i) => h('th', { scope: 'col', class: i === 5 ? 'num' : null }, c)))),
    tbody);
  const empty = emptyState('No calls recorded yet.');
  empty.hidden = true;
  add(box, h('div', { class: 'table-wrap' }, tableEl), empty);
  const pager = loadMore(async (before) => {
    const r = await get(`/admin/v1/audit${qs({ action: 'a2a.call', target: `${name}/*`, limit: 25, before })}`);
    return { items: r.data || [], next: r.next_before ?? null };
  }, (items) => {
    for (const a of items) {
      const d = a.detail || {};
      add(tbody, h('tr', null,
        h('th', { scope: 'row' }, timeEl(a.time || a.time_ms)),
        h('td', { class: 'mono small' }, a.principal || '–'),
        h('td', null, d.method || (a.target || '').split('/').slice(1).join('/') || '–'),
        h('td', null, statusBadge(d.task_state)),
        h('td', null, statusBadge(a.outcome)),
        h('td', { class: 'num' }, d.latency_ms !== undefined ? ms(d.latency_ms) : '–'),
        h('td', null, a.conversation_id ? link(`/ui/conversations/${enc(a.conversation_id)}`, a.conversation_id, { class: 'mono small' }) : '–')));
    }
    empty.hidden = tbody.childElementCount > 0;
    tableEl.hidden = tbody.childElementCount === 0;
  }, 'Older calls');
  add(box, pager.el, h('p', { class: 'card-foot' }, link(`/ui/audit${qs({ action: 'a2a.*', target: `${name}/*` })}`, `Everything about ${name} in the audit log`)));
  await pager.next();
}

