// Charts as inline SVG built with DOM calls (the CSP allows no inline script or style, and no
// library is loaded). Each chart is an <svg role="img"> with a text summary as its name, native
// tooltips (<title>) on the marks, a legend in HTML, and its data as a table under a disclosure
// for screen readers and for copying. Colours come from app.css (classes s0..s5).

import { h, table } from './ui.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 720;
const PAD = { top: 12, right: 12, bottom: 26, left: 64 };

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    el.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A round upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (v <= m * p) return m * p;
  }
  return 10 * p;
}

function frame(height, max, yFormat) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${height}`, class: 'chart-svg', focusable: 'false' });
  const plotH = height - PAD.top - PAD.bottom;
  const grid = s('g', { class: 'grid' });
  const ticks = 4;
  for (let i = 0; i <= ticks; i += 1) {
    const v = (max / ticks) * i;
    const y = PAD.top + plotH - (plotH * i) / ticks;
    grid.append(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: i === 0 ? 'axis' : 'gridline' }));
    grid.append(s('text', { x: PAD.left - 6, y: y + 4, class: 'tick', 'text-anchor': 'end' }, yFormat(v)));
  }
  svg.append(grid);
  return { svg, plotH };
}

function xLabels(svg, xs, xFormat, height, slotW, offset) {
  const g = s('g', { class: 'xlabels' });
  const n = xs.length;
  const every = Math.max(1, Math.ceil(n / 7));
  for (let i = 0; i < n; i += every) {
    const x = PAD.left + offset + i * slotW;
    g.append(s('text', { x, y: height - 8, class: 'tick', 'text-anchor': 'middle' }, xFormat(xs[i])));
  }
  svg.append(g);
}

function legend(names) {
  if (names.length < 2) return null;
  return h('ul', { class: 'legend' },
    names.map((n, i) => h('li', null, h('span', { class: `swatch s${i % 6}`, 'aria-hidden': 'true' }), n)));
}

function dataTable(caption, xLabel, xs, xFormat, seriesList, yFormat) {
  return h('details', { class: 'chart-data' },
    h('summary', null, 'Show data'),
    table(
      [{ label: xLabel, value: (r) => xFormat(r.x), rowHeader: true },
        ...seriesList.map((sr) => ({ label: sr.name, num: true, value: (r) => (r.vals[sr.name] === null || r.vals[sr.name] === undefined ? '–' : yFormat(r.vals[sr.name])) }))],
      xs.map((x, i) => ({ x, vals: Object.fromEntries(seriesList.map((sr) => [sr.name, sr.values[i]])) })),
      { caption }));
}

/**
 * Vertical bars over time, stacked when there are several series.
 * opts: {title, xs: [Date|string], series: [{name, values: [number]}], yFormat, xFormat,
 * height, summary}
 */
export function barChart(opts) {
  const { xs, series } = opts;
  const height = opts.height || 220;
  const yFormat = opts.yFormat || String;
  const xFormat = opts.xFormat || String;
  const totals = xs.map((_, i) => series.reduce((a, sr) => a + (Number(sr.values[i]) || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const { svg, plotH } = frame(height, max, yFormat);
  const plotW = W - PAD.left - PAD.right;
  const slotW = plotW / Math.max(1, xs.length);
  const barW = Math.max(1, slotW * 0.72);
  const bars = s('g', { class: 'bars' });
  xs.forEach((x, i) => {
    let base = 0;
    const tip = [xFormat(x, true), ...series.map((sr) => `${series.length > 1 ? `${sr.name}: ` : ''}${yFormat(Number(sr.values[i]) || 0)}`)].join('\n');
    const g = s('g', null, s('title', null, tip));
    series.forEach((sr, k) => {
      const v = Number(sr.values[i]) || 0;
      if (v <= 0) return;
      const y0 = PAD.top + plotH - (plotH * base) / max;
      const hgt = (plotH * v) / max;
      base += v;
      g.append(s('rect', {
        x: PAD.left + i * slotW + (slotW - barW) / 2,
        y: y0 - hgt,
        width: barW,
        height: Math.max(hgt, 0.5),
        class: `bar s${k % 6}`,
      }));
    });
    // A transparent hit area so the tooltip shows over empty buckets too.
    g.append(s('rect', { x: PAD.left + i * slotW, y: PAD.top, width: slotW, height: plotH, class: 'hit' }));
    bars.append(g);
  });
  svg.append(bars);
  xLabels(svg, xs, (x) => xFormat(x, false), height, slotW, slotW / 2);
  return wrap(svg, opts, series, xs, xFormat, yFormat);
}

/**
 * Lines over time (gaps where a value is null).
 * opts: {title, xs, series: [{name, values}], yFormat, xFormat, height, summary}
 */
export function lineChart(opts) {
  const { xs, series } = opts;
  const height = opts.height || 220;
  const yFormat = opts.yFormat || String;
  const xFormat = opts.xFormat || String;
  const all = series.flatMap((sr) => sr.values.filter((v) => v !== null && v !== undefined).map(Number));
  const max = niceMax(Math.max(0, ...all));
  const { svg, plotH } = frame(height, max, yFormat);
  const plotW = W - PAD.left - PAD.right;
  const slotW = plotW / Math.max(1, xs.length);
  const px = (i) => PAD.left + slotW / 2 + i * slotW;
  const py = (v) => PAD.top + plotH - (plotH * v) / max;
  series.forEach((sr, k) => {
    let d = '';
    let pen = false;
    sr.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${px(i).toFixed(1)},${py(Number(v)).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(s('path', { d, class: `line s${k % 6}` }));
    sr.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      svg.append(s('circle', { cx: px(i), cy: py(Number(v)), r: 2.5, class: `dot s${k % 6}` }));
    });
  });
  const hits = s('g');
  xs.forEach((x, i) => {
    const tip = [xFormat(x, true), ...series.map((sr) => `${sr.name}: ${sr.values[i] === null || sr.values[i] === undefined ? '–' : yFormat(sr.values[i])}`)].join('\n');
    hits.append(s('rect', { x: PAD.left + i * slotW, y: PAD.top, width: slotW, height: plotH, class: 'hit' }, s('title', null, tip)));
  });
  svg.append(hits);
  xLabels(svg, xs, (x) => xFormat(x, false), height, slotW, slotW / 2);
  return wrap(svg, opts, series, xs, xFormat, yFormat);
}

function wrap(svg, opts, series, xs, xFormat, yFormat) {
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', opts.summary || opts.title);
  return h('figure', { class: 'chart' },
    h('figcaption', { class: 'chart-title' }, opts.title),
    legend(series.map((sr) => sr.name)),
    svg,
    dataTable(opts.title, opts.xLabel || 'Time', xs, (x) => xFormat(x, true), series, yFormat));
}

/**
 * Horizontal bars for ranked groups. items: [{label, value, node?}], yFormat.
 * Drawn in HTML (a bar per row sized through CSSOM), which keeps long labels readable.
 */
export function rankBars(opts) {
  const max = Math.max(0, ...opts.items.map((i) => Number(i.value) || 0)) || 1;
  const list = h('ol', { class: 'rank' });
  for (const it of opts.items) {
    const bar = h('span', { class: 'rank-bar', 'aria-hidden': 'true' });
    bar.style.width = `${Math.max(0.5, (100 * (Number(it.value) || 0)) / max)}%`;
    list.append(h('li', null,
      h('span', { class: 'rank-label' }, it.node || it.label),
      h('span', { class: 'rank-track' }, bar),
      h('span', { class: 'rank-value' }, opts.yFormat(it.value))));
  }
  return h('figure', { class: 'chart' }, h('figcaption', { class: 'chart-title' }, opts.title), list);
}
