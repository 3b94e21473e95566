// MCP tools: the upstream servers (GET /admin/v1/mcp/servers), calls waiting for an approval
// (grant or deny), every tool's pinned definition with drift to review and approve (GET
// /admin/v1/mcp/pins), and the latest policy decisions (the audit chain, action mcp.*).

import { get, post, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, section, field, input, button, table, link, int, timeEl, relative,
  statusBadge, badge, shortHash, openDialog, formDialog, errorBox, emptyState, loading, announce, plural,
  formValues, jsonBlock, qs,
} from './ui.js';

const TRANSPORTS = { http: 'Streamable HTTP', streamable_http: 'Streamable HTTP', sse: 'HTTP+SSE', stdio: 'stdio' };

export async function render(root, ctx) {
  const servers = h('div', null, loading());
  const approvals = h('div', null, loading());
  const pins = h('div', null, loading());
  const decisions = h('div', null, loading());
  add(root, 
    pageHeader('MCP tools', 'The tool gateway: upstream MCP servers, their pinned tools, approvals and policy decisions.'),
    section('Upstream servers', servers),
    section('Pending approvals', approvals),
    section('Tools and pins', pins),
    section('Recent policy decisions', decisions));
  await Promise.all([
    loadServers(servers),
    loadApprovals(approvals, ctx),
    loadPins(pins, ctx),
    loadDecisions(decisions),
  ]);
}

function notConfigured(e) {
  return e && e.status === 404 ? emptyState('The tool gateway is not configured (mcp: in the configuration).') : errorBox(e);
}

async function loadServers(box) {
  try {
    const r = await get('/admin/v1/mcp/servers');
    clear(box);
    const list = r.servers || [];
    if (!list.length) {
      add(box, emptyState('No upstream MCP servers are configured.'));
      return;
    }
    add(box, table([
      { label: 'Server', rowHeader: true, value: (s) => s.name },
      { label: 'Transport', value: (s) => badge(TRANSPORTS[s.transport] || s.transport, 'neutral') },
      { label: 'Address', value: (s) => {
        const addr = s.url || s.address || s.command;
        return addr ? h('span', { class: 'mono small' }, addr) : null;
      } },
      { label: 'On drift', value: (s) => s.on_drift },
      { label: 'OAuth client', value: (s) => (s.oauth === undefined ? null : s.oauth ? 'yes' : 'no') },
      { label: 'Tools', num: true, value: (s) => int(s.tools) },
      { label: 'Drifted', num: true, value: (s) => (s.drifted ? badge(int(s.drifted), 'warn') : '0') },
      { label: 'Decisions', hidden: true, value: (s) => link(`/ui/audit${qs({ action: 'mcp.*', target: `${s.name}/*` })}`, 'Calls', { 'aria-label': `Audit of calls to ${s.name}` }) },
    ], list, { caption: 'Upstream MCP servers' }));
    if (r.sessions !== undefined) add(box, h('p', { class: 'card-foot muted' }, `${plural(r.sessions, 'client session')} open on this replica.`));
  } catch (e) {
    fill(box, notConfigured(e));
  }
}

async function loadApprovals(box, ctx) {
  try {
    const r = await get(`/admin/v1/mcp/approvals${qs({ status: 'pending', limit: 100 })}`);
    clear(box);
    const list = r.approvals || [];
    if (!list.length) {
      add(box, emptyState('No tool call is waiting for an approval.'));
      return;
    }
    add(box, table([
      { label: 'Tool', rowHeader: true, value: (a) => h('span', { class: 'mono' }, `${a.server}/${a.tool}`) },
      { label: 'Principal', value: (a) => a.principal },
      { label: 'Rule', value: (a) => a.rule },
      { label: 'Arguments', value: (a) => h('details', null, h('summary', null, `sha256 ${shortHash(a.args_sha256, 10)}`), jsonBlock(a.arguments, 'Arguments')) },
      { label: 'Asked', value: (a) => timeEl(a.created_ms) },
      { label: 'Expires', value: (a) => (a.expires_ms ? h('span', null, relative(a.expires_ms)) : null) },
      { label: 'Decision', hidden: true, value: (a) => h('div', { class: 'row-actions' },
        button('Approve', () => decide(a, 'approve', box, ctx), { small: true, kind: 'primary', ariaLabel: `Approve ${a.server}/${a.tool} for ${a.principal}` }),
        button('Deny', () => decide(a, 'deny', box, ctx), { small: true, kind: 'danger', ariaLabel: `Deny ${a.server}/${a.tool} for ${a.principal}` })) },
    ], list, { caption: 'Pending approvals' }));
  } catch (e) {
    fill(box, notConfigured(e));
  }
}

function decide(a, verb, box, ctx) {
  formDialog(`${verb === 'approve' ? 'Approve' : 'Deny'} ${a.server}/${a.tool}?`, [
    h('p', null, `Asked by ${a.principal}${a.rule ? ` under rule ${a.rule}` : ''}. `,
      verb === 'approve' ? 'The call can run once with exactly these arguments.' : 'The call is refused.'),
    jsonBlock(a.arguments, 'Arguments'),
    field('Note (optional)', input({ name: 'note', autocomplete: 'off' }), 'Recorded in the audit chain with your decision.'),
  ], verb === 'approve' ? 'Approve call' : 'Deny call', async (form, d) => {
    const v = formValues(form);
    await post(`/admin/v1/mcp/approvals/${enc(a.id)}/${verb}`, v.note ? { note: v.note } : {});
    d.close();
    announce(`${verb === 'approve' ? 'Approved' : 'Denied'} ${a.server}/${a.tool}.`);
    if (ctx.alive()) await loadApprovals(box, ctx);
  }, { danger: verb === 'deny', wide: true });
}

async function loadPins(box, ctx) {
  try {
    const r = await get('/admin/v1/mcp/pins');
    clear(box);
    const list = r.pins || [];
    if (!list.length) {
      add(box, emptyState('No tool has been pinned yet: tools are pinned the first time the gateway lists them.'));
      return;
    }
    list.sort((a, b) => (b.drift ? 1 : 0) - (a.drift ? 1 : 0) || `${a.server}/${a.tool}`.localeCompare(`${b.server}/${b.tool}`));
    add(box, table([
      { label: 'Tool', rowHeader: true, value: (p) => h('span', { class: 'mono' }, `${p.server}/${p.tool}`) },
      { label: 'Description', value: (p) => (p.definition && p.definition.description ? h('span', { class: 'small' }, p.definition.description) : null) },
      { label: 'Status', value: (p) => statusBadge(p.drift ? 'drifted' : 'pinned') },
      { label: 'Pinned digest', value: (p) => h('span', { class: 'mono small', title: p.sha256 }, shortHash(p.sha256, 12)) },
      { label: 'Pinned', value: (p) => timeEl(p.pinned_ms) },
      { label: 'Drift', value: (p) => (p.drift
        ? button('Review drift', () => reviewDrift(p, box, ctx), { small: true, kind: 'primary', ariaLabel: `Review drift of ${p.server}/${p.tool}` })
        : h('details', null, h('summary', null, 'Definition'), jsonBlock(p.definition, `Definition of ${p.server}/${p.tool}`))) },
    ], list, { caption: 'Pinned tools' }));
  } catch (e) {
    fill(box, notConfigured(e));
  }
}

/** Shows invisible and format characters (zero-width spaces, bidi controls) as ⟦U+200B⟧. */
function reveal(text) {
  const out = h('span');
  let plain = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    const hidden = /\p{Cf}|\p{Zl}|\p{Zp}/u.test(ch) || (cp >= 0xe0000 && cp <= 0xe007f) || cp === 0x00a0 || (cp >= 0x2000 && cp <= 0x200a);
    if (hidden) {
      if (plain) add(out, plain);
      plain = '';
      add(out, h('mark', { class: 'hidden-char', title: 'an invisible character' }, `⟦U+${cp.toString(16).toUpperCase().padStart(4, '0')}⟧`));
    } else {
      plain += ch;
    }
  }
  if (plain) add(out, plain);
  return out;
}

function valueCell(v) {
  if (v === undefined) return null;
  const text = typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v, null, 1);
  return h('code', { class: 'mono small diff-value' }, reveal(text));
}

/**
 * The server's structured diff ({changed, schema_widened, hidden_characters, changes:
 * [{path, change, old, new}]}), or a unified diff text from an older server.
 */
function diffView(diff) {
  if (diff === null || diff === undefined) return emptyState('No diff recorded: nothing was approved before (a new or renamed tool).');
  if (typeof diff === 'string') {
    const pre = h('pre', { class: 'diff', tabindex: '0', 'aria-label': 'Definition diff' });
    for (const line of diff.split('\n')) {
      const cls = line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@') ? 'hunk' : null;
      add(pre, h('span', { class: cls }, line), '\n');
    }
    return pre;
  }
  const warnings = h('ul', { class: 'drift-warnings' });
  if (diff.schema_widened) {
    add(warnings, h('li', { class: 'bad' }, badge('schema widened', 'bad'), ' The input schema lost a constraint: the tool now accepts arguments the pinned definition refused.'));
  }
  for (const hc of diff.hidden_characters || []) {
    add(warnings, h('li', { class: 'bad' }, badge('hidden character', 'bad'), ` ${hc.char} in ${hc.path}: text a person does not see but a model reads.`));
  }
  const changes = diff.changes || [];
  return h('div', null,
    warnings.childElementCount ? warnings : null,
    diff.changed && diff.changed.length ? h('p', { class: 'small' }, `Changed: ${diff.changed.join(', ')}.`) : null,
    changes.length ? table([
      { label: 'Field', rowHeader: true, value: (c) => h('span', { class: 'mono small' }, c.path || '(whole definition)') },
      { label: 'Change', value: (c) => badge(c.change, c.change === 'removed' ? 'bad' : c.change === 'added' ? 'warn' : 'neutral') },
      { label: 'Pinned', value: (c) => valueCell(c.old) },
      { label: 'New', value: (c) => valueCell(c.new) },
    ], changes, { caption: 'Changed fields' }) : emptyState('No field changed.'));
}

function reviewDrift(p, box, ctx) {
  openDialog(`Drift of ${p.server}/${p.tool}`, (d) => {
    const err = h('p', { class: 'inline-error', role: 'alert', hidden: true });
    add(d.body,
      h('p', null, `The upstream changed this tool’s definition (seen ${relative(p.drift.seen_ms)}). Calls follow the server’s on_drift rule until the new definition is approved.`),
      h('p', { class: 'small' }, 'Pinned ', h('span', { class: 'mono' }, p.sha256 ? shortHash(p.sha256, 16) : 'nothing yet'), ' → new ', h('span', { class: 'mono' }, shortHash(p.drift.sha256, 16))),
      h('h3', null, 'What changed'),
      diffView(p.drift.diff),
      h('details', null, h('summary', null, 'New definition'), jsonBlock(p.drift.definition, 'New definition')),
      p.definition ? h('details', null, h('summary', null, 'Pinned definition'), jsonBlock(p.definition, 'Pinned definition')) : null,
      err);
    add(d.actions,
      button('Keep the pinned definition', () => d.close()),
      button('Approve new definition', async () => {
        err.hidden = true;
        try {
          await post(`/admin/v1/mcp/pins/${enc(p.server)}/${enc(p.tool)}/approve`, { sha256: p.drift.sha256 });
          d.close();
          announce(`New definition of ${p.server}/${p.tool} approved and pinned.`);
          if (ctx.alive()) await loadPins(box, ctx);
        } catch (e) {
          err.textContent = e.message;
          err.hidden = false;
        }
      }, { kind: 'primary' }));
  }, { wide: true });
}

async function loadDecisions(box) {
  try {
    // The audit API filters on one action (or prefix): take the tool layer's records and keep
    // the decided calls and the approval events (not pins and sessions).
    const r = await get(`/admin/v1/audit${qs({ action: 'mcp.*', limit: 200 })}`);
    clear(box);
    const list = (r.data || []).filter((a) => a.decision || /^mcp\.approval\./.test(a.action)).slice(0, 25);
    if (!list.length) {
      add(box, emptyState('No tool calls have been decided yet.'));
      return;
    }
    add(box, decisionTable(list, 'Recent MCP policy decisions'),
      h('p', { class: 'card-foot' }, link(`/ui/audit${qs({ action: 'mcp.*' })}`, 'All tool decisions in the audit log')));
  } catch (e) {
    fill(box, errorBox(e));
  }
}

export function decisionTable(list, caption) {
  return table([
    { label: 'Time', rowHeader: true, value: (a) => timeEl(a.time || a.time_ms) },
    { label: 'Principal', value: (a) => h('span', { class: 'mono small wrap-anywhere' }, a.principal || '–') },
    { label: 'Action', value: (a) => a.action },
    { label: 'Target', value: (a) => h('span', { class: 'mono small' }, a.target || '–') },
    { label: 'Decision and rule', value: (a) => h('span', null, statusBadge(a.decision), a.rule ? h('div', { class: 'muted small' }, a.rule) : null) },
    { label: 'Outcome', value: (a) => statusBadge(a.outcome) },
    { label: 'Latency', num: true, value: (a) => (a.detail && a.detail.latency_ms !== undefined ? `${Math.round(a.detail.latency_ms)} ms` : null) },
  ], list, { caption });
}
