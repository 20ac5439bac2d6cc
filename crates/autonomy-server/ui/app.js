// The console's shell: who the token is (GET /v1/whoami), the token form, the hash router
// (#/plans, #/plans/<id>, #/devices, #/stuck, #/audit) and the live refresh: the visible page
// is refreshed every 2 s while the tab is visible, never while it is hidden.

import { ApiError, get, setToken, token } from './api.js';
import { h } from './dom.js';
import { auditView, devicesView, plansView, stuckView } from './views.js';
import { planView } from './plan.js';

const REFRESH_MS = 2000;

const el = {
  main: document.getElementById('main'),
  who: document.getElementById('who'),
  error: document.getElementById('error'),
  live: document.getElementById('live'),
  form: document.getElementById('token-form'),
  input: document.getElementById('token-input'),
  forget: document.getElementById('token-forget'),
};

const session = { who: null };
let current = null; // { route, view, refreshing }
let timer = null;

/** Shows (or clears, with null) the page-wide error line. */
function showError(err) {
  if (!err) {
    el.error.hidden = true;
    el.error.replaceChildren();
    return;
  }
  const text = err instanceof ApiError ? err.describe() : String(err && err.message ? err.message : err);
  el.error.replaceChildren(h('strong', {}, 'Error: '), text);
  el.error.hidden = false;
}

/** The route of a hash: its page, path parts and query parameters. */
function parseRoute(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const [path, qs] = raw.split('?', 2);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || 'plans', parts, params: new URLSearchParams(qs || '') };
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function whoami() {
  try {
    session.who = await get('/v1/whoami');
    const w = session.who;
    const mode = w.rbac ? `token ${w.token_id}` : 'RBAC is off: every caller is an admin';
    el.who.replaceChildren('Signed in as ', h('strong', {}, w.operator), ' — role ', h('strong', { class: 'role' }, w.role), ` (${mode})`);
    el.form.hidden = !w.rbac && !token();
    showError(null);
  } catch (e) {
    session.who = null;
    el.form.hidden = false;
    if (e instanceof ApiError && e.status === 401) {
      el.who.replaceChildren(token() ? 'This token was refused. Enter another API token.' : 'Not signed in: enter an API token.');
    } else {
      el.who.replaceChildren('Could not tell who you are.');
    }
    showError(e);
  }
}

/** Mounts the page of the current hash (after the caller's identity is known). */
function render() {
  if (current && current.view.dispose) current.view.dispose();
  const route = parseRoute(location.hash);
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.getAttribute('data-nav') === route.page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  el.main.replaceChildren();
  if (!session.who) {
    el.main.appendChild(
      h('section', { class: 'signin' },
        h('h1', {}, 'Sign in'),
        h('p', {}, 'This control plane needs an API token. Paste yours in the field “API token” above and press “Use token”. ',
          'It is kept for this browser tab only (sessionStorage), never in a cookie.'),
        h('p', {}, 'An admin makes one with: ', h('code', {}, 'autonomy token create --operator NAME --role viewer|operator|admin'))),
    );
    current = null;
    return;
  }
  const ctx = {
    route,
    who: session.who,
    canAct: session.who.role === 'operator' || session.who.role === 'admin',
    navigate,
  };
  const views = { plans: route.parts.length > 1 ? planView : plansView, devices: devicesView, stuck: stuckView, audit: auditView };
  const make = views[route.page];
  if (!make) {
    el.main.appendChild(h('section', {}, h('h1', {}, 'No such page'), h('p', {}, h('a', { href: '#/plans' }, 'Go to the plans'))));
    current = null;
    return;
  }
  const view = make(el.main, ctx);
  document.title = `${view.title} — AutonomyOps console`;
  current = { route, view, refreshing: false };
  refresh();
}

/** Refreshes the current page once (skipped while a refresh is running). */
async function refresh() {
  const c = current;
  if (!c || c.refreshing) return;
  c.refreshing = true;
  try {
    await c.view.refresh();
    if (c === current) {
      showError(null);
      el.live.textContent = `Updated ${new Date().toLocaleTimeString()} — live updates every 2 s while this tab is visible.`;
    }
  } catch (e) {
    if (c === current) showError(e);
    if (e instanceof ApiError && e.status === 401) {
      await whoami();
      render();
    }
  } finally {
    c.refreshing = false;
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (document.visibilityState === 'visible') await refresh();
    schedule();
  }, REFRESH_MS);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    refresh();
    schedule();
  } else {
    clearTimeout(timer);
    el.live.textContent = 'Live updates paused while this tab is hidden.';
  }
});

window.addEventListener('hashchange', () => {
  render();
  el.main.focus();
});

el.form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const t = el.input.value.trim();
  if (!t) return;
  setToken(t);
  el.input.value = '';
  await whoami();
  render();
});

el.forget.addEventListener('click', async () => {
  setToken('');
  await whoami();
  render();
});

await whoami();
render();
schedule();
