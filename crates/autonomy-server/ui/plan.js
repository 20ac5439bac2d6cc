// One plan: its summary, the gate (approve the waiting stage), pause/resume, recovery
// (retry/rollback/abort with a required reason, a dry-run preview, then confirm), why it waits
// (the stuck scan's reasons), the stage table, its devices and its audit trail.

import { ApiError, get, planPath, post } from './api.js';
import {
  h, Region, badge, deviceStateBadge, digest, field, isInFlight, phaseBadge, select, table,
  time, DEVICE_STATES,
} from './dom.js';
import { AUDIT_HEADERS, auditRow, stageProgress, stuckItem } from './views.js';

const TRAIL_KEEP = 200;
const TRAIL_PAGE = 1000;
const TRAIL_MAX_PAGES = 20;

/** What an action's answer or refusal says, in the action's own output line. */
function say(out, kind, ...text) {
  out.className = `result result-${kind}`;
  out.replaceChildren(...text);
}

function failure(out, e) {
  say(out, 'bad', h('strong', {}, 'Refused: '), e instanceof ApiError ? e.describe() : String(e));
}

export function planView(main, ctx) {
  const id = ctx.route.parts[1];
  const params = ctx.route.params;
  let stateFilter = params.get('state') || '';
  let devicesCursor = '';
  const trail = { events: [], lastSeq: null, loaded: false };

  const summary = new Region(h('div', {}));
  const gate = new Region(h('div', {}));
  const controls = new Region(h('div', {}));
  const why = new Region(h('div', {}));
  const stages = new Region(h('div', {}));
  const devices = new Region(h('div', {}));
  const audit = new Region(h('div', {}));
  const actionOut = h('p', { class: 'result', role: 'status', 'aria-live': 'polite', id: 'action-result' });

  const stateSelect = select('device-state-filter', DEVICE_STATES, stateFilter, 'All states');
  stateSelect.addEventListener('change', () => {
    stateFilter = stateSelect.value;
    devicesCursor = '';
    devices.reset();
    view.refresh().catch(() => {});
  });

  let refreshNow = () => {};

  /** A transition button (approve, pause, resume, publish): POST, then show the answer. */
  const verb = (label, verbName, body, key) =>
    h('button', {
      type: 'button',
      class: 'action',
      'data-key': key,
      on: {
        click: async (ev) => {
          const btn = ev.currentTarget;
          btn.disabled = true;
          say(actionOut, 'info', `${label}…`);
          try {
            const r = await post(planPath(id, `/${verbName}`), body);
            say(actionOut, 'ok', `${new Date().toLocaleTimeString()} — ${label}: done, the plan is now ${r.status.phase}.`);
          } catch (e) {
            failure(actionOut, e);
          } finally {
            btn.disabled = false;
            refreshNow();
          }
        },
      },
    }, label);

  // Recovery: built once (typing is never interrupted by a refresh).
  let recovery = null;
  if (ctx.canAct) {
    const strategies = ['retry', 'rollback', 'abort'];
    const radios = strategies.map((s, i) =>
      h('div', { class: 'radio' },
        h('input', { type: 'radio', name: 'strategy', id: `strategy-${s}`, value: s, checked: i === 0 }),
        h('label', { for: `strategy-${s}` }, s)),
    );
    const reason = h('textarea', { id: 'recovery-reason', name: 'reason', rows: '2', required: true, maxlength: '1024', 'aria-describedby': 'recovery-reason-hint' });
    const preview = h('div', { class: 'preview', role: 'status', 'aria-live': 'polite', id: 'recovery-preview' });
    const confirm = h('button', { type: 'button', class: 'action danger', id: 'recovery-confirm', hidden: true }, 'Confirm');
    const previewBtn = h('button', { type: 'submit', class: 'action', id: 'recovery-preview-button' }, 'Preview (dry run)');
    let pending = null;
    const chosen = () => radios.map((r) => r.querySelector('input')).find((i) => i.checked).value;
    const reset = () => {
      pending = null;
      confirm.hidden = true;
      preview.replaceChildren();
    };
    const form = h(
      'form',
      {
        class: 'recovery',
        'aria-labelledby': 'recovery-title',
        // The page says itself what is missing (in words, next to the form).
        novalidate: true,
        on: {
          input: reset,
          submit: async (ev) => {
            ev.preventDefault();
            reset();
            const r = reason.value.trim();
            if (!r) {
              say(preview, 'bad', 'A reason is required: it is recorded in the audit trail.');
              reason.focus();
              return;
            }
            const body = { target: 'rollout_plan', resource: id, strategy: chosen(), reason: r, dry_run: true };
            say(preview, 'info', 'Asking for a dry run…');
            try {
              const ans = await post('/v1/rollback/execute', body);
              say(preview, ans.outcome === 'noop' ? 'neutral' : 'ok',
                h('strong', {}, 'Dry run: '),
                `${body.strategy} would move the plan from ${ans.from_phase} to ${ans.to_phase} (${ans.outcome}): ${ans.message}. Nothing has changed yet.`);
              pending = { ...body, dry_run: false };
              confirm.textContent = `Confirm ${body.strategy}`;
              confirm.hidden = false;
            } catch (e) {
              const b = e instanceof ApiError ? e.body : null;
              if (b && b.outcome === 'rejected') {
                say(preview, 'bad', h('strong', {}, 'Dry run: '), `${body.strategy} is not possible from ${b.from_phase}: ${b.message || e.message}`);
              } else failure(preview, e);
            }
          },
        },
      },
      h('h2', { id: 'recovery-title' }, 'Recover'),
      h('fieldset', {}, h('legend', {}, 'Strategy'), radios),
      field('Reason (required, recorded in the audit trail)', reason),
      h('p', { class: 'hint', id: 'recovery-reason-hint' }, 'retry re-dispatches failed devices; rollback reverts devices to what they ran before; abort stops dispatching.'),
      h('div', { class: 'buttons' }, previewBtn, confirm),
      preview,
    );
    confirm.addEventListener('click', async () => {
      if (!pending) return;
      const body = pending;
      confirm.disabled = true;
      try {
        const ans = await post('/v1/rollback/execute', body);
        say(preview, 'ok', h('strong', {}, `${body.strategy}: `), `${ans.outcome} — ${ans.from_phase} → ${ans.to_phase}. ${ans.message}. Audit event ${ans.audit_event_id || 'none'}.`);
        reason.value = '';
      } catch (e) {
        const b = e instanceof ApiError ? e.body : null;
        if (b && b.outcome === 'rejected') say(preview, 'bad', h('strong', {}, `${body.strategy}: rejected — `), b.message || e.message);
        else failure(preview, e);
      } finally {
        pending = null;
        confirm.hidden = true;
        confirm.disabled = false;
        refreshNow();
      }
    });
    recovery = form;
  }

  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/plans' }, 'Plans'), ' / ', id),
    h('h1', {}, 'Plan ', h('code', {}, id)),
    summary.el,
    h('div', { class: 'panels' },
      h('section', { 'aria-labelledby': 'gate-title', class: 'panel' }, h('h2', { id: 'gate-title' }, 'Gate and phase'), gate.el, controls.el, actionOut),
      recovery ? h('section', { class: 'panel' }, recovery) : null),
    h('section', { 'aria-labelledby': 'stages-title' }, h('h2', { id: 'stages-title' }, 'Stages'), stages.el),
    h('section', { 'aria-labelledby': 'why-title', class: 'panel' }, h('h2', { id: 'why-title' }, 'Why it waits'), why.el),
    h('section', { 'aria-labelledby': 'devices-title' }, h('h2', { id: 'devices-title' }, 'Devices'),
      h('form', { class: 'filters', on: { submit: (e) => e.preventDefault() } }, field('Device state', stateSelect)),
      devices.el),
    h('section', { 'aria-labelledby': 'trail-title' }, h('h2', { id: 'trail-title' }, 'Audit trail'), audit.el),
  );

  /** New audit events of this plan: every page once, then only what follows the last seq. */
  async function loadTrail() {
    for (let page = 0; page < TRAIL_MAX_PAGES; page += 1) {
      // The cursor is the seq of the last event seen: asking after it tails the trail.
      const ans = await get('/v1/audit/events', { resource: id, limit: TRAIL_PAGE, cursor: trail.lastSeq });
      // Two refreshes may overlap (a click and the timer): keep each seq once.
      const fresh = ans.items.filter((e) => trail.lastSeq === null || e.seq > trail.lastSeq);
      if (fresh.length) {
        trail.events.push(...fresh);
        trail.lastSeq = fresh[fresh.length - 1].seq;
        if (trail.events.length > TRAIL_KEEP) trail.events.splice(0, trail.events.length - TRAIL_KEEP);
      }
      if (!ans.next_cursor) break;
    }
  }

  const view = {
    title: `Plan ${id}`,
    async refresh() {
      const [r, scan, devs] = await Promise.all([
        get(planPath(id)),
        get('/v1/rollouts/stuck', { threshold_seconds: 0 }),
        get(planPath(id, '/devices'), { state: stateFilter, limit: 100, cursor: devicesCursor }).catch((e) => {
          if (e instanceof ApiError && e.status === 404) return null;
          throw e;
        }),
        loadTrail(),
      ]);
      const st = r.status;
      const ro = st.rollout || null;
      const specStages = r.plan.spec.stages || [];

      summary.update({ meta: r.plan.metadata, spec: r.plan.spec, st: { ...st, history: undefined } }, () =>
        h('dl', { class: 'summary' },
          h('dt', {}, 'Phase'), h('dd', { id: 'plan-phase' }, phaseBadge(st.phase),
            ro && ro.paused_by ? [' ', badge(`paused by ${ro.paused_by}${ro.reason ? `: ${ro.reason}` : ''}`, 'warn')] : null),
          h('dt', {}, 'Artifact'), h('dd', {}, h('code', { class: 'wrap' }, r.plan.spec.artifact_ref)),
          h('dt', {}, 'Generation'), h('dd', {}, String(r.plan.metadata.generation)),
          h('dt', {}, 'Created'), h('dd', {}, time(r.plan.metadata.created_at), ` by ${r.plan.metadata.created_by}`),
          h('dt', {}, 'Phase changed'), h('dd', {}, time(st.phase_changed_at)),
          h('dt', {}, 'Last progress'), h('dd', {}, time(st.last_progress_at)),
          ro ? [h('dt', {}, 'Accepted failures'), h('dd', {}, String(ro.accepted_failures)), h('dt', {}, 'Drifted'), h('dd', {}, String(ro.drifted))] : [h('dt', {}, 'Engine'), h('dd', {}, 'record-only plan: nothing is dispatched')],
          st.warnings && st.warnings.length ? [h('dt', {}, 'Warnings'), h('dd', {}, h('ul', {}, st.warnings.map((w) => h('li', {}, w))))] : null,
        ));

      const gateStage = ro && ro.gate && st.phase === 'published' ? ro.gate.stage : null;
      const gateName = gateStage !== null ? ((ro.stages[gateStage] || specStages[gateStage] || {}).name || `stage ${gateStage}`) : null;
      gate.update({ phase: st.phase, gateStage, gateName, since: ro && ro.gate ? ro.gate.since : null, canAct: ctx.canAct, record: !ro }, (g) => {
        if (g.gateStage !== null) {
          return h('div', { class: 'gate', id: 'gate' },
            h('p', {}, badge('waiting at gate', 'wait'), ` Waiting for approval before stage ${g.gateStage} “${g.gateName}” since `, time(g.since), '.'),
            g.canAct ? verb(`Approve stage ${g.gateStage} (${g.gateName})`, 'start', { stage: g.gateStage }, `approve-${g.gateStage}`) : h('p', { class: 'hint' }, 'Your role cannot approve gates.'));
        }
        if (g.record && g.phase === 'published') {
          return h('div', { class: 'gate', id: 'gate' }, h('p', {}, badge('waiting at start gate', 'wait'), ' The plan waits at its start gate.'),
            g.canAct ? verb('Start', 'start', {}, 'start') : null);
        }
        return h('p', { id: 'gate' }, 'No gate is waiting.');
      });

      controls.update({ phase: st.phase, canAct: ctx.canAct }, (c) => {
        if (!c.canAct) return null;
        const buttons = [];
        if (c.phase === 'draft') buttons.push(verb('Publish', 'publish', {}, 'publish'));
        if (c.phase === 'active') buttons.push(verb('Pause', 'pause', {}, 'pause'));
        if (c.phase === 'paused') buttons.push(verb('Resume', 'resume', {}, 'resume'));
        return buttons.length ? h('div', { class: 'buttons' }, buttons) : null;
      });

      const mine = scan.items.find((i) => i.id === id);
      why.update(mine || { none: st.phase }, () =>
        mine ? stuckItem(mine, 'h3') : h('p', {}, `Nothing: the stuck scan does not report this plan (phase ${st.phase}).`));

      const stageRows = ro && ro.stages.length ? ro.stages : specStages.map((s) => ({ name: s.name, size: null, required: null, state: 'not frozen', counts: {} }));
      stages.update({ stageRows, cur: ro ? ro.current_stage : null, gateStage, spec: specStages.map((s) => s.approval || '') }, () =>
        table('Stages, in order', ['#', 'Stage', 'State', 'Progress', 'Size', 'Required', 'In flight', 'Device states'],
          stageRows.map((s, i) => {
            const counts = Object.entries(s.counts || {}).filter(([, n]) => n > 0);
            const inFlight = counts.filter(([k]) => isInFlight(k)).reduce((n, [, c]) => n + c, 0);
            return h('tr', { 'data-stage': s.name },
              h('td', {}, String(i)),
              h('th', { scope: 'row' }, s.name, specStages[i] && specStages[i].approval === 'manual' ? [' ', badge('manual gate', 'neutral')] : null),
              h('td', {}, gateStage === i ? badge('waiting at gate', 'wait') : badge(s.state, s.state === 'passed' ? 'ok' : s.state === 'active' ? 'info' : 'neutral')),
              h('td', {}, s.size !== null ? stageProgress(s) : h('span', { class: 'muted' }, 'frozen when the plan starts')),
              h('td', {}, s.size === null ? '—' : String(s.size)),
              h('td', {}, s.required === null ? '—' : String(s.required)),
              h('td', { class: 'in-flight' }, `${inFlight} in flight`),
              h('td', {}, counts.length ? h('ul', { class: 'pairs' }, counts.map(([k, n]) => h('li', {}, `${k}: ${n}`))) : h('span', { class: 'muted' }, 'none')),
            );
          }), ro ? 'No stages.' : 'A record-only plan has no stages the engine drives.'));

      devices.update(devs, (d) => {
        if (!d) return h('p', {}, 'No devices.');
        return [
          table(`Devices of ${id}${stateFilter ? ` in state ${stateFilter}` : ''} (${d.items.length} shown)`,
            ['Device', 'Stage', 'State', 'Attempt', 'Installed digest', 'Last seen', 'Updated', 'Message'],
            d.items.map((x) => h('tr', { 'data-device': x.device_id },
              h('th', { scope: 'row' }, x.device_id),
              h('td', {}, x.stage),
              h('td', {}, deviceStateBadge(x.state)),
              h('td', {}, String(x.attempt)),
              h('td', {}, digest(x.installed_digest)),
              h('td', {}, time(x.last_seen_at)),
              h('td', {}, time(x.updated_at)),
              h('td', { class: 'wrap' }, x.message || ''),
            )), 'No devices in this state.'),
          d.next_cursor || devicesCursor
            ? h('div', { class: 'pager' },
                devicesCursor ? h('button', { type: 'button', 'data-key': 'dev-first', on: { click: () => { devicesCursor = ''; refreshNow(); } } }, 'First devices') : null,
                d.next_cursor ? h('button', { type: 'button', 'data-key': 'dev-next', on: { click: () => { devicesCursor = d.next_cursor; refreshNow(); } } }, 'More devices') : null)
            : null,
        ];
      });

      audit.update({ n: trail.events.length, last: trail.lastSeq }, () =>
        table(`The last ${trail.events.length} audit events of ${id}, newest first`, AUDIT_HEADERS,
          trail.events.slice().reverse().map(auditRow), 'No events yet.'));
    },
  };
  refreshNow = () => view.refresh().catch(() => {});
  return view;
}
