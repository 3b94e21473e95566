// The console's only way to the gateway: same-origin fetches with the session cookie and the
// session's CSRF token on every request (the server refuses a cookie without it, GET included).
// A 401 anywhere means the session is gone: the app goes back to the sign-in form.

let csrf = null;
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, message, code, type) {
    super(message);
    this.status = status;
    this.code = code;
    this.type = type;
  }
}

export function setSession(session) {
  csrf = session ? session.csrf : null;
}

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  let code;
  let type;
  try {
    const body = await res.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code;
      type = body.error.type;
    }
  } catch { /* not JSON */ }
  return new ApiError(res.status, message, code, type);
}

/**
 * Calls the gateway. opts: {method, body (JSON), raw (return the Response), quiet401 (do not
 * sign out)}. Resolves the parsed JSON (null for 204).
 */
export async function api(path, opts = {}) {
  const headers = { accept: opts.accept || 'application/json' };
  if (csrf) headers['x-tollgate-csrf'] = csrf;
  const init = { method: opts.method || 'GET', headers, credentials: 'same-origin', cache: 'no-store' };
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `The gateway did not answer (${e.message}).`, 'network');
  }
  if (res.status === 401 && !opts.quiet401) {
    const err = await errorOf(res);
    onUnauthorized(err);
    throw err;
  }
  if (!res.ok) throw await errorOf(res);
  if (opts.raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => api(path);
export const post = (path, body) => api(path, { method: 'POST', body: body ?? {} });
export const patch = (path, body) => api(path, { method: 'PATCH', body });
export const del = (path) => api(path, { method: 'DELETE' });

// ---- Session -----------------------------------------------------------------------------

/** The current session, or null when signed out. */
export async function currentSession() {
  try {
    return await api('/ui/api/session', { quiet401: true });
  } catch (e) {
    if (e.status === 401 || e.status === 403) return null;
    throw e;
  }
}

export async function login(key) {
  return api('/ui/api/login', { method: 'POST', body: { key }, quiet401: true });
}

export async function logout() {
  return api('/ui/api/logout', { method: 'POST', quiet401: true });
}

/** Downloads a response body as a file (CSV export). */
export async function download(path, filename) {
  const res = await api(path, { raw: true, accept: 'text/csv' });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export const enc = encodeURIComponent;
