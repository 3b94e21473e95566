// Conversations: the conversations with model calls in a range (GET
// /admin/v1/conversations), and one conversation's timeline (GET
// /admin/v1/conversations/{id}): agent hops, model calls and tool calls merged by time, with
// tokens, cost and latency, drawn as a waterfall.

import { get, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, section, field, input, select, table, link, usd, int, ms, timeEl, time,
  tile, badge, statusBadge, jsonBlock, errorBox, emptyState, loading, qs,
} from './ui.js';

const RANGES = [['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days']];

export async function renderList(root, ctx) {
  const range = RANGES.some(([r]) => r === ctx.query.get('since')) ? ctx.query.get('since') : '24h';
  const idIn = input({ name: 'id', autocomplete: 'off', required: true, class: 'mono wide-input', placeholder: 'the A2A contextId or x-tollgate-conversation-id' });
  const open = h('form', { class: 'inline-form', 'aria-label': 'Open a conversation' },
    field('Conversation ID', idIn),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Open'));
  open.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = idIn.value.trim();
    if (id) ctx.navigate(`/ui/conversations/${enc(id)}`);
  });
  const rangeSel = select(RANGES, range, { name: 'since' });
  rangeSel.addEventListener('change', () => ctx.go({ since: rangeSel.value }));
  const box = h('div', null, loading());
  add(root, 
    pageHeader('Conversations', 'One conversation id joins agent hops, model calls and tool calls across the gateway’s three layers.'),
    h('section', { class: 'card', 'aria-label': 'Open a conversation' }, open),
    section('Conversations with model calls', h('div', { class: 'inline-form' }, field('Time range', rangeSel)), box));
  try {
    const r = await get(`/admin/v1/conversations${qs({ since: range, limit: 100 })}`);
    if (!ctx.alive()) return;
    clear(box);
    const rows = r.data || [];
    if (!rows.length) {
      add(box, emptyState('No conversation in this range. Requests join a conversation with the x-tollgate-conversation-id header, or through an A2A contextId.'));
      return;
    }
    add(box, h('p', { class: 'muted small' }, 'Most expensive first; model calls, tokens and cost count the whole conversation.'));
    add(box, table([
      { label: 'Conversation', rowHeader: true, value: (c) => link(`/ui/conversations/${enc(c.conversation_id)}`, c.conversation_id, { class: 'mono' }) },
      { label: 'First call', value: (c) => (c.first_at ? timeEl(c.first_at) : null) },
      { label: 'Last call', value: (c) => (c.last_at ? timeEl(c.last_at) : null) },
      { label: 'Model calls', num: true, value: (c) => int(c.model_calls) },
      { label: 'Tokens', num: true, value: (c) => (c.prompt_tokens !== undefined ? int((c.prompt_tokens || 0) + (c.completion_tokens || 0)) : null) },
      { label: 'Failed', num: true, value: (c) => int(c.failed || 0) },
      { label: 'Cost', num: true, value: (c) => usd(c.cost_usd) },
    ], rows, { caption: 'Conversations' }));
  } catch (e) {
    fill(box, errorBox(e));
  }
}

/** Every record as one timeline entry: {kind, end, start, ...}. */
function entries(v) {
  const out = [];
  for (const a of v.agent_calls || []) {
    const d = a.detail || {};
    const lat = Number(d.latency_ms) || 0;
    out.push({
      kind: 'agent', end: a.time_ms, start: a.time_ms - lat, latency: d.latency_ms,
      what: `${d.agent || (a.target || '').split('/')[0]} · ${d.method || a.action}`,
      who: a.principal, status: d.task_state || a.outcome, outcome: a.outcome,
      extra: d.actors && d.actors.length ? `on behalf of ${[].concat(d.actors).join(' → ')}` : null,
      raw: a,
    });
  }
  for (const m of v.model_calls || []) {
    const lat = Number(m.latency_ms) || 0;
    out.push({
      kind: 'model', end: m.time_ms, start: m.time_ms - lat, latency: m.latency_ms,
      what: `${m.model}${m.served_model && m.served_model !== m.model ? ` (${m.served_model})` : ''} · ${m.provider || ''}${m.upstream_model ? `/${m.upstream_model}` : ''}`,
      who: m.principal, status: m.outcome || m.status, outcome: m.outcome,
      tokensIn: m.prompt_tokens, tokensOut: m.completion_tokens, cost: m.cost_usd,
      extra: [m.attempts > 1 ? `${m.attempts} attempts` : null, m.fallback ? 'fallback' : null, m.cache_hit ? 'cache hit' : null, m.ttft_ms ? `first token ${ms(m.ttft_ms)}` : null].filter(Boolean).join(', ') || null,
      raw: m,
    });
  }
  for (const t of v.tool_calls || []) {
    const d = t.detail || {};
    const lat = Number(d.latency_ms) || 0;
    out.push({
      kind: 'tool', end: t.time_ms, start: t.time_ms - lat, latency: d.latency_ms,
      what: `${t.target || d.name || ''} · ${t.action.replace(/^mcp\./, '')}`,
      who: t.principal, status: t.decision && t.decision !== 'allow' ? t.decision : t.outcome, outcome: t.outcome,
      extra: d.error ? String(d.error) : null,
      raw: t,
    });
  }
  out.sort((a, b) => a.start - b.start || a.end - b.end);
  return out;
}

const KIND = { agent: ['Agent hop', 'agent'], model: ['Model call', 'model'], tool: ['Tool call', 'tool'] };

export async function renderDetail(root, ctx) {
  const id = ctx.params[0];
  const tiles = h('div', { class: 'tiles' }, loading());
  const timeline = h('div');
  add(root, 
    h('div', { class: 'page-header' }, h('div', null,
      h('p', { class: 'crumbs' }, link('/ui/conversations', 'Conversations'), ' / ', h('span', { class: 'mono' }, id)),
      h('h1', null, 'Conversation'),
      h('p', { class: 'subtitle mono' }, id))),
    tiles,
    section('Timeline', timeline));
  let v;
  try {
    v = await get(`/admin/v1/conversations/${enc(id)}`);
  } catch (e) {
    fill(tiles, errorBox(e));
    return;
  }
  if (!ctx.alive()) return;
  const t = v.totals || {};
  const items = entries(v);
  const t0 = items.length ? Math.min(...items.map((e) => e.start)) : 0;
  const t1 = items.length ? Math.max(...items.map((e) => e.end)) : 0;
  fill(tiles, 
    tile('Agent hops', int(t.agent_calls)),
    tile('Model calls', int(t.model_calls)),
    tile('Tool calls', int(t.tool_calls)),
    tile('Tokens', int((t.prompt_tokens || 0) + (t.completion_tokens || 0)), `${int(t.prompt_tokens)} in · ${int(t.completion_tokens)} out`),
    tile('Cost', h('span', { 'data-metric': 'conversation-cost' }, usd(t.cost_usd))),
    tile('Duration', items.length ? ms(t1 - t0) : '–', items.length ? `from ${time(t0)} UTC` : null));
  if (!items.length) {
    add(timeline, emptyState('Nothing is recorded under this conversation id.'));
    return;
  }
  const span = Math.max(1, t1 - t0);
  const rows = items.map((e) => ({ ...e, offset: e.start - t0 }));
  add(timeline, 
    h('ul', { class: 'legend' }, Object.values(KIND).map(([label, cls]) => h('li', null, h('span', { class: `swatch k-${cls}`, 'aria-hidden': 'true' }), label))),
    table([
      { label: 'Start', rowHeader: true, class: 'nowrap', value: (e) => h('span', { class: 'mono small', title: `${time(e.start)} UTC` }, `+${ms(e.offset)}`) },
      { label: 'Kind', value: (e) => badge(KIND[e.kind][0], `k-${KIND[e.kind][1]}`) },
      { label: 'What', value: (e) => h('div', null, h('span', null, e.what), e.extra ? h('div', { class: 'muted small' }, e.extra) : null,
        h('details', { class: 'raw' }, h('summary', null, 'Record'), jsonBlock(e.raw, 'Record'))) },
      { label: 'Principal', value: (e) => h('span', { class: 'mono small' }, e.who || '–') },
      { label: 'Tokens', num: true, value: (e) => (e.tokensIn !== undefined ? `${int(e.tokensIn)} → ${int(e.tokensOut)}` : null) },
      { label: 'Cost', num: true, value: (e) => (e.cost !== undefined ? usd(e.cost) : null) },
      { label: 'Latency', num: true, value: (e) => (e.latency !== undefined && e.latency !== null ? ms(e.latency) : null) },
      { label: 'Status', value: (e) => statusBadge(e.status) },
      { label: 'Waterfall', class: 'waterfall-col', value: (e) => waterfall(e, t0, span) },
    ], rows, { caption: 'Conversation timeline' }));
}

function waterfall(e, t0, span) {
  const track = h('div', { class: 'wf-track', role: 'img', 'aria-label': `starts at +${ms(e.start - t0)}, lasts ${ms(e.end - e.start)}` });
  const bar = h('div', { class: `wf-bar k-${KIND[e.kind][1]}` });
  bar.style.left = `${(100 * (e.start - t0)) / span}%`;
  bar.style.width = `${Math.max(0.8, (100 * (e.end - e.start)) / span)}%`;
  add(track, bar);
  return track;
}
