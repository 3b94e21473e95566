// The own limits of a key, user or team (`limits` in the admin API): form fields, the body the
// API takes, and a one-line summary.

import { get, enc } from './api.js';
import { h, field, input, select, usd, int } from './ui.js';

const PERIODS = [['monthly', 'per month'], ['weekly', 'per week (from Monday)'], ['daily', 'per day'], ['total', 'in total (never resets)']];

// The own limits as form fields (`owner` names whose, for the legend); `limits` prefills them.
export function limitFields(limits = {}, owner = 'this key') {
  const num = (name, value, attrs) => input({ name, type: 'number', inputmode: 'decimal', autocomplete: 'off', value: value ?? '', ...attrs });
  return h('fieldset', { class: 'fieldset' },
    h('legend', null, `Limits of ${owner}`),
    h('p', { class: 'hint' }, 'On top of the gateway’s configured budgets and rate limits. Leave a field empty for no limit.'),
    h('div', { class: 'field-row' },
      field('Budget, USD', num('budget_usd', limits.budget_usd, { min: '0', step: 'any', placeholder: 'no limit' }),
        'Spend allowed per period; over it requests get 429 budget_exceeded.'),
      field('Budget period', select(PERIODS, limits.budget_period || 'monthly', { name: 'budget_period' }))),
    h('div', { class: 'field-row' },
      field('Requests per minute', num('rpm', limits.rpm, { min: '1', step: '1', placeholder: 'no limit' })),
      field('Tokens per minute', num('tpm', limits.tpm, { min: '1', step: '1', placeholder: 'no limit' }))));
}

// The limits the form holds, as the admin API takes them; throws on a bad number.
export function limitsFrom(v) {
  const out = {};
  const positive = (name, label, integer) => {
    if (v[name] === '' || v[name] === undefined) return;
    const n = Number(v[name]);
    if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
      throw new Error(`${label} must be ${integer ? 'a whole number of at least 1' : 'a number above 0'}, or empty for no limit.`);
    }
    out[name] = n;
  };
  positive('budget_usd', 'Budget', false);
  positive('rpm', 'Requests per minute', true);
  positive('tpm', 'Tokens per minute', true);
  if (out.budget_usd !== undefined) out.budget_period = v.budget_period || 'monthly';
  return out;
}

export function limitsText(l) {
  const parts = [];
  if (!l) return parts;
  if (l.budget_usd !== undefined) {
    const per = (PERIODS.find(([p]) => p === (l.budget_period || 'monthly')) || [])[1] || '';
    parts.push(`${usd(l.budget_usd)} ${per}`);
  }
  if (l.rpm !== undefined) parts.push(`${int(l.rpm)} ${l.rpm === 1 ? 'request' : 'requests'}/min`);
  if (l.tpm !== undefined) parts.push(`${int(l.tpm)} ${l.tpm === 1 ? 'token' : 'tokens'}/min`);
  return parts;
}

// Each record's own budget with its spend, by id (`kind`: teams or users), for those that set
// one: one request per such record.
export async function ownBudgets(kind, records) {
  const out = {};
  await Promise.all(records.filter((r) => r.limits && r.limits.budget_usd !== undefined).map(async (r) => {
    try {
      const b = await get(`/admin/v1/${kind}/${enc(r.id)}/budget`);
      if (b && b.data) out[r.id] = b.data;
    } catch { /* shown without its spend */ }
  }));
  return out;
}
