// Charts as inline SVG built with DOM calls (the CSP allows no inline script or style, and no
// library is loaded). Each chart is an <svg role="img"> with a text summary as its name, native
// tooltips (<title>) on the marks, a legend in HTML, and its data as a table under a disclosure
// for screen readers and for copying. Colours come from app.css (classes s0..s5). The SVG is
// drawn at its container's width in pixels (redrawn when that changes), so text keeps one
// size whatever the layout.

import { h, table } from './ui.js';

const NS = 'http://www.w3.org/2000/svg';
const DEFAULT_W = 640;
const PAD = { top: 12, right: 12, bottom: 26, left: 68 };

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

/**
 * The axis top and tick step: a round step (1, 2, 2.5 or 5 times a power of ten; whole
 * numbers for counts) with four ticks or fewer.
 */
function axis(max, integer) {
  const ticks = 4;
  if (!(max > 0)) return { top: integer ? ticks : 1, step: integer ? 1 : 0.25 };
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  let step = 10 * p;
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (raw <= m * p) { step = m * p; break; }
  }
  if (integer) step = Math.max(1, Math.ceil(step));
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

function frame(width, height, ax, yFormat) {
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart-svg', focusable: 'false' });
  const plotH = height - PAD.top - PAD.bottom;
  const grid = s('g', { class: 'grid' });
  for (let v = 0; v <= ax.top + 1e-9; v += ax.step) {
    const y = PAD.top + plotH - (plotH * v) / ax.top;
    grid.append(s('line', { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: v === 0 ? 'axis' : 'gridline' }));
    grid.append(s('text', { x: PAD.left - 6, y: y + 4, class: 'tick', 'text-anchor': 'end' }, yFormat(v)));
  }
  svg.append(grid);
  return { svg, plotH, plotW: width - PAD.left - PAD.right };
}

function xLabels(svg, xs, xFormat, height, slotW) {
  const g = s('g', { class: 'xlabels' });
  const n = xs.length;
  // About one label per 70 px.
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor((slotW * n) / 70))));
  for (let i = 0; i < n; i += every) {
    const x = PAD.left + slotW / 2 + i * slotW;
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
      { caption: `${caption}: data` }));
}

function drawBars(opts, width) {
  const { xs, series } = opts;
  const height = opts.height || 220;
  const yFormat = opts.yFormat || String;
  const xFormat = opts.xFormat || String;
  const totals = xs.map((_, i) => series.reduce((a, sr) => a + (Number(sr.values[i]) || 0), 0));
  const ax = axis(Math.max(0, ...totals), opts.integer);
  const { svg, plotH, plotW } = frame(width, height, ax, yFormat);
  const slotW = plotW / Math.max(1, xs.length);
  const barW = Math.max(1, Math.min(48, slotW * 0.72));
  const bars = s('g', { class: 'bars' });
  xs.forEach((x, i) => {
    let base = 0;
    const tip = [xFormat(x, true), ...series.map((sr) => `${series.length > 1 ? `${sr.name}: ` : ''}${yFormat(Number(sr.values[i]) || 0)}`)].join('\n');
    const g = s('g', null, s('title', null, tip));
    // A transparent hit area first, so the tooltip shows over empty buckets too.
    g.append(s('rect', { x: PAD.left + i * slotW, y: PAD.top, width: slotW, height: plotH, class: 'hit' }));
    series.forEach((sr, k) => {
      const v = Number(sr.values[i]) || 0;
      if (v <= 0) return;
      const y0 = PAD.top + plotH - (plotH * base) / ax.top;
      const hgt = (plotH * v) / ax.top;
      base += v;
      g.append(s('rect', {
        x: PAD.left + i * slotW + (slotW - barW) / 2,
        y: y0 - hgt,
        width: barW,
        height: Math.max(hgt, 1),
        class: `bar s${k % 6}`,
      }));
    });
    bars.append(g);
  });
  svg.append(bars);
  xLabels(svg, xs, (x) => xFormat(x, false), height, slotW);
  return svg;
}

function drawLines(opts, width) {
  const { xs, series } = opts;
  const height = opts.height || 220;
  const yFormat = opts.yFormat || String;
  const xFormat = opts.xFormat || String;
  const all = series.flatMap((sr) => sr.values.filter((v) => v !== null && v !== undefined).map(Number));
  const ax = axis(Math.max(0, ...all), opts.integer);
  const { svg, plotH, plotW } = frame(width, height, ax, yFormat);
  const slotW = plotW / Math.max(1, xs.length);
  const px = (i) => PAD.left + slotW / 2 + i * slotW;
  const py = (v) => PAD.top + plotH - (plotH * v) / ax.top;
  const hits = s('g');
  xs.forEach((x, i) => {
    const tip = [xFormat(x, true), ...series.map((sr) => `${sr.name}: ${sr.values[i] === null || sr.values[i] === undefined ? '–' : yFormat(sr.values[i])}`)].join('\n');
    hits.append(s('g', null, s('title', null, tip), s('rect', { x: PAD.left + i * slotW, y: PAD.top, width: slotW, height: plotH, class: 'hit' })));
  });
  svg.append(hits);
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
      svg.append(s('circle', { cx: px(i), cy: py(Number(v)), r: 3, class: `dot s${k % 6}` }));
    });
  });
  xLabels(svg, xs, (x) => xFormat(x, false), height, slotW);
  return svg;
}

/** A figure whose SVG is drawn at the figure's own width, and redrawn when it changes. */
function responsive(opts, draw) {
  const label = opts.summary || opts.title;
  const holder = h('div', { class: 'chart-holder', role: 'img', 'aria-label': label });
  let drawn = 0;
  const paint = (width) => {
    const w = Math.max(240, Math.round(width));
    if (Math.abs(w - drawn) < 2) return;
    drawn = w;
    const svg = draw(opts, w);
    svg.setAttribute('aria-hidden', 'true');
    holder.replaceChildren(svg);
  };
  paint(DEFAULT_W);
  if (typeof ResizeObserver === 'function') {
    const ro = new ResizeObserver((entries) => {
      for (const e of entries) {
        if (!holder.isConnected) { ro.disconnect(); return; }
        if (e.contentRect.width > 0) paint(e.contentRect.width);
      }
    });
    ro.observe(holder);
  }
  return h('figure', { class: 'chart' },
    h('figcaption', { class: 'chart-title' }, opts.title),
    legend(opts.series.map((sr) => sr.name)),
    holder,
    dataTable(opts.title, opts.xLabel || 'Time', opts.xs, (x) => (opts.xFormat || String)(x, true), opts.series, opts.yFormat || String));
}

/**
 * Vertical bars over time, stacked when there are several series.
 * opts: {title, xs: [Date|string], series: [{name, values: [number]}], yFormat, xFormat,
 * integer (whole-number ticks), height, summary, xLabel}
 */
export function barChart(opts) {
  return responsive(opts, drawBars);
}

/** Lines over time (gaps where a value is null). Same options as barChart. */
export function lineChart(opts) {
  return responsive(opts, drawLines);
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
