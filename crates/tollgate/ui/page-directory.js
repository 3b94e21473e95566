// Teams and users (GET/POST/PATCH/DELETE /admin/v1/teams and /admin/v1/users), each with its
// cost over the last 30 days, its own limits (edited in the same dialog) and the budgets
// counting it (its own and the configured ones).

import { get, post, patch, del, enc } from './api.js';
import {
  h, add, fill, clear, pageHeader, field, input, select, button, table, link, usd, int, timeEl,
  formDialog, confirmDialog, errorBox, emptyState, loading, announce, showError, formValues,
  splitList, qs,
} from './ui.js';
import { limitFields, limitsFrom, limitsText, ownBudgets } from './limits.js';

function rolesText(roles) {
  return roles && roles.length ? roles.join(', ') : null;
}

async function spendBy(group) {
  try {
    const r = await get(`/admin/v1/spend${qs({ group_by: group, since: '30d', limit: 100000 })}`);
    return Object.fromEntries((r.rows || []).map((x) => [x.group, x]));
  } catch {
    return {};
  }
}

async function budgetCounters(scope) {
  try {
    const r = await get('/admin/v1/budgets');
    const out = {};
    for (const b of r.data || []) {
      if (b.scope !== scope) continue;
      for (const c of b.counters || []) {
        (out[c.id] ||= []).push({ b, c });
      }
    }
    return out;
  } catch {
    return {};
  }
}

function budgetCell(list, own) {
  const items = [];
  if (own) {
    const c = (own.counters || [])[0];
    items.push(h('li', null, `own: ${usd(c ? c.spent_usd : 0)} of ${usd(own.limit_usd)} (${own.period})`));
  }
  for (const { b, c } of list || []) items.push(h('li', null, `${b.name}: ${usd(c.spent_usd)} of ${usd(b.limit_usd)} (${b.period})`));
  return items.length ? h('ul', { class: 'plain' }, items) : null;
}

function limitsCell(l) {
  const parts = limitsText(l);
  return parts.length ? parts.join(' · ') : null;
}

function costCell(x) {
  return h('span', null, usd(x ? x.cost_usd : 0), x ? h('div', { class: 'muted small' }, `${int(x.requests)} req`) : null);
}

// ---- Teams ------------------------------------------------------------------------------

export async function renderTeams(root, ctx) {
  const box = h('div', null, loading());
  add(root, 
    pageHeader('Teams', 'Teams group users and keys; policies can test a team’s roles, and budgets and rate limits can be per team.',
      button('Create team', () => teamDialog(null, () => ctx.navigate(location.pathname, { replace: true })), { kind: 'primary' })),
    h('section', { class: 'card', 'aria-label': 'Teams' }, box));
  let teams;
  let spend;
  let budgets;
  let own;
  try {
    [teams, spend, budgets] = await Promise.all([get('/admin/v1/teams'), spendBy('team'), budgetCounters('team')]);
    own = await ownBudgets('teams', teams);
  } catch (e) {
    fill(box, errorBox(e));
    return;
  }
  if (!ctx.alive()) return;
  clear(box);
  if (!teams.length) {
    add(box, emptyState('No teams yet.'));
    return;
  }
  add(box, table([
    { label: 'Team', rowHeader: true, value: (t) => h('span', null, t.name || t.id, t.name ? h('span', { class: 'muted mono small' }, ` ${t.id}`) : null) },
    { label: 'Tenant', value: (t) => t.tenant },
    { label: 'Roles', value: (t) => rolesText(t.roles) },
    { label: 'Cost, 30 days', num: true, value: (t) => costCell(spend[t.id]) },
    { label: 'Limits', value: (t) => limitsCell(t.limits) },
    { label: 'Budgets', value: (t) => budgetCell(budgets[t.id], own[t.id]) },
    { label: 'Created', value: (t) => timeEl(t.created_at) },
    { label: 'Actions', hidden: true, value: (t) => h('div', { class: 'row-actions' },
      link(`/ui/spend${qs({ group_by: 'key', filter_by: 'team', filter: t.id })}`, 'Spend', { 'aria-label': `Spend of team ${t.id}` }),
      button('Edit', () => teamDialog(t, () => ctx.navigate(location.pathname, { replace: true })), { small: true, ariaLabel: `Edit team ${t.id}` }),
      button('Delete', () => remove('team', t.id, `/admin/v1/teams/${enc(t.id)}`, ctx), { small: true, kind: 'danger', ariaLabel: `Delete team ${t.id}` })) },
  ], teams, { caption: 'Teams' }));
}

function teamDialog(team, done) {
  const fields = [
    team ? null : field('Team ID', input({ name: 'id', required: true, autocomplete: 'off', pattern: '[A-Za-z0-9._:@\\-]+' }), 'A short, stable identifier, e.g. research.'),
    field('Name', input({ name: 'name', value: team ? team.name : '', autocomplete: 'off' })),
    field('Tenant', input({ name: 'tenant', value: team ? team.tenant : '', autocomplete: 'off' })),
    field('Roles', input({ name: 'roles', value: team ? (team.roles || []).join(', ') : '', autocomplete: 'off' }), 'Separated by commas. Policies can test them.'),
    limitFields(team ? team.limits : {}, 'this team (all its keys together)'),
  ];
  formDialog(team ? `Edit team ${team.id}` : 'Create a team', fields, team ? 'Save changes' : 'Create team', async (form, d) => {
    const v = formValues(form);
    const body = { name: v.name || null, tenant: v.tenant || null, roles: splitList(v.roles), limits: limitsFrom(v) };
    if (team) {
      await patch(`/admin/v1/teams/${enc(team.id)}`, body);
    } else {
      if (!v.id) throw new Error('Give the team an ID.');
      await post('/admin/v1/teams', { id: v.id, ...body });
    }
    d.close();
    announce(team ? `Team ${team.id} saved.` : `Team ${v.id} created.`);
    done();
  });
}

async function remove(kind, id, path, ctx) {
  if (!(await confirmDialog(`Delete ${kind} ${id}?`, `The ${kind} is removed from the directory. ${kind === 'team' ? 'A team that still has users or keys cannot be deleted.' : 'Keys that belong to the user keep working but lose the user.'}`, `Delete ${kind}`, true))) return;
  try {
    await del(path);
    announce(`${kind[0].toUpperCase()}${kind.slice(1)} ${id} deleted.`);
    ctx.navigate(location.pathname, { replace: true });
  } catch (e) {
    showError(e);
  }
}

// ---- Users ------------------------------------------------------------------------------

export async function renderUsers(root, ctx) {
  const box = h('div', null, loading());
  add(root, 
    pageHeader('Users', 'People or services that keys belong to; spend and budgets can be per user.',
      button('Create user', () => userDialog(null, () => ctx.navigate(location.pathname, { replace: true })), { kind: 'primary' })),
    h('section', { class: 'card', 'aria-label': 'Users' }, box));
  let users;
  let spend;
  let budgets;
  let own;
  try {
    [users, spend, budgets] = await Promise.all([get('/admin/v1/users'), spendBy('user'), budgetCounters('user')]);
    own = await ownBudgets('users', users);
  } catch (e) {
    fill(box, errorBox(e));
    return;
  }
  if (!ctx.alive()) return;
  clear(box);
  if (!users.length) {
    add(box, emptyState('No users yet.'));
    return;
  }
  add(box, table([
    { label: 'User', rowHeader: true, value: (u) => h('span', null, u.name || u.id, u.name ? h('span', { class: 'muted mono small' }, ` ${u.id}`) : null) },
    { label: 'Email', value: (u) => u.email },
    { label: 'Team', value: (u) => u.team },
    { label: 'Roles', value: (u) => rolesText(u.roles) },
    { label: 'Cost, 30 days', num: true, value: (u) => costCell(spend[u.id]) },
    { label: 'Limits', value: (u) => limitsCell(u.limits) },
    { label: 'Budgets', value: (u) => budgetCell(budgets[u.id], own[u.id]) },
    { label: 'Created', value: (u) => timeEl(u.created_at) },
    { label: 'Actions', hidden: true, value: (u) => h('div', { class: 'row-actions' },
      link(`/ui/spend${qs({ group_by: 'key', filter_by: 'user', filter: u.id })}`, 'Spend', { 'aria-label': `Spend of user ${u.id}` }),
      button('Edit', () => userDialog(u, () => ctx.navigate(location.pathname, { replace: true })), { small: true, ariaLabel: `Edit user ${u.id}` }),
      button('Delete', () => remove('user', u.id, `/admin/v1/users/${enc(u.id)}`, ctx), { small: true, kind: 'danger', ariaLabel: `Delete user ${u.id}` })) },
  ], users, { caption: 'Users' }));
}

async function userDialog(user, done) {
  let teams = [];
  try { teams = await get('/admin/v1/teams'); } catch { /* the select stays empty */ }
  const fields = [
    user ? null : field('User ID', input({ name: 'id', required: true, autocomplete: 'off' }), 'A stable identifier, e.g. an email or an employee id.'),
    field('Name', input({ name: 'name', value: user ? user.name : '', autocomplete: 'off' })),
    field('Email', input({ name: 'email', type: 'email', value: user ? user.email : '', autocomplete: 'off' })),
    field('Team', select([['', '(none)'], ...teams.map((t) => [t.id, t.name ? `${t.name} (${t.id})` : t.id])], user ? user.team : '', { name: 'team' })),
    field('Roles', input({ name: 'roles', value: user ? (user.roles || []).join(', ') : '', autocomplete: 'off' }), 'Separated by commas. A user with the admin role can sign in to this console with their key.'),
    limitFields(user ? user.limits : {}, 'this user (all their keys together)'),
  ];
  formDialog(user ? `Edit user ${user.id}` : 'Create a user', fields, user ? 'Save changes' : 'Create user', async (form, d) => {
    const v = formValues(form);
    const body = { name: v.name || null, email: v.email || null, team: v.team || null, roles: splitList(v.roles), limits: limitsFrom(v) };
    if (user) {
      await patch(`/admin/v1/users/${enc(user.id)}`, body);
    } else {
      if (!v.id) throw new Error('Give the user an ID.');
      await post('/admin/v1/users', { id: v.id, ...body });
    }
    d.close();
    announce(user ? `User ${user.id} saved.` : `User ${v.id} created.`);
    done();
  });
}
