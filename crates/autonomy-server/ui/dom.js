// Building the page: elements from data (text is always set as text, never parsed as markup),
// badges that say their state in words (colour is only a second cue), and regions that are
// re-rendered only when what they show changed, keeping the keyboard focus where it was.

/**
 * h('a', {href: '#/x', class: 'c'}, 'text', child, [more]) → an element. `on: {click: fn}`
 * adds listeners; other attributes are set as attributes (booleans: present when true).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === 'value') {
      el.value = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** A state badge: the word itself, with a class per kind for colour. */
export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || 'neutral'}` }, text);
}

const PHASE_KIND = {
  draft: 'neutral',
  published: 'wait',
  active: 'info',
  paused: 'warn',
  completed: 'ok',
  failed: 'bad',
  aborted: 'bad',
  rolled_back: 'bad',
};

export function phaseBadge(phase) {
  return badge(phase, PHASE_KIND[phase] || 'neutral');
}

const IN_FLIGHT = ['dispatched', 'downloading', 'installing', 'rebooting', 'verifying'];
const FAILURES = ['failed', 'timed_out', 'rolled_back', 'drifted', 'revert_failed', 'revert_unavailable'];

export function isInFlight(state) {
  return IN_FLIGHT.includes(state);
}

export function deviceStateBadge(state) {
  let kind = 'neutral';
  if (state === 'verified' || state === 'reverted') kind = 'ok';
  else if (FAILURES.includes(state)) kind = 'bad';
  else if (isInFlight(state) || state === 'reverting') kind = 'info';
  else if (state === 'pending') kind = 'wait';
  return badge(state, kind);
}

export function outcomeBadge(outcome) {
  const kind = { success: 'ok', noop: 'neutral', rejected: 'warn', denied: 'bad', error: 'bad' }[outcome];
  return badge(outcome, kind || 'neutral');
}

export function stuckBadge(code) {
  return badge(`stuck: ${code}`, 'warn');
}

/** A time: local clock time (date too when not today), the ISO value in `datetime`/`title`. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', {}, iso);
  const today = new Date().toDateString() === d.toDateString();
  const shown = today ? d.toLocaleTimeString() : d.toLocaleString();
  return h('time', { datetime: iso, title: iso }, shown);
}

/** `sha256:abcdef…` shortened, the whole digest in `title`. */
export function digest(d) {
  if (!d) return h('span', { class: 'muted' }, '—');
  const [alg, hex] = d.includes(':') ? d.split(':', 2) : ['', d];
  const short = hex.length > 12 ? `${hex.slice(0, 12)}…` : hex;
  return h('code', { title: d }, alg ? `${alg}:${short}` : short);
}

/** `k=v` items of an object, as a list (or a dash). */
export function pairs(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return h(
    'ul',
    { class: 'pairs' },
    entries.map(([k, v]) => h('li', {}, `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)),
  );
}

/** Seconds as "4.2 s", "3 min 10 s", "2 h 5 min". */
export function duration(seconds) {
  const s = Number(seconds) || 0;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A table with a caption, header cells scoped to their columns, and rows of cells. */
export function table(caption, headers, rows, empty) {
  const body = rows.length
    ? rows
    : [h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, empty || 'Nothing to show.'))];
  return h(
    'table',
    {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, body),
  );
}

/**
 * A part of the page that shows data: `update(data, render)` replaces its content with
 * `render(data)` only when `data` differs from what it shows, so a refresh that brings nothing
 * new does not disturb the reader; an element that had the focus (by its `data-key`) gets it
 * back after a re-render.
 */
export class Region {
  constructor(el) {
    this.el = el;
    this.shown = undefined;
  }

  update(data, render) {
    const key = JSON.stringify(data);
    if (key === this.shown) return;
    this.shown = key;
    const active = document.activeElement;
    const focusKey = active && this.el.contains(active) ? active.getAttribute('data-key') : null;
    this.el.replaceChildren(...[render(data)].flat(Infinity).filter(Boolean));
    if (focusKey) {
      const again = this.el.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
      if (again) again.focus();
    }
  }

  /** Forget what is shown: the next update renders. */
  reset() {
    this.shown = undefined;
  }
}

/** A labelled form control: `<label for=id>text</label>` + the control, in a wrapper. */
export function field(label, control, hint) {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: control.id }, label),
    control,
    hint ? h('span', { class: 'hint', id: `${control.id}-hint` }, hint) : null,
  );
}

export const PHASES = ['draft', 'published', 'active', 'paused', 'completed', 'failed', 'aborted', 'rolled_back'];
export const DEVICE_STATES = [
  'pending', 'dispatched', 'downloading', 'installing', 'rebooting', 'verifying', 'verified',
  'failed', 'timed_out', 'rolled_back', 'drifted', 'cancelled', 'reverting', 'reverted',
  'revert_failed', 'revert_unavailable',
];
export const OUTCOMES = ['success', 'noop', 'rejected', 'denied', 'error'];

/** `<select id name>` with an "all" option (value '') and `values`, `current` selected. */
export function select(id, values, current, allLabel) {
  return h(
    'select',
    { id, name: id },
    allLabel ? h('option', { value: '', selected: !current }, allLabel) : null,
    values.map((v) => h('option', { value: v, selected: v === current }, v)),
  );
}
