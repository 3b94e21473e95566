// DOM helpers, number and time formats, notices, tables, dialogs and pagers shared by every
// page. Text always goes in through textContent or attributes: no HTML string is ever parsed, so
// nothing the gateway stores (key names, tool arguments, audit details) can inject markup.

/** Creates an element: h('a', {href, class, onclick}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'text') {
      el.textContent = v;
    } else if (k === 'value' && 'value' in el) {
      el.value = v;
    } else if (k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden' || k === 'required' || k === 'readOnly') {
      el[k] = !!v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Appends children, skipping null, undefined and false (native append would print them). */
export function add(el, ...children) {
  return append(el, children);
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  return append(clear(el), children);
}

let uid = 0;
/** A fresh id for label/control pairs. */
export function nextId(prefix = 'f') {
  uid += 1;
  return `${prefix}-${uid}`;
}

// ---- Formats ---------------------------------------------------------------------------

const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const dec1 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
const dec2 = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });

export function int(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '–';
  return intFmt.format(Number(n));
}

/** A rate or a small quantity: 1 decimal, or 3 significant digits below 1. */
export function num(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '–';
  const v = Number(n);
  if (v !== 0 && Math.abs(v) < 1) return String(Number(v.toPrecision(3)));
  return dec1.format(v);
}

/**
 * US dollars: cents from $1 up, up to 4 decimals from 1 cent, up to 6 below (the cost of one
 * small request), `<$0.000001` for anything smaller but not zero.
 */
export function usd(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '–';
  const v = Number(n);
  const sign = v < 0 ? '-' : '';
  const a = Math.abs(v);
  if (a === 0) return '$0.00';
  if (a < 0.000001) return `${sign}<$0.000001`;
  let digits = 2;
  if (a < 0.01) digits = 6;
  else if (a < 1) digits = 4;
  const s = new Intl.NumberFormat('en-US', {
    minimumFractionDigits: 2,
    maximumFractionDigits: digits,
  }).format(a);
  return `${sign}$${s}`;
}

/** A rate given per second, in the unit that reads best: per second, minute or hour. */
export function rate(perSecond) {
  const v = Number(perSecond);
  if (!Number.isFinite(v) || v === 0) return '0 per second';
  if (v >= 0.1) return `${num(v)} per second`;
  if (v * 60 >= 0.1) return `${num(v * 60)} per minute`;
  return `${num(v * 3600)} per hour`;
}

/** "1 error", "2 errors" */
export function plural(n, one, many) {
  return `${int(n)} ${Number(n) === 1 ? one : (many || `${one}s`)}`;
}

export function pct(r) {
  if (r === null || r === undefined || Number.isNaN(Number(r))) return '–';
  const v = Number(r) * 100;
  if (v === 0) return '0%';
  if (v < 0.1) return '<0.1%';
  return `${dec1.format(v)}%`;
}

export function ms(v) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return '–';
  const x = Number(v);
  if (x >= 10000) return `${dec1.format(x / 1000)} s`;
  if (x >= 1000) return `${dec2.format(x / 1000)} s`;
  if (x >= 10) return `${intFmt.format(x)} ms`;
  return `${dec1.format(x)} ms`;
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** A time as `YYYY-MM-DD HH:MM:SS` UTC, from RFC 3339 text, unix ms or a Date. */
export function time(t) {
  const d = toDate(t);
  if (!d) return '–';
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

export function shortTime(t, withDate) {
  const d = toDate(t);
  if (!d) return '–';
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return withDate ? `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hm}` : hm;
}

export function isoDate(d) {
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

export function toDate(t) {
  if (t === null || t === undefined || t === '') return null;
  const d = t instanceof Date ? t : new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A `<time>` element showing UTC, with the machine-readable value. */
export function timeEl(t) {
  const d = toDate(t);
  if (!d) return h('span', { class: 'muted' }, '–');
  return h('time', { datetime: d.toISOString(), title: `${d.toISOString()}` }, time(d));
}

/** "3 min ago", "in 2 h" */
export function relative(t) {
  const d = toDate(t);
  if (!d) return '–';
  const s = Math.round((d.getTime() - Date.now()) / 1000);
  const a = Math.abs(s);
  let txt;
  if (a < 60) txt = `${a} s`;
  else if (a < 3600) txt = `${Math.round(a / 60)} min`;
  else if (a < 86400) txt = `${Math.round(a / 3600)} h`;
  else txt = `${Math.round(a / 86400)} d`;
  return s < 0 ? `${txt} ago` : `in ${txt}`;
}

export function shortHash(s, n = 12) {
  if (!s) return '–';
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

// ---- Notices ---------------------------------------------------------------------------

let statusTimer = 0;

/** Announces a status in the polite live region (and shows it for a few seconds). */
export function announce(text) {
  const el = document.getElementById('status');
  if (!el) return;
  el.textContent = text;
  el.classList.add('shown');
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => {
    el.classList.remove('shown');
    el.textContent = '';
  }, 6000);
}

/** Shows an error in the assertive live region until dismissed or the page changes. */
export function showError(err) {
  const el = document.getElementById('alert');
  if (!el) return;
  clear(el);
  const msg = err instanceof Error ? err.message : String(err);
  el.append(
    h('span', null, msg),
    h('button', { type: 'button', class: 'btn btn-quiet btn-small', onclick: clearError, 'aria-label': 'Dismiss error' }, 'Dismiss'),
  );
  el.classList.add('shown');
}

export function clearError() {
  const el = document.getElementById('alert');
  if (!el) return;
  clear(el);
  el.classList.remove('shown');
}

// ---- Building blocks -------------------------------------------------------------------

export function pageHeader(title, subtitle, ...actions) {
  return h('div', { class: 'page-header' },
    h('div', null,
      h('h1', null, title),
      subtitle ? h('p', { class: 'subtitle' }, subtitle) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}

export function section(title, ...children) {
  const id = nextId('sec');
  return h('section', { class: 'card', 'aria-labelledby': id },
    h('h2', { id }, title),
    children);
}

export function button(label, onclick, opts = {}) {
  return h('button', {
    type: opts.type || 'button',
    class: ['btn', opts.kind ? `btn-${opts.kind}` : null, opts.small ? 'btn-small' : null],
    onclick,
    disabled: opts.disabled,
    'aria-label': opts.ariaLabel,
    title: opts.title,
  }, label);
}

export function link(href, text, attrs = {}) {
  return h('a', { href, 'data-nav': true, ...attrs }, text);
}

export function badge(text, tone) {
  return h('span', { class: ['badge', tone ? `badge-${tone}` : null] }, text);
}

const TONES = {
  active: 'ok', healthy: 'ok', intact: 'ok', allow: 'ok', success: 'ok', ok: 'ok', approved: 'ok', completed: 'ok', pinned: 'ok', used: 'neutral',
  disabled: 'neutral', expired: 'warn', pending: 'warn', half_open: 'warn', probing: 'warn', throttled: 'warn', at_capacity: 'warn', require_approval: 'warn', drifted: 'warn', warn: 'warn', hide: 'warn', block: 'bad',
  revoked: 'bad', cooldown: 'bad', provider_down: 'bad', broken: 'bad', deny: 'bad', denied: 'bad', error: 'bad', failure: 'bad', quota: 'bad', drift_block: 'bad', failed: 'bad', stream_failed: 'bad', cancelled: 'warn',
};

export function statusBadge(s) {
  if (s === null || s === undefined || s === '') return h('span', { class: 'muted' }, '–');
  // A2A 1.0 task states come as TASK_STATE_COMPLETED; 0.3 ones as completed.
  const key = String(s).replace(/^TASK_STATE_/, '').toLowerCase();
  return badge(key.replace(/_/g, ' '), TONES[key] || 'neutral');
}

/** A labelled form control. `control` gets an id; returns the wrapping field. */
export function field(label, control, hint) {
  const id = control.id || nextId('f');
  control.id = id;
  let hintEl = null;
  if (hint) {
    const hid = `${id}-hint`;
    hintEl = h('p', { class: 'hint', id: hid }, hint);
    control.setAttribute('aria-describedby', hid);
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hintEl);
}

export function input(attrs = {}) {
  return h('input', { type: 'text', ...attrs });
}

export function select(options, value, attrs = {}) {
  const el = h('select', attrs);
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    el.append(h('option', { value: v, selected: String(v) === String(value ?? '') }, label));
  }
  return el;
}

export function checkbox(label, checked, attrs = {}) {
  const id = attrs.id || nextId('c');
  const box = h('input', { type: 'checkbox', id, checked, ...attrs });
  return { box, el: h('div', { class: 'field field-check' }, box, h('label', { for: id }, label)) };
}

export function emptyState(text) {
  return h('p', { class: 'empty' }, text);
}

export function loading(text = 'Loading…') {
  return h('p', { class: 'loading' }, text);
}

export function errorBox(err) {
  const msg = err instanceof Error ? err.message : String(err);
  return h('p', { class: 'inline-error' }, msg);
}

/**
 * A data table. columns: [{label, value: row => node|string, num: bool, rowHeader: bool,
 * class}]. Each header cell gets scope="col"; the rowHeader column's cells are
 * <th scope="row">.
 */
export function table(columns, rows, opts = {}) {
  const t = h('table', { class: ['data', opts.class] });
  if (opts.caption) {
    t.append(h('caption', { class: opts.captionVisible ? null : 'visually-hidden' }, opts.caption));
  }
  const head = h('tr');
  for (const c of columns) {
    head.append(h('th', { scope: 'col', class: [c.num ? 'num' : null, c.class] },
      c.hidden ? h('span', { class: 'visually-hidden' }, c.label) : c.label));
  }
  t.append(h('thead', null, head));
  const body = h('tbody');
  for (const r of rows) {
    const tr = h('tr', opts.rowClass ? { class: opts.rowClass(r) } : null);
    for (const c of columns) {
      const v = c.value(r);
      const cell = h(c.rowHeader ? 'th' : 'td', {
        scope: c.rowHeader ? 'row' : undefined,
        class: [c.num ? 'num' : null, c.class],
      });
      append(cell, [v === undefined || v === null || v === '' ? h('span', { class: 'muted' }, '–') : v]);
      tr.append(cell);
    }
    body.append(tr);
    if (opts.after) {
      const extra = opts.after(r, columns.length);
      if (extra) body.append(extra);
    }
  }
  t.append(body);
  if (opts.foot) t.append(h('tfoot', null, opts.foot));
  return h('div', { class: 'table-wrap' }, t);
}

export function tile(label, value, sub, tone) {
  return h('div', { class: ['tile', tone ? `tile-${tone}` : null] },
    h('div', { class: 'tile-label' }, label),
    h('div', { class: 'tile-value' }, value),
    sub ? h('div', { class: 'tile-sub' }, sub) : null);
}

export function dl(pairs) {
  const el = h('dl', { class: 'props' });
  for (const [k, v] of pairs) {
    el.append(h('dt', null, k));
    const dd = h('dd');
    append(dd, [v === undefined || v === null || v === '' ? h('span', { class: 'muted' }, '–') : v]);
    el.append(dd);
  }
  return el;
}

export function jsonBlock(v, label) {
  return h('pre', { class: 'json', tabindex: '0', 'aria-label': label || 'JSON' }, JSON.stringify(v, null, 2));
}

/** A disclosure with raw JSON. */
export function rawJson(summary, v) {
  return h('details', { class: 'raw' }, h('summary', null, summary), jsonBlock(v, summary));
}

// ---- Dialogs ---------------------------------------------------------------------------

/**
 * A modal dialog (native <dialog>: focus moves in, Escape closes, the page behind is inert).
 * build(d) fills d.body and d.actions; returns {el, close}. Focus returns to the opener.
 */
export function openDialog(title, build, opts = {}) {
  const opener = document.activeElement;
  const titleId = nextId('dlg');
  const body = h('div', { class: 'dialog-body' });
  const actions = h('div', { class: 'dialog-actions' });
  const closeBtn = h('button', { type: 'button', class: 'btn btn-quiet dialog-x', 'aria-label': 'Close dialog' }, '×');
  const dlg = h('dialog', { class: ['dialog', opts.wide ? 'dialog-wide' : null], 'aria-labelledby': titleId },
    h('div', { class: 'dialog-head' }, h('h2', { id: titleId }, title), closeBtn),
    body, actions);
  const d = {
    el: dlg, body, actions, closed: false,
    close() {
      if (d.closed) return;
      d.closed = true;
      if (dlg.open) dlg.close();
      dlg.remove();
      if (opts.onClose) opts.onClose();
      if (opener && typeof opener.focus === 'function' && document.contains(opener)) opener.focus();
    },
    setTitle(t) { dlg.querySelector('h2').textContent = t; },
  };
  closeBtn.addEventListener('click', () => d.close());
  dlg.addEventListener('close', () => d.close());
  dlg.addEventListener('cancel', (e) => {
    if (opts.noEscape) e.preventDefault();
  });
  build(d);
  document.body.append(dlg);
  dlg.showModal();
  const first = dlg.querySelector('[autofocus]') || body.querySelector('input, select, textarea, button') || actions.querySelector('button');
  if (first) first.focus();
  return d;
}

/** Asks to confirm; resolves true or false. */
export function confirmDialog(title, message, confirmLabel = 'Confirm', danger = false) {
  return new Promise((resolve) => {
    let answered = false;
    openDialog(title, (d) => {
      d.body.append(h('p', null, message));
      const no = button('Cancel', () => d.close());
      const yes = button(confirmLabel, () => { answered = true; d.close(); }, { kind: danger ? 'danger' : 'primary' });
      yes.setAttribute('autofocus', '');
      d.actions.append(no, yes);
    }, { onClose: () => resolve(answered) });
  });
}

/**
 * A form inside a dialog. fields: nodes; onSubmit(form) may throw (shown inside the dialog,
 * which stays open). Returns the dialog.
 */
export function formDialog(title, fields, submitLabel, onSubmit, opts = {}) {
  return openDialog(title, (d) => {
    const err = h('p', { class: 'inline-error', role: 'alert', hidden: true });
    const submit = h('button', { type: 'submit', class: ['btn', opts.danger ? 'btn-danger' : 'btn-primary'] }, submitLabel);
    const form = h('form', { class: 'form', novalidate: false },
      fields, err,
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'),
        submit));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      err.hidden = true;
      submit.disabled = true;
      try {
        await onSubmit(form, d);
      } catch (ex) {
        err.textContent = ex instanceof Error ? ex.message : String(ex);
        err.hidden = false;
      } finally {
        submit.disabled = false;
      }
    });
    d.body.append(form);
  }, opts);
}

/**
 * Shows a secret exactly once, with a copy button. The dialog cannot be dismissed with
 * Escape by accident before the operator has had the chance to copy it: Escape still closes
 * it (keyboard users must be able to leave), but the text says the secret is gone after that.
 */
export function secretDialog(title, secret, note) {
  return openDialog(title, (d) => {
    const box = h('input', { type: 'text', id: 'new-secret', readOnly: true, value: secret, class: 'mono secret-input', spellcheck: 'false', autocomplete: 'off' });
    const copied = h('span', { class: 'copy-state', role: 'status', 'aria-live': 'polite' });
    const copy = button('Copy', async () => {
      const ok = await copyText(secret, box);
      copied.textContent = ok ? 'Copied to the clipboard.' : 'Copy failed: select the text and copy it.';
    }, { kind: 'primary' });
    copy.setAttribute('autofocus', '');
    d.body.append(
      h('p', { class: 'secret-warning' }, note || 'Copy this secret now. It is shown only once: tollgate keeps only its hash.'),
      h('div', { class: 'field' }, h('label', { for: box.id }, 'Secret key'), h('div', { class: 'secret-row' }, box, copy)),
      copied);
    d.actions.append(button('Done', () => d.close()));
    box.addEventListener('focus', () => box.select());
  }, { wide: true });
}

export async function copyText(text, fallbackInput) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* fall through */ }
  try {
    if (fallbackInput) {
      fallbackInput.focus();
      fallbackInput.select();
      return document.execCommand('copy');
    }
  } catch { /* give up */ }
  return false;
}

// ---- Pagination ------------------------------------------------------------------------

/**
 * A "Load more" pager over a keyset-paginated endpoint. fetchPage(cursor) resolves
 * {items, next}; render(items) appends rows. Returns the element holding the button.
 */
export function loadMore(fetchPage, onItems, label = 'Load more') {
  let cursor = null;
  const info = h('span', { class: 'muted pager-info', role: 'status', 'aria-live': 'polite' });
  const btn = button(label, () => next(), {});
  const el = h('div', { class: 'pager' }, btn, info);
  let total = 0;
  async function next() {
    btn.disabled = true;
    info.textContent = 'Loading…';
    try {
      const { items, next: n } = await fetchPage(cursor);
      cursor = n;
      total += items.length;
      onItems(items);
      info.textContent = n ? '' : (total ? 'End of the list.' : '');
      btn.hidden = !n;
    } catch (e) {
      info.textContent = '';
      showError(e);
    } finally {
      btn.disabled = false;
    }
  }
  return { el, next };
}

/** Query string helpers. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === 'checkbox') out[el.name] = el.checked;
    else out[el.name] = el.value.trim();
  }
  return out;
}

export function splitList(s) {
  return (s || '').split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}
