// Overview: model traffic over a chosen range from GET /admin/v1/stats (requests, errors,
// latency percentiles, cost, per bucket), spend today and this month, and the top models,
// keys and teams by cost (GET /admin/v1/spend?group_by=...&limit=5).

import { get, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, section, field, select, button, tile, table, link, usd, int, pct, ms, num,
  shortTime, isoDate, toDate, errorBox, emptyState, loading, announce, qs, rate, plural,
} from './ui.js';
import { barChart, lineChart } from './charts.js';

export const RANGES = [
  ['1h', 'Last hour', 60],
  ['24h', 'Last 24 hours', 48],
  ['7d', 'Last 7 days', 42],
  ['30d', 'Last 30 days', 30],
];

function xFormatFor(bucketSeconds, range) {
  return (t, long) => {
    const d = toDate(t);
    if (!d) return '';
    if (bucketSeconds >= 86400) return isoDate(d).slice(5);
    if (long) return `${isoDate(d)} ${shortTime(d)} UTC`;
    return shortTime(d, range === '7d' || range === '30d');
  };
}

export async function render(root, ctx) {
  let range = ctx.query.get('range') || '24h';
  if (!RANGES.some(([r]) => r === range)) range = '24h';
  const rangeSelect = select(RANGES.map(([v, l]) => [v, l]), range, { name: 'range' });
  const tiles = h('div', { class: 'tiles', 'aria-live': 'polite', 'aria-busy': 'true' });
  const charts = h('div', { class: 'grid-2' });
  const tops = h('div', { class: 'grid-3' });
  const refresh = button('Refresh', () => load(true));
  add(root, 
    pageHeader('Overview', 'Model traffic through the gateway, from the spend ledger. Times are UTC.',
      h('div', { class: 'inline-form' }, field('Time range', rangeSelect), refresh)),
    tiles, charts, tops);
  rangeSelect.addEventListener('change', () => {
    range = rangeSelect.value;
    ctx.setQuery({ range });
    load(true);
  });

  async function load(manual) {
    const [, , buckets] = RANGES.find(([r]) => r === range);
    tiles.setAttribute('aria-busy', 'true');
    if (!tiles.firstChild) add(tiles, loading());
    let stats;
    try {
      stats = await get(`/admin/v1/stats${qs({ since: range, buckets })}`);
    } catch (e) {
      if (!ctx.alive()) return;
      fill(tiles, errorBox(e));
      tiles.setAttribute('aria-busy', 'false');
      return;
    }
    if (!ctx.alive()) return;
    renderTiles(tiles, stats);
    renderCharts(charts, stats, range);
    tiles.setAttribute('aria-busy', 'false');
    renderTops(tops, range);
    if (manual) announce(`Overview updated for ${RANGES.find(([r]) => r === range)[1].toLowerCase()}.`);
  }
  await load(false);
}

function renderTiles(el, s) {
  const t = s.totals || {};
  const lat = t.latency_ms || {};
  const metric = (name, v) => h('span', { 'data-metric': name }, v);
  fill(el, 
    tile('Requests', metric('requests', int(t.requests)), rate(t.requests_per_s)),
    tile('Error rate', metric('error-rate', pct(t.error_rate)), plural(t.errors || 0, 'error'), t.errors > 0 ? 'warn' : null),
    tile('Latency p50', metric('p50', ms(lat.p50))),
    tile('Latency p90', metric('p90', ms(lat.p90))),
    tile('Latency p99', metric('p99', ms(lat.p99))),
    tile('Spend in range', metric('cost', usd(t.cost_usd)), `${int((t.prompt_tokens || 0) + (t.completion_tokens || 0))} tokens`),
    tile('Spend today', metric('spend-today', usd(s.spend_today_usd)), 'since 00:00 UTC'),
    tile('Spend this month', metric('spend-month', usd(s.spend_month_usd)), 'since the 1st, UTC'),
  );
}

function renderCharts(el, s, range) {
  const series = s.series || [];
  const xs = series.map((p) => p.t);
  const xFormat = xFormatFor(s.bucket_seconds, range);
  const reqs = series.map((p) => Math.max(0, (p.requests || 0) - (p.errors || 0)));
  const errs = series.map((p) => p.errors || 0);
  const total = series.reduce((a, p) => a + (p.requests || 0), 0);
  const cost = series.reduce((a, p) => a + (p.cost_usd || 0), 0);
  const per = s.bucket_seconds >= 3600 ? `${num(s.bucket_seconds / 3600)} h` : `${num(s.bucket_seconds / 60)} min`;
  fill(el, 
    h('section', { class: 'card', 'aria-label': 'Requests over time' }, barChart({
      title: `Requests per ${per}`,
      summary: `Requests per ${per}: ${int(total)} in total, ${int(errs.reduce((a, b) => a + b, 0))} errors.`,
      xs, series: [{ name: 'Succeeded', values: reqs }, { name: 'Errors', values: errs }],
      yFormat: (v) => int(v), xFormat, integer: true,
    })),
    h('section', { class: 'card', 'aria-label': 'Cost over time' }, barChart({
      title: `Cost per ${per}`,
      summary: `Cost per ${per}: ${usd(cost)} in total.`,
      xs, series: [{ name: 'Cost', values: series.map((p) => p.cost_usd || 0) }],
      yFormat: usd, xFormat,
    })),
    h('section', { class: 'card span-2', 'aria-label': 'Latency over time' }, lineChart({
      title: 'Latency percentiles',
      summary: `Latency p50, p90 and p99 per ${per}.`,
      xs,
      series: ['p50', 'p90', 'p99'].map((q) => ({ name: q, values: series.map((p) => (p.latency_ms ? p.latency_ms[q] : null)) })),
      yFormat: ms, xFormat, height: 200,
    })),
  );
}

async function renderTops(el, range) {
  const kinds = [
    ['model', 'Top models'],
    ['key', 'Top keys'],
    ['team', 'Top teams'],
  ];
  clear(el);
  const cards = kinds.map(([g, title]) => {
    const body = h('div', null, loading());
    add(el, section(title, body));
    return [g, title, body];
  });
  await Promise.all(cards.map(async ([g, title, body]) => {
    try {
      const r = await get(`/admin/v1/spend${qs({ group_by: g, since: range, limit: 5 })}`);
      const rows = r.rows || [];
      let names = {};
      if (g === 'key') names = await keyNames(rows.map((x) => x.group).filter(Boolean));
      clear(body);
      if (!rows.length) {
        add(body, emptyState('No requests in this range.'));
        return;
      }
      add(body, table([
        { label: g === 'model' ? 'Model' : g === 'key' ? 'Key' : 'Team', rowHeader: true, value: (x) => groupCell(g, x.group, names, true) },
        { label: 'Requests', num: true, value: (x) => int(x.requests) },
        { label: 'Cost', num: true, value: (x) => usd(x.cost_usd) },
      ], rows, { caption: title }),
      h('p', { class: 'card-foot' }, link(`/ui/spend${qs({ group_by: g, since: range })}`, `All ${g}s in the spend explorer`)));
    } catch (e) {
      fill(body, errorBox(e));
    }
  }));
}

export async function keyNames(ids) {
  const out = {};
  await Promise.all(ids.map(async (id) => {
    try {
      const k = await get(`/admin/v1/keys/${enc(id)}`);
      out[id] = k.name;
    } catch { /* a deleted key or the master key: keep the id */ }
  }));
  return out;
}

/** A group's value as a cell: keys, conversations and agents link to their pages. */
export function groupCell(g, value, names = {}, compact = false) {
  if (value === null || value === undefined || value === '') return h('span', { class: 'muted' }, g === 'key' ? '(master or JWT)' : '(none)');
  if (g === 'key') {
    if (compact) return link(`/ui/keys/${enc(value)}`, names[value] || value, { title: value });
    return h('span', null, link(`/ui/keys/${enc(value)}`, names[value] || value),
      names[value] ? h('span', { class: 'muted mono small' }, ` ${value}`) : null);
  }
  if (g === 'conversation') return link(`/ui/conversations/${enc(value)}`, value, { class: 'mono' });
  if (g === 'agent') return link(`/ui/agents/${enc(value)}`, value);
  return value;
}
