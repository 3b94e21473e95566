// Models: the configured model groups and their targets with live health from GET
// /admin/v1/models/health (state, cooldowns, latency, in-flight, rate usage), refreshed every
// few seconds. The health is this replica's own view.

import { get } from './api.js';
import {
  h, add, fill, clear, pageHeader, checkbox, tile, table, int, ms, num, statusBadge, errorBox, emptyState,
  loading, nextId,
} from './ui.js';

const REFRESH_MS = 5000;

export async function render(root, ctx) {
  const auto = checkbox('Refresh every 5 seconds', true, { name: 'auto' });
  const updated = h('span', { class: 'muted small', 'aria-live': 'off' });
  const tiles = h('div', { class: 'tiles tiles-small' });
  const groups = h('div', null, loading());
  add(root, 
    pageHeader('Models', 'Model groups, their targets and live health as this replica sees it. Groups are defined in the configuration (models:).',
      h('div', { class: 'inline-form' }, auto.el, updated)),
    tiles, groups);

  let timer = 0;
  async function load() {
    clearTimeout(timer);
    try {
      const r = await get('/admin/v1/models/health');
      if (!ctx.alive()) return;
      draw(r.models || []);
      updated.textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC`;
    } catch (e) {
      if (!ctx.alive()) return;
      fill(groups, errorBox(e));
    }
    if (auto.box.checked && ctx.alive()) timer = setTimeout(load, REFRESH_MS);
  }
  auto.box.addEventListener('change', () => {
    if (auto.box.checked) load();
    else clearTimeout(timer);
  });
  ctx.onLeave(() => clearTimeout(timer));

  function draw(models) {
    const targets = models.flatMap((m) => m.targets || []);
    const healthy = targets.filter((t) => t.health && t.health.state === 'healthy').length;
    const cooling = targets.filter((t) => t.health && t.health.state === 'cooldown').length;
    fill(tiles, 
      tile('Model groups', int(models.length)),
      tile('Targets', int(targets.length)),
      tile('Healthy', int(healthy), null, healthy === targets.length ? 'ok' : null),
      tile('In cooldown', int(cooling), null, cooling ? 'bad' : null),
      tile('In flight', int(targets.reduce((a, t) => a + ((t.health && t.health.in_flight) || 0), 0))),
    );
    clear(groups);
    if (!models.length) {
      add(groups, emptyState('No model groups are configured.'));
      return;
    }
    for (const m of models) {
      const id = nextId('model');
      add(groups, h('section', { class: 'card', 'aria-labelledby': id },
        h('div', { class: 'card-head' },
          h('h2', { id }, m.name),
          h('span', { class: 'muted' }, `strategy: ${m.strategy || 'default'}`,
            m.aliases && m.aliases.length ? ` · aliases: ${m.aliases.join(', ')}` : '')),
        table([
          { label: 'Target', rowHeader: true, value: (t) => h('span', { class: 'mono' }, `${t.provider}/${t.model}`) },
          { label: 'State', value: (t) => h('span', null, statusBadge(t.health ? t.health.state : null),
            t.provider_healthy === false ? h('div', { class: 'muted small' }, 'provider down') : null) },
          { label: 'Cooldown left', num: true, value: (t) => (t.health && t.health.available_in_ms ? ms(t.health.available_in_ms) : null) },
          { label: 'Latency (EWMA)', num: true, value: (t) => (t.health ? ms(t.health.latency_ewma_ms) : null) },
          { label: 'In flight', num: true, value: (t) => (t.health ? `${int(t.health.in_flight)}${t.max_concurrency ? ` / ${int(t.max_concurrency)}` : ''}` : null) },
          { label: 'This minute', num: true, value: (t) => (t.health ? h('span', null,
            `${int(t.health.requests_this_minute)}${t.rpm ? ` / ${int(t.rpm)}` : ''} req`,
            h('div', { class: 'muted small' }, `${int(t.health.tokens_this_minute)}${t.tpm ? ` / ${int(t.tpm)}` : ''} tok`)) : null) },
          { label: 'Failures', num: true, value: (t) => (t.health ? int(t.health.failures_in_window) : null) },
          { label: 'Cooldowns', num: true, value: (t) => (t.health ? int(t.health.cooldowns) : null) },
          { label: 'Weight', num: true, value: (t) => num(t.weight) },
          { label: 'Priority', num: true, value: (t) => int(t.priority) },
        ], m.targets || [], {
          caption: `Targets of ${m.name}`,
          after: (t, n) => (t.health && t.health.last_error
            ? h('tr', { class: 'detail-row' }, h('td', { colspan: String(n) },
              h('span', { class: 'muted small' }, `Last error of ${t.provider}/${t.model}: `), h('span', { class: 'small' }, t.health.last_error)))
            : null),
        })));
    }
  }
  await load();
}
