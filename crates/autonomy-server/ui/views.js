// The list pages: plans, devices, the stuck scan and audit search. Each view builds its
// controls once (so typing is never interrupted) and refreshes only its data regions.

import { get, query } from './api.js';
import {
  h, Region, badge, digest, duration, field, outcomeBadge, pairs, phaseBadge, select,
  stuckBadge, table, time, PHASES, OUTCOMES,
} from './dom.js';

const THRESHOLD_KEY = 'autonomy.stuckThreshold';
const DEFAULT_THRESHOLD = 60;

/** The stuck threshold (seconds) this tab uses for badges and the stuck page. */
export function stuckThreshold() {
  const v = Number(sessionStorage.getItem(THRESHOLD_KEY));
  return sessionStorage.getItem(THRESHOLD_KEY) !== null && Number.isFinite(v) && v >= 0 ? v : DEFAULT_THRESHOLD;
}

/** The route's hash with `params` (empty values left out). */
function hashWith(page, params) {
  return `#/${page}${query(params)}`;
}

/** One stage's progress: a labelled <progress> of verified over the stage's size. */
export function stageProgress(stage) {
  const verified = (stage.counts && stage.counts.verified) || 0;
  const failed = Object.entries(stage.counts || {})
    .filter(([s]) => ['failed', 'timed_out', 'rolled_back', 'drifted'].includes(s))
    .reduce((n, [, c]) => n + c, 0);
  const label = `${stage.name}: ${verified} of ${stage.size} verified${failed ? `, ${failed} failed` : ''} (${stage.state})`;
  return h(
    'div',
    { class: 'stage-progress' },
    h('span', { class: 'stage-name' }, stage.name),
    h('progress', { max: Math.max(stage.size, 1), value: verified, 'aria-label': label }),
    h('span', { class: 'stage-count' }, `${verified}/${stage.size}`, failed ? ` · ${failed} failed` : '', ` · ${stage.state}`),
  );
}

/** A "Next page" / "First page" pair for cursor paging. */
function pager(nextCursor, cursor, go) {
  if (!nextCursor && !cursor) return null;
  return h(
    'div',
    { class: 'pager' },
    cursor ? h('button', { type: 'button', 'data-key': 'first', on: { click: () => go('') } }, 'First page') : null,
    nextCursor ? h('button', { type: 'button', 'data-key': 'next', on: { click: () => go(nextCursor) } }, 'Next page') : null,
  );
}

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------

export function plansView(main, ctx) {
  const params = ctx.route.params;
  const phase = params.get('phase') || '';
  const cursor = params.get('cursor') || '';
  const phaseSelect = select('phase-filter', PHASES, phase, 'All phases');
  phaseSelect.addEventListener('change', () => ctx.navigate(hashWith('plans', { phase: phaseSelect.value })));
  const data = h('div', {});
  const region = new Region(data);
  main.append(
    h('h1', {}, 'Rollout plans'),
    h('form', { class: 'filters', on: { submit: (e) => e.preventDefault() } }, field('Phase', phaseSelect)),
    h('p', { class: 'hint' }, `Stuck badges mark plans without progress for ${stuckThreshold()} s (set on the Stuck page).`),
    data,
  );
  return {
    title: 'Plans',
    async refresh() {
      const [list, stuck] = await Promise.all([
        get('/v1/rollouts', { phase, limit: 100, cursor }),
        get('/v1/rollouts/stuck', { threshold_seconds: stuckThreshold() }),
      ]);
      const stuckById = Object.fromEntries(stuck.items.map((i) => [i.id, i]));
      const rows = list.items.map((r) => ({
        id: r.plan.metadata.id,
        phase: r.status.phase,
        changed: r.status.phase_changed_at,
        by: r.plan.metadata.created_by,
        artifact: r.plan.spec.artifact_ref,
        stages: r.status.rollout ? r.status.rollout.stages : null,
        gate: r.status.rollout && r.status.rollout.gate,
        stuck: stuckById[r.plan.metadata.id] ? stuckById[r.plan.metadata.id].code : null,
      }));
      region.update({ rows, next: list.next_cursor }, ({ rows: rs, next }) => [
        table(
          `Plans${phase ? ` in phase ${phase}` : ''} (${rs.length} shown)`,
          ['Plan', 'Phase', 'Stage progress', 'Stuck', 'Phase changed', 'Created by'],
          rs.map((r) =>
            h(
              'tr',
              { 'data-plan': r.id },
              h('th', { scope: 'row' }, h('a', { href: `#/plans/${encodeURIComponent(r.id)}`, 'data-key': `plan-${r.id}` }, r.id)),
              h('td', {}, phaseBadge(r.phase), r.gate && r.phase === 'published' ? [' ', badge(`gate before stage ${r.gate.stage}`, 'wait')] : null),
              h('td', {}, r.stages && r.stages.length ? r.stages.map(stageProgress) : h('span', { class: 'muted' }, r.stages ? 'not started' : 'record-only')),
              h('td', {}, r.stuck ? stuckBadge(r.stuck) : h('span', { class: 'muted' }, 'no')),
              h('td', {}, time(r.changed)),
              h('td', {}, r.by),
            ),
          ),
          'No plans.',
        ),
        pager(next, cursor, (c) => ctx.navigate(hashWith('plans', { phase, cursor: c }))),
      ]);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

export function devicesView(main, ctx) {
  const params = ctx.route.params;
  const selector = params.get('selector') || '';
  const cursor = params.get('cursor') || '';
  const input = h('input', { id: 'device-selector', type: 'text', value: selector, placeholder: 'site=berlin,fleet=amr', spellcheck: 'false', 'aria-describedby': 'device-selector-hint' });
  const data = h('div', {});
  const region = new Region(data);
  main.append(
    h('h1', {}, 'Devices'),
    h(
      'form',
      { class: 'filters', on: { submit: (e) => { e.preventDefault(); ctx.navigate(hashWith('devices', { selector: input.value.trim() })); } } },
      field('Label selector', input, 'k=v pairs separated by commas; every one must match'),
      h('button', { type: 'submit' }, 'Apply'),
    ),
    data,
  );
  return {
    title: 'Devices',
    async refresh() {
      const list = await get('/v1/devices', { selector, limit: 100, cursor });
      const withConditions = list.items.some((d) => d.conditions !== undefined && d.conditions !== null);
      region.update({ items: list.items, next: list.next_cursor, withConditions }, ({ items, next }) => {
        const headers = ['Device', 'Labels', 'Installed digest', 'Last seen', 'Assignment', 'Drift'];
        if (withConditions) headers.push('Conditions');
        return [
          table(
            `Devices${selector ? ` matching ${selector}` : ''} (${items.length} shown)`,
            headers,
            items.map((d) => {
              const a = d.assignment;
              const drifted = a && a.state === 'drifted';
              return h(
                'tr',
                {},
                h('th', { scope: 'row' }, d.id, d.revoked_at ? [' ', badge('revoked', 'bad')] : null),
                h('td', {}, pairs(d.labels)),
                h('td', {}, digest(d.installed_digest)),
                h('td', {}, time(d.last_seen_at)),
                h('td', {}, a ? [h('a', { href: `#/plans/${encodeURIComponent(a.plan_id)}` }, a.plan_id), ` · ${a.state} · attempt ${a.attempt}`] : h('span', { class: 'muted' }, 'none')),
                h('td', {}, drifted ? badge('drifted', 'bad') : h('span', { class: 'muted' }, 'no')),
                withConditions ? h('td', {}, pairs(d.conditions)) : null,
              );
            }),
            'No devices.',
          ),
          pager(next, cursor, (c) => ctx.navigate(hashWith('devices', { selector, cursor: c }))),
        ];
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Stuck
// ---------------------------------------------------------------------------------------------

const CODE_HELP = {
  promoter_not_running: 'No promoter is running on this control plane: nothing moves until one does.',
  awaiting_start: 'Waiting at the start gate: start the plan when it should roll out.',
  awaiting_approval: 'Waiting at a manual gate: approve the stage when the previous ones look good.',
  failure_threshold_reached: 'The engine paused the plan on failures: retry re-dispatches the failed devices, resume accepts them, rollback undoes.',
  stage_threshold_unreachable: 'The stage can no longer reach its success threshold: retry the failed devices or roll back.',
  failing_devices: 'Devices failed: look at their messages; retry once fixed.',
  silent_devices: 'Devices in flight stopped polling: check them (power, network).',
  non_converging_devices: 'Devices poll but do not progress (or never came back from a reboot).',
  drifted_devices: 'Verified devices now run another digest.',
  revert_not_converging: 'A rollback is waiting for devices to revert.',
  no_progress: 'A record-only plan with no progress for the threshold.',
};

/** One stuck plan: its diagnosis, reasons and the suggested actions. */
export function stuckItem(item, headingLevel) {
  return h(
    'article',
    { class: 'stuck-item', 'data-plan': item.id },
    h(headingLevel, {}, h('a', { href: `#/plans/${encodeURIComponent(item.id)}`, 'data-key': `stuck-${item.id}` }, item.id), ' ', phaseBadge(item.phase), ' ', stuckBadge(item.code)),
    h('p', { class: 'diagnosis' }, item.diagnosis),
    h('p', {}, `No progress for ${duration(item.stale_seconds)} (last progress `, time(item.last_progress_at), ').'),
    item.stage
      ? h('p', {}, `Stage ${item.stage.index} “${item.stage.name}”: ${item.stage.verified} verified of ${item.stage.required} required, ${item.stage.in_flight} in flight, ${item.stage.failed} failed.`)
      : null,
    item.reasons && item.reasons.length
      ? h('ul', { class: 'reasons' }, item.reasons.map((r) => h('li', {}, h('code', {}, r.code), ` — ${r.count} device${r.count === 1 ? '' : 's'}`, r.devices.length ? `: ${r.devices.join(', ')}${r.count > r.devices.length ? ', …' : ''}` : '')))
      : null,
    item.suggested_actions.length
      ? h('div', { class: 'actions-cli' }, h('p', {}, 'Suggested actions (CLI):'), h('ul', {}, item.suggested_actions.map((a) => h('li', {}, h('code', {}, a)))))
      : null,
  );
}

export function stuckView(main, ctx) {
  const threshold = h('input', { id: 'stuck-threshold', type: 'number', min: '0', step: 'any', value: String(stuckThreshold()) });
  const data = h('div', {});
  const region = new Region(data);
  main.append(
    h('h1', {}, 'Stuck plans'),
    h(
      'form',
      {
        class: 'filters',
        on: {
          submit: (e) => {
            e.preventDefault();
            const v = Number(threshold.value);
            if (threshold.value !== '' && Number.isFinite(v) && v >= 0) sessionStorage.setItem('autonomy.stuckThreshold', String(v));
            ctx.navigate('#/stuck');
          },
        },
      },
      field('Stuck after (seconds without progress)', threshold),
      h('button', { type: 'submit' }, 'Scan'),
    ),
    data,
  );
  return {
    title: 'Stuck',
    async refresh() {
      const scan = await get('/v1/rollouts/stuck', { threshold_seconds: stuckThreshold() });
      region.update(scan.items.concat([scan.by_code || {}]), () => {
        const groups = {};
        for (const item of scan.items) (groups[item.code] = groups[item.code] || []).push(item);
        const codes = Object.keys(groups);
        return [
          h('p', { role: 'status' }, `${scan.stuck_count} stuck plan${scan.stuck_count === 1 ? '' : 's'} at a threshold of ${scan.threshold_seconds} s.`),
          codes.length
            ? codes.map((code) =>
                h(
                  'section',
                  { class: 'stuck-group', 'data-code': code },
                  h('h2', {}, h('code', {}, code), ` — ${groups[code].length} plan${groups[code].length === 1 ? '' : 's'}`),
                  CODE_HELP[code] ? h('p', { class: 'hint' }, CODE_HELP[code]) : null,
                  groups[code].map((i) => stuckItem(i, 'h3')),
                ),
              )
            : h('p', {}, 'Nothing is stuck.'),
        ];
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

const EVENT_TYPES = [
  'plan.created', 'plan.read', 'plan.listed', 'plan.stuck_scanned', 'rollout.phase_changed',
  'rollback.executed', 'audit.queried', 'token.created', 'token.listed', 'token.revoked',
  'auth.denied', 'rollout.stage_started', 'rollout.gate_reached', 'rollout.stage_passed',
  'rollout.devices_dispatched', 'device.timed_out', 'device.retried', 'device.drift_detected',
  'device.drift_resolved', 'device.registered', 'device.enrolled', 'device.labels_changed',
  'device.revoked', 'enroll_key.created',
];

/** An audit event as a table row. */
export function auditRow(e) {
  const details = e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : '';
  return h(
    'tr',
    {},
    h('td', {}, String(e.seq)),
    h('td', {}, time(e.time)),
    h('td', {}, h('code', {}, e.event_type)),
    h('td', {}, e.actor),
    h('td', {}, e.resource),
    h('td', {}, outcomeBadge(e.outcome)),
    h('td', { class: 'wrap' }, e.reason, details ? h('details', {}, h('summary', {}, 'details'), h('code', { class: 'wrap' }, details)) : null),
  );
}

export const AUDIT_HEADERS = ['Seq', 'Time', 'Event', 'Actor', 'Resource', 'Outcome', 'Reason'];

export function auditView(main, ctx) {
  const p = ctx.route.params;
  const q = {};
  for (const k of ['event_type', 'actor', 'resource', 'outcome', 'start_time', 'end_time', 'limit', 'cursor']) q[k] = p.get(k) || '';
  const inputs = {
    event_type: h('input', { id: 'audit-event-type', type: 'text', value: q.event_type, list: 'audit-event-types', spellcheck: 'false' }),
    actor: h('input', { id: 'audit-actor', type: 'text', value: q.actor, spellcheck: 'false' }),
    resource: h('input', { id: 'audit-resource', type: 'text', value: q.resource, spellcheck: 'false' }),
    outcome: select('audit-outcome', OUTCOMES, q.outcome, 'Any outcome'),
    start_time: h('input', { id: 'audit-start', type: 'text', value: q.start_time, placeholder: '2026-12-01T00:00:00Z', spellcheck: 'false' }),
    end_time: h('input', { id: 'audit-end', type: 'text', value: q.end_time, placeholder: '2026-12-02T00:00:00Z', spellcheck: 'false' }),
    limit: h('input', { id: 'audit-limit', type: 'number', min: '1', max: '10000', value: q.limit || '100' }),
  };
  const data = h('div', {});
  const region = new Region(data);
  const search = (cursor) => {
    const next = {};
    for (const [k, input] of Object.entries(inputs)) next[k] = input.value.trim();
    next.cursor = cursor || '';
    ctx.navigate(hashWith('audit', next));
  };
  main.append(
    h('h1', {}, 'Audit'),
    h(
      'form',
      { class: 'filters audit-form', on: { submit: (e) => { e.preventDefault(); search(''); } } },
      field('Event type', inputs.event_type),
      h('datalist', { id: 'audit-event-types' }, EVENT_TYPES.map((t) => h('option', { value: t }))),
      field('Actor', inputs.actor),
      field('Resource', inputs.resource),
      field('Outcome', inputs.outcome),
      field('Start time (RFC 3339)', inputs.start_time),
      field('End time (RFC 3339)', inputs.end_time),
      field('Page size', inputs.limit),
      h('button', { type: 'submit' }, 'Search'),
    ),
    data,
  );
  return {
    title: 'Audit',
    async refresh() {
      const page = await get('/v1/audit/events', { ...q, limit: q.limit || 100 });
      region.update(page, ({ items, next_cursor: next }) => [
        table(`Audit events, oldest first (${items.length} shown)`, AUDIT_HEADERS, items.map(auditRow), 'No events match.'),
        pager(next, q.cursor, (c) => search(c)),
      ]);
    },
  };
}
