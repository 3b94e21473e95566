// Spend explorer: GET /admin/v1/spend grouped by one dimension, with one equality filter and
// a date range, as a chart and a table, and the same query as CSV (fetched with the CSRF
// header, saved as a file). Days can be split by model, team or key: the top groups of the
// range, each fetched by day (the API groups by one dimension at a time).

import { get, download } from './api.js';
import {
  h, add, fill, clear, pageHeader, field, input, select, button, table, usd, int, pct, isoDate,
  errorBox, emptyState, loading, announce, showError, qs,
} from './ui.js';
import { barChart, rankBars } from './charts.js';
import { groupCell, keyNames } from './page-overview.js';

const DIMENSIONS = [
  ['day', 'Day'], ['model', 'Model'], ['team', 'Team'], ['key', 'Key'], ['user', 'User'],
  ['provider', 'Provider'], ['agent', 'Agent'], ['conversation', 'Conversation'],
];
const PERIODS = [
  ['1h', 'Last hour'], ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['90d', 'Last 90 days'],
  ['month', 'This month'], ['custom', 'Custom dates'],
];
const SPLIT_TOP = 6;

function dimLabel(d) {
  const f = DIMENSIONS.find(([v]) => v === d);
  return f ? f[1] : d;
}

/** The query the form stands for, from the address. */
function readQuery(q) {
  let period = q.get('period') || '';
  let since = q.get('since') || '';
  const until = q.get('until') || '';
  if (!period) {
    if (!since) period = '30d';
    else if (PERIODS.some(([p]) => p === since)) { period = since; since = ''; } else period = 'custom';
  }
  return {
    group_by: q.get('group_by') || 'day',
    period,
    since,
    until,
    filter_by: q.get('filter_by') || '',
    filter: q.get('filter') || '',
    split: q.get('split') || '',
    limit: q.get('limit') || '100',
  };
}

/** since/until for the API, and the first and last day shown (for filling day gaps). */
function apiRange(state) {
  const now = new Date();
  if (state.period === 'custom') {
    // The "To" date is inclusive; the API's `until` is exclusive.
    let until = '';
    if (state.until) {
      const d = new Date(`${state.until}T00:00:00Z`);
      if (!Number.isNaN(d.getTime())) until = isoDate(new Date(d.getTime() + 86400000));
    }
    return { since: state.since || '', until, first: state.since, last: state.until || isoDate(now) };
  }
  if (state.period === 'month') {
    const first = `${isoDate(now).slice(0, 8)}01`;
    return { since: first, until: '', first, last: isoDate(now) };
  }
  const days = { '1h': 0, '24h': 1, '7d': 7, '30d': 30, '90d': 90 }[state.period] ?? 30;
  return { since: state.period, until: '', first: isoDate(new Date(now.getTime() - days * 86400000)), last: isoDate(now) };
}

function daysBetween(first, last) {
  const out = [];
  if (!first || !last) return out;
  let d = new Date(`${first}T00:00:00Z`);
  const end = new Date(`${last}T00:00:00Z`);
  if (Number.isNaN(d.getTime()) || Number.isNaN(end.getTime())) return out;
  while (d <= end && out.length < 400) {
    out.push(isoDate(d));
    d = new Date(d.getTime() + 86400000);
  }
  return out;
}

export async function render(root, ctx) {
  const state = readQuery(ctx.query);
  const groupSel = select(DIMENSIONS, state.group_by, { name: 'group_by' });
  const periodSel = select(PERIODS, state.period, { name: 'period' });
  const sinceIn = input({ type: 'date', name: 'since', value: /^\d{4}-\d{2}-\d{2}$/.test(state.since) ? state.since : '' });
  const untilIn = input({ type: 'date', name: 'until', value: state.until });
  const filterBySel = select([['', 'No filter'], ...DIMENSIONS], state.filter_by, { name: 'filter_by' });
  const filterIn = input({ name: 'filter', value: state.filter, autocomplete: 'off', placeholder: 'exact value, e.g. a key ID' });
  const splitSel = select([['', 'Not split'], ['model', 'Model'], ['team', 'Team'], ['key', 'Key'], ['provider', 'Provider']], state.split, { name: 'split' });
  const limitSel = select([['25', 'Top 25'], ['100', 'Top 100'], ['1000', 'Top 1,000']], state.limit, { name: 'limit' });
  const customBox = h('div', { class: 'field-group' }, field('From', sinceIn), field('To (inclusive)', untilIn));
  const splitField = field(`Split days by (top ${SPLIT_TOP})`, splitSel);
  const form = h('form', { class: 'filters', 'aria-label': 'Spend query' },
    field('Group by', groupSel),
    field('Period', periodSel),
    customBox,
    field('Filter by', filterBySel),
    field('Filter value', filterIn),
    splitField,
    field('Rows', limitSel),
    h('div', { class: 'filters-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply')));
  const sync = () => {
    customBox.hidden = periodSel.value !== 'custom';
    filterIn.disabled = !filterBySel.value;
    splitField.hidden = groupSel.value !== 'day';
    splitSel.disabled = !!filterBySel.value;
  };
  [periodSel, filterBySel, groupSel].forEach((el) => el.addEventListener('change', sync));
  sync();
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = {
      group_by: groupSel.value,
      period: periodSel.value,
      since: periodSel.value === 'custom' ? sinceIn.value : '',
      until: periodSel.value === 'custom' ? untilIn.value : '',
      filter_by: filterBySel.value,
      filter: filterBySel.value ? filterIn.value.trim() : '',
      split: groupSel.value === 'day' && !filterBySel.value ? splitSel.value : '',
      limit: limitSel.value,
    };
    if (p.filter_by && !p.filter) {
      showError('Enter the value to filter on, or choose No filter.');
      filterIn.focus();
      return;
    }
    ctx.go(p);
  });

  const exportBtn = button('Export CSV', () => exportCsv(state), {});
  const summary = h('div', { class: 'tiles tiles-small', 'aria-live': 'polite' });
  const chartBox = h('div');
  const tableBox = h('div', null, loading());
  add(root, 
    pageHeader('Spend', 'Cost and tokens from the spend ledger, by one dimension, over a date range (days are UTC).', exportBtn),
    h('section', { class: 'card', 'aria-label': 'Query' }, form),
    summary,
    h('section', { class: 'card', 'aria-label': 'Chart' }, chartBox),
    h('section', { class: 'card', 'aria-label': 'Results' }, tableBox));

  const range = apiRange(state);
  const base = {
    group_by: state.group_by, since: range.since, until: range.until,
    filter_by: state.filter_by || undefined, filter: state.filter_by ? state.filter : undefined,
  };
  try {
    const r = await get(`/admin/v1/spend${qs({ ...base, limit: state.limit })}`);
    if (!ctx.alive()) return;
    const rows = r.rows || [];
    fill(summary, 
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Total cost'), h('div', { class: 'tile-value', 'data-metric': 'spend-total' }, usd(r.total_cost_usd))),
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Requests'), h('div', { class: 'tile-value', 'data-metric': 'spend-requests' }, int(r.total_requests))),
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Groups'), h('div', { class: 'tile-value' }, int(rows.length))),
      h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, 'Range'), h('div', { class: 'tile-value tile-value-small' },
        `${r.since ? r.since.slice(0, 10) : range.first} → ${r.until ? r.until.slice(0, 10) : 'now'}`)));
    if (state.group_by === 'day' && state.split && !state.filter_by) {
      await renderSplit(chartBox, tableBox, state, range, base, rows);
      return;
    }
    const names = state.group_by === 'key' ? await keyNames(rows.slice(0, 50).map((x) => x.group).filter(Boolean)) : {};
    if (!ctx.alive()) return;
    renderChart(chartBox, state, range, rows, names);
    renderTable(tableBox, state, rows, r, names);
  } catch (e) {
    fill(tableBox, errorBox(e));
    clear(chartBox);
  }
}

function renderChart(box, state, range, rows, names) {
  clear(box);
  if (!rows.length) {
    add(box, emptyState('Nothing was spent in this range.'));
    return;
  }
  if (state.group_by === 'day') {
    const days = daysBetween(range.first, range.last);
    const by = Object.fromEntries(rows.map((x) => [x.group, x]));
    for (const d of Object.keys(by)) if (!days.includes(d)) days.push(d);
    days.sort();
    add(box, barChart({
      title: 'Cost per day', xLabel: 'Day', xs: days,
      summary: `Cost per day from ${days[0]} to ${days[days.length - 1]}.`,
      series: [{ name: 'Cost', values: days.map((d) => (by[d] ? by[d].cost_usd : 0)) }],
      yFormat: usd, xFormat: (d, long) => (long ? d : d.slice(5)),
    }));
    return;
  }
  add(box, rankBars({
    title: `Cost by ${dimLabel(state.group_by).toLowerCase()} (top ${Math.min(rows.length, 15)})`,
    items: rows.slice(0, 15).map((x) => ({ label: x.group || '(none)', node: groupCell(state.group_by, x.group, names), value: x.cost_usd })),
    yFormat: usd,
  }));
}

function renderTable(box, state, rows, r, names) {
  clear(box);
  if (!rows.length) {
    add(box, emptyState('No rows.'));
    return;
  }
  const sorted = state.group_by === 'day' ? [...rows].sort((a, b) => String(b.group).localeCompare(String(a.group))) : rows;
  const total = r.total_cost_usd || 0;
  add(box, table([
    { label: dimLabel(state.group_by), rowHeader: true, value: (x) => groupCell(state.group_by, x.group, names) },
    { label: 'Requests', num: true, value: (x) => int(x.requests) },
    { label: 'Prompt tokens', num: true, value: (x) => int(x.prompt_tokens) },
    { label: 'Completion tokens', num: true, value: (x) => int(x.completion_tokens) },
    { label: 'Cost', num: true, value: (x) => usd(x.cost_usd) },
    { label: 'Share', num: true, value: (x) => (total > 0 ? pct(x.cost_usd / total) : '–') },
  ], sorted, {
    caption: `Spend by ${dimLabel(state.group_by).toLowerCase()}`,
    foot: h('tr', null,
      h('th', { scope: 'row' }, 'Total'),
      h('td', { class: 'num' }, int(r.total_requests)),
      h('td', { class: 'num' }, int(rows.reduce((a, x) => a + (x.prompt_tokens || 0), 0))),
      h('td', { class: 'num' }, int(rows.reduce((a, x) => a + (x.completion_tokens || 0), 0))),
      h('td', { class: 'num' }, usd(total)),
      h('td', { class: 'num' }, total > 0 ? '100%' : '–')),
  }));
  if (rows.length >= Number(state.limit)) {
    add(box, h('p', { class: 'muted' }, `Showing the top ${int(state.limit)} groups by cost; choose more rows to see the rest, or export the CSV.`));
  }
}

/** Days × the top groups of another dimension: one spend query per group. */
async function renderSplit(chartBox, tableBox, state, range, base, dayRows) {
  const top = await get(`/admin/v1/spend${qs({ group_by: state.split, since: base.since, until: base.until, limit: SPLIT_TOP })}`);
  const groups = (top.rows || []).map((x) => x.group);
  const perGroup = await Promise.all(groups.map((g) => (g === null || g === undefined
    ? Promise.resolve({ rows: [] })
    : get(`/admin/v1/spend${qs({ group_by: 'day', since: base.since, until: base.until, filter_by: state.split, filter: g })}`))));
  const days = daysBetween(range.first, range.last);
  const totalBy = Object.fromEntries(dayRows.map((x) => [x.group, x.cost_usd]));
  for (const d of Object.keys(totalBy)) if (!days.includes(d)) days.push(d);
  days.sort();
  const series = groups.map((g, i) => {
    const by = Object.fromEntries((perGroup[i].rows || []).map((x) => [x.group, x.cost_usd]));
    return { name: g === null || g === undefined ? '(none)' : g, values: days.map((d) => by[d] || 0) };
  });
  const other = days.map((d, i) => Math.max(0, (totalBy[d] || 0) - series.reduce((a, sr) => a + sr.values[i], 0)));
  if (other.some((v) => v > 1e-12)) series.push({ name: 'Other', values: other });
  fill(chartBox, barChart({
    title: `Cost per day by ${dimLabel(state.split).toLowerCase()}`, xLabel: 'Day', xs: days,
    summary: `Cost per day, split by the top ${groups.length} ${dimLabel(state.split).toLowerCase()} groups.`,
    series, yFormat: usd, xFormat: (d, long) => (long ? d : d.slice(5)),
  }));
  const rows = [...days].reverse().filter((d) => totalBy[d]);
  clear(tableBox);
  if (!rows.length) {
    add(tableBox, emptyState('Nothing was spent in this range.'));
    return;
  }
  const idx = Object.fromEntries(days.map((d, i) => [d, i]));
  add(tableBox, table([
    { label: 'Day', rowHeader: true, value: (d) => d },
    ...series.map((sr) => ({ label: sr.name, num: true, value: (d) => usd(sr.values[idx[d]]) })),
    { label: 'Total', num: true, value: (d) => usd(totalBy[d] || 0) },
  ], rows, { caption: `Cost per day by ${dimLabel(state.split).toLowerCase()}` }));
}

async function exportCsv(state) {
  const range = apiRange(state);
  const p = {
    group_by: state.group_by, since: range.since, until: range.until,
    filter_by: state.filter_by || undefined, filter: state.filter_by ? state.filter : undefined,
    limit: 100000, format: 'csv',
  };
  const name = `tollgate-spend-by-${state.group_by}-${range.first || 'all'}${state.filter_by ? `-${state.filter_by}-${state.filter.replace(/[^A-Za-z0-9._-]/g, '_')}` : ''}.csv`;
  try {
    await download(`/admin/v1/spend${qs(p)}`, name);
    announce(`Exported ${name}.`);
  } catch (e) {
    showError(e);
  }
}

