// The console's entry point: decides between the sign-in form and the app (GET
// /ui/api/session), routes /ui/<page> addresses with the history API, and owns the shell
// (navigation, session, notices). Each page lives in a page-*.js module exporting
// render(root, ctx).

import { currentSession, login, logout, setSession, whenUnauthorized } from './api.js';
import { h, clear, clearError, showError, announce, field } from './ui.js';
import * as overview from './page-overview.js';
import * as keys from './page-keys.js';
import * as directory from './page-directory.js';
import * as spend from './page-spend.js';
import * as models from './page-models.js';
import * as mcp from './page-mcp.js';
import * as agents from './page-agents.js';
import * as audit from './page-audit.js';
import * as conversations from './page-conversations.js';

const BASE = '/ui';

/** [section, pattern, render]. Patterns match the path after /ui. */
const ROUTES = [
  ['overview', /^\/overview$/, overview.render],
  ['keys', /^\/keys$/, keys.renderList],
  ['keys', /^\/keys\/([^/]+)$/, keys.renderDetail],
  ['teams', /^\/teams$/, directory.renderTeams],
  ['users', /^\/users$/, directory.renderUsers],
  ['spend', /^\/spend$/, spend.render],
  ['models', /^\/models$/, models.render],
  ['mcp', /^\/mcp$/, mcp.render],
  ['agents', /^\/agents$/, agents.renderList],
  ['agents', /^\/agents\/([^/]+)$/, agents.renderDetail],
  ['audit', /^\/audit$/, audit.render],
  ['conversations', /^\/conversations$/, conversations.renderList],
  ['conversations', /^\/conversations\/([^/]+)$/, conversations.renderDetail],
];

let session = null;
let leaving = [];
let navSeq = 0;

function $(id) {
  return document.getElementById(id);
}

/** Goes to a console address (`/ui/...`), adding a history entry unless `replace`. */
export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route(true);
}

function runLeaving() {
  for (const fn of leaving) {
    try { fn(); } catch { /* ignore */ }
  }
  leaving = [];
}

async function route(userInitiated) {
  runLeaving();
  clearError();
  const seq = ++navSeq;
  const view = $('view');
  if (!session) {
    renderSignIn(view);
    return;
  }
  let path = location.pathname.replace(/\/+$/, '');
  if (!path.startsWith(BASE)) path = BASE;
  let sub = path.slice(BASE.length);
  if (sub === '' || sub === '/') {
    history.replaceState(null, '', `${BASE}/overview${location.search}`);
    sub = '/overview';
  }
  let found = null;
  for (const [sectionName, re, render] of ROUTES) {
    const m = sub.match(re);
    if (m) {
      found = { sectionName, render, params: m.slice(1).map(decodeURIComponent) };
      break;
    }
  }
  for (const a of document.querySelectorAll('#sidenav a')) {
    if (found && a.dataset.section === found.sectionName) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = h('div', { class: 'page' });
  clear(view).append(root);
  const ctx = {
    params: found ? found.params : [],
    query: new URLSearchParams(location.search),
    session,
    navigate,
    onLeave: (fn) => leaving.push(fn),
    alive: () => seq === navSeq,
    /** Replaces the query string without a new history entry or a re-render. */
    setQuery(params) {
      const u = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
      const q = u.toString();
      history.replaceState(null, '', `${location.pathname}${q ? `?${q}` : ''}`);
      ctx.query = u;
    },
    /** Pushes a new query string and renders the page again. */
    go(params) {
      const u = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
      const q = u.toString();
      navigate(`${location.pathname}${q ? `?${q}` : ''}`);
    },
  };
  if (!found) {
    root.append(h('h1', { tabindex: '-1' }, 'Page not found'),
      h('p', null, 'There is no console page at this address. ', h('a', { href: `${BASE}/overview`, 'data-nav': true }, 'Go to the overview'), '.'));
    finish(root, userInitiated);
    return;
  }
  try {
    const done = found.render(root, ctx);
    // Headings exist once the page's skeleton is built (synchronously); data fills in later.
    finish(root, userInitiated);
    await done;
  } catch (e) {
    if (e && e.status === 401) return;
    if (seq === navSeq) showError(e);
  }
}

function finish(root, userInitiated) {
  const h1 = root.querySelector('h1');
  if (h1) {
    document.title = `${h1.textContent} · tollgate console`;
    if (userInitiated) {
      h1.setAttribute('tabindex', '-1');
      h1.focus({ preventScroll: false });
    }
  }
}

// ---- Session and sign-in -----------------------------------------------------------------

function showShell(on) {
  $('sidenav').hidden = !on;
  $('session').hidden = !on;
  document.body.classList.toggle('signed-out', !on);
  if (on && session) {
    $('session-who').textContent = `Signed in as ${session.principal}`;
  }
}

function renderSignIn(view) {
  showShell(false);
  document.title = 'Sign in · tollgate console';
  const keyInput = h('input', {
    type: 'password', name: 'key', id: 'signin-key', autocomplete: 'current-password',
    required: true, spellcheck: 'false', class: 'mono',
  });
  const err = h('p', { class: 'inline-error', id: 'signin-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-wide' }, 'Sign in');
  const form = h('form', { class: 'form signin-form', 'aria-describedby': 'signin-help' },
    field('Master key or admin API key', keyInput),
    err,
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    const key = keyInput.value.trim();
    if (!key) {
      err.textContent = 'Enter the master key, or the API key of a principal with the admin role.';
      err.hidden = false;
      keyInput.focus();
      return;
    }
    submit.disabled = true;
    try {
      const s = await login(key);
      keyInput.value = '';
      startSession(s);
      announce(`Signed in as ${s.principal}.`);
      route(true);
    } catch (ex) {
      err.textContent = ex.status === 401
        ? 'That key was not accepted. Check it and try again.'
        : ex.status === 403
          ? 'That key is valid but has no admin role: the console is for the master key and admin principals.'
          : ex.message;
      err.hidden = false;
      keyInput.select();
      keyInput.focus();
    } finally {
      submit.disabled = false;
    }
  });
  clear(view).append(h('div', { class: 'signin' },
    h('div', { class: 'signin-card' },
      h('h1', null, 'Sign in to the tollgate console'),
      h('p', { id: 'signin-help', class: 'subtitle' },
        'Use the master key (printed once when tollgate first started) or the API key of a principal with the admin role. The key is exchanged for a session cookie and is not stored in the browser.'),
      form)));
}

function startSession(s) {
  session = s;
  setSession(s);
  showShell(true);
}

function endSession() {
  session = null;
  setSession(null);
  runLeaving();
  showShell(false);
}

async function signOut() {
  try {
    await logout();
  } catch { /* the session may be gone already */ }
  endSession();
  history.replaceState(null, '', `${BASE}/overview`);
  renderSignIn($('view'));
  announce('Signed out.');
  const input = $('signin-key');
  if (input) input.focus();
}

whenUnauthorized(() => {
  if (!session) return;
  endSession();
  renderSignIn($('view'));
  showError('Your session has ended. Sign in again.');
});

// ---- Boot -----------------------------------------------------------------------------

document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(`${BASE}/`) || url.pathname.startsWith(`${BASE}/api/`)) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', () => route(true));

$('sign-out').addEventListener('click', signOut);

async function boot() {
  try {
    const s = await currentSession();
    if (s) startSession(s);
  } catch (e) {
    showError(e);
  }
  route(false);
}

boot();
