// End-to-end test of the operator console (SPEC §11) in headless Chromium, driven by
// playwright-core: a real CP (RBAC on) and a simulated fleet of 50 devices, then, through the
// page alone, an operator finds the plan waiting at its gates and approves them, watches it
// pause on failures, reads the stuck reason, retries with a reason (dry run, then confirm) and
// sees it complete; a viewer sees the same pages without any action button.
//
// Run by scripts/ci/console_e2e.sh. Environment: AUTONOMY_BIN (the binary, required),
// CHROMIUM (default /usr/bin/chromium), CONSOLE_E2E_ARTIFACTS (screenshots; default
// ${TMPDIR:-/tmp}/autonomy-console-e2e). Every wait is bounded; the last line is
// "N passed, M failed".

import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.AUTONOMY_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.CONSOLE_E2E_ARTIFACTS || join(process.env.TMPDIR || tmpdir(), 'autonomy-console-e2e');
const PLAN = 'console-e2e';
const DEVICES = 50;
const CANARY = 5;
const SEED = '3';
const STEP_MS = 30_000; // a page assertion's bound
const ROLLOUT_MS = 90_000; // a rollout step's bound (gate to pause, retry to completion)

if (!BIN || !existsSync(BIN)) {
  console.error(`e2e: AUTONOMY_BIN must name the autonomy binary (got ${BIN || 'nothing'})`);
  process.exit(2);
}
mkdirSync(ARTIFACTS, { recursive: true });
const work = mkdtempSync(join(process.env.TMPDIR || tmpdir(), 'autonomy-console-e2e-'));
const children = [];
let passed = 0;
let openPages = [];
let failed = 0;
const t0 = Date.now();

function log(line) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${line}`);
}

/** One named check: logs ok / not ok; a failure ends the run (later steps depend on it). */
async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    log(`ok - ${name} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
  } catch (e) {
    failed += 1;
    log(`not ok - ${name}`);
    // What the pages showed when it failed.
    for (const [i, page] of (openPages || []).entries()) {
      await page.screenshot({ path: join(ARTIFACTS, `failed-${i}.png`), fullPage: true }).catch(() => {});
    }
    console.log(String(e && e.stack ? e.stack : e).split('\n').map((l) => `    ${l}`).join('\n'));
    throw e;
  }
}

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

/** Polls `fn` until it returns a truthy value, at most `ms`. */
async function until(what, ms, fn) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

/** A clean environment for the binary: none of the developer's AUTONOMY_* variables. */
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AUTONOMY_')) env[k] = v;
  return { ...env, NO_COLOR: '1', ...extra };
}

/** Starts a child whose output goes to a log file; it is stopped at the end. */
function start(name, args, env) {
  const out = createWriteStream(join(work, `${name}.log`));
  const child = spawn(BIN, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.pipe(out);
  children.push(child);
  return child;
}

async function stopAll() {
  for (const c of children.reverse()) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    const timer = new Promise((r) => setTimeout(() => r('timeout'), 15_000));
    if ((await Promise.race([exited, timer])) === 'timeout') c.kill('SIGKILL');
  }
}

let url;
let admin;

/** The CLI, as an admin unless `token` says otherwise; its JSON answer. */
function cli(args, token = admin) {
  const out = execFileSync(BIN, ['--server', url, '--token', token, '-o', 'json', ...args], {
    env: cleanEnv({}),
    timeout: 30_000,
    encoding: 'utf8',
  });
  return JSON.parse(out);
}

async function api(path, init = {}) {
  const resp = await fetch(url + path, {
    ...init,
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json', ...(init.headers || {}) },
    signal: AbortSignal.timeout(10_000),
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(`${init.method || 'GET'} ${path}: ${resp.status} ${JSON.stringify(body)}`);
  return body;
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Goes to a page by the navigation bar. */
// Each page's h1, so a step acts on the page it navigated to and never on the
// one still shown while the new page renders (a label like 'Phase' also matches
// the plan page's 'Gate and phase' panel).
const PAGE_HEADINGS = { Plans: 'Rollout plans', Devices: 'Devices', Stuck: 'Stuck plans', Audit: 'Audit' };

async function nav(page, name) {
  await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name, exact: true }).click();
  const heading = PAGE_HEADINGS[name];
  assert(heading, `no heading known for page ${name}`);
  await page.locator('main').getByRole('heading', { level: 1, name: heading, exact: true }).waitFor({ timeout: STEP_MS });
}

const ACTION_BUTTONS = /^(approve|start|publish|pause|resume|preview|confirm)/i;

async function main() {
  let manifest;
  let failing;
  let operator;
  let viewer;

  await step('the CP starts with RBAC on and writes its admin token', async () => {
    const cp = start('cp', ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(work, 'data'), '--promoter-interval', '0.2'], {
      AUTONOMY_RBAC_ENFORCEMENT: '1',
    });
    let stdout = '';
    cp.stdout.on('data', (b) => {
      stdout += b;
    });
    url = await until('the CP to print its address', 15_000, () => {
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout);
      if (cp.exitCode !== null) throw new Error(`the CP exited with ${cp.exitCode}`);
      return m && m[1];
    });
    admin = await until('admin.token', 10_000, () => {
      const p = join(work, 'data', 'admin.token');
      return existsSync(p) && readFileSync(p, 'utf8').trim();
    });
    log(`CP at ${url}`);
  });

  await step('tokens for an operator and a viewer, made with the CLI', async () => {
    operator = cli(['token', 'create', '--operator', 'e2e-operator', '--role', 'operator']).token;
    viewer = cli(['token', 'create', '--operator', 'e2e-viewer', '--role', 'viewer']).token;
    assert(operator && viewer, 'both tokens were shown');
  });

  await step(`a simulated fleet of ${DEVICES} devices enrolls (some fail their first install)`, async () => {
    const key = cli(['device', 'enroll-key', 'create', '--max-uses', String(DEVICES), '--ttl', '3600', '--label', 'fleet=e2e']).key;
    const manifestPath = join(work, 'manifest.json');
    start('sim', [
      '--server', url, 'fleet', 'simulate', '--devices', String(DEVICES), '--enroll-key', key, '--seed', SEED,
      '--failing', '0.2', '--fail-attempts', '1', '--step-seconds', '0.05', '--poll-wait', '2',
      '--progress-every', '5', '--manifest', manifestPath, '--duration', '300',
    ], {});
    manifest = await until('the manifest', 30_000, () => existsSync(manifestPath) && JSON.parse(readFileSync(manifestPath, 'utf8')));
    await until(`${DEVICES} enrolled devices`, 30_000, async () => (await api('/v1/devices?selector=fleet=e2e&limit=1000')).items.length === DEVICES);
    failing = Object.keys(manifest).filter((d) => manifest[d] === 'failing');
    const healthy = Object.keys(manifest).filter((d) => manifest[d] === 'healthy').sort();
    assert(failing.length > 0 && healthy.length >= CANARY, `failing ${failing.length}, healthy ${healthy.length}`);
    // The canary ring: healthy devices, so the failures come in the gated wave.
    for (const d of healthy.slice(0, CANARY)) {
      await api(`/v1/devices/${d}/labels`, { method: 'POST', body: JSON.stringify({ labels: { fleet: 'e2e', ring: 'canary' } }) });
    }
    log(`fleet: ${failing.length} failing, ${healthy.length} healthy`);
  });

  await step('an engine-driven plan with a canary and a manual gate, created with the CLI', async () => {
    const plan = {
      metadata: { id: PLAN, labels: { test: 'console' } },
      spec: {
        artifact_ref: `oci://registry.example/console/app@sha256:${'c'.repeat(64)}`,
        targets: { selector: { fleet: 'e2e' } },
        stages: [
          { name: 'canary', size: { count: CANARY }, selector: { ring: 'canary' } },
          { name: 'fleet', approval: 'manual' },
        ],
        policy: {
          success_threshold_pct: 50, failure_threshold: { count: 1 }, on_failure: 'pause',
          device_timeout_seconds: 60, max_device_retries: 0, reboot_required: true, silent_after_seconds: 30,
        },
      },
    };
    const file = join(work, 'plan.json');
    writeFileSync(file, JSON.stringify(plan));
    const created = cli(['rollout', 'create', '-f', file], operator);
    assert(created.status.phase === 'published', `phase ${created.status.phase}`);
  });

  const browserDir = join(work, 'chromium-profile');
  const context = await chromium.launchPersistentContext(browserDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  // Every click, fill and navigation is bounded too, not only the explicit waits.
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  const pageErrors = [];
  const watch = (page, who) => {
    page.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    page.on('console', (m) => {
      // A refused call (the 401 of a bad token) is logged by the browser; anything else
      // (a CSP refusal, an exception) is a failure.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(`${who}: ${m.text()}`);
    });
  };
  try {
    const page = context.pages()[0] || (await context.newPage());
    openPages = [page];
    watch(page, 'operator');
    const main = page.locator('main');
    const alert = page.locator('#error');

    await step('/ui redirects to the console, served with a strict Content-Security-Policy', async () => {
      const resp = await page.goto(`${url}/ui`, { timeout: STEP_MS });
      assert(resp.url() === `${url}/ui/`, `landed on ${resp.url()}`);
      const csp = resp.headers()['content-security-policy'] || '';
      assert(csp.includes("default-src 'none'") && csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), csp);
      assert(resp.headers()['x-content-type-options'] === 'nosniff', 'nosniff');
      await main.getByRole('heading', { name: 'Sign in' }).waitFor({ timeout: STEP_MS });
      await shot(page, '01-sign-in');
    });

    await step('a wrong token is refused plainly (HTTP 401)', async () => {
      await page.getByLabel('API token').fill('aut_0000000000000000000000000000000000');
      await page.getByRole('button', { name: 'Use token' }).click();
      await alert.getByText(/HTTP 401 unauthorized/).waitFor({ timeout: STEP_MS });
      await page.getByText('This token was refused').waitFor({ timeout: STEP_MS });
    });

    await step('the operator signs in; the page knows the role', async () => {
      await page.getByLabel('API token').fill(operator);
      await page.getByRole('button', { name: 'Use token' }).click();
      await page.locator('#who').getByText('e2e-operator').waitFor({ timeout: STEP_MS });
      assert((await page.locator('#who .role').textContent()) === 'operator', 'role operator');
      assert(await alert.isHidden(), 'the error is gone');
    });

    await step('the plans page shows the plan waiting at its start gate', async () => {
      const row = main.locator(`tr[data-plan="${PLAN}"]`);
      await row.waitFor({ timeout: STEP_MS });
      await row.getByText('published', { exact: true }).waitFor({ timeout: STEP_MS });
      await row.getByText('gate before stage 0').waitFor({ timeout: STEP_MS });
      await shot(page, '02-plans');
      await row.getByRole('link', { name: PLAN }).click();
      await main.getByRole('heading', { name: `Plan ${PLAN}` }).waitFor({ timeout: STEP_MS });
    });

    await step('the operator approves the start gate (stage 0, canary)', async () => {
      const gate = main.locator('#gate');
      await gate.getByText('before stage 0 “canary”').waitFor({ timeout: STEP_MS });
      // From here to the pause, nothing reloads the page: what it shows comes by live updates.
      await page.evaluate(() => {
        window.e2eNotReloaded = true;
      });
      await main.getByRole('button', { name: 'Approve stage 0 (canary)' }).click();
      await main.locator('#action-result').getByText('the plan is now active').waitFor({ timeout: STEP_MS });
    });

    await step('the canary passes and the plan waits at the manual gate before stage 1', async () => {
      await main.locator('#gate').getByText('before stage 1 “fleet”').waitFor({ timeout: ROLLOUT_MS });
      const canary = main.locator('tr[data-stage="canary"]');
      await canary.getByText('passed', { exact: true }).waitFor({ timeout: STEP_MS });
      await canary.getByText(`${CANARY}/${CANARY}`).waitFor({ timeout: STEP_MS });
      await main.locator('#why-title + div').getByText('awaiting_approval').first().waitFor({ timeout: STEP_MS });
      await shot(page, '03-plan-gate');
    });

    const viewerPage = await context.newPage();
    openPages = [page, viewerPage];
    watch(viewerPage, 'viewer');
    const vmain = viewerPage.locator('main');

    await step('a viewer sees the waiting gate but no button to approve it', async () => {
      // A new tab has its own sessionStorage: the viewer signs in there.
      await viewerPage.goto(`${url}/ui/#/plans/${PLAN}`, { timeout: STEP_MS });
      await viewerPage.getByLabel('API token').fill(viewer);
      await viewerPage.getByRole('button', { name: 'Use token' }).click();
      await viewerPage.locator('#who').getByText('e2e-viewer').waitFor({ timeout: STEP_MS });
      assert((await viewerPage.locator('#who .role').textContent()) === 'viewer', 'role viewer');
      await vmain.locator('#gate').getByText('before stage 1 “fleet”').waitFor({ timeout: STEP_MS });
      await vmain.getByText('Your role cannot approve gates.').waitFor({ timeout: STEP_MS });
      assert((await vmain.getByRole('button', { name: ACTION_BUTTONS }).count()) === 0, 'no action button for a viewer');
      assert((await vmain.locator('#recovery-reason').count()) === 0, 'no recovery form for a viewer');
      await shot(viewerPage, '04-viewer-gate');
    });

    await step('the operator approves stage 1; the engine pauses the plan on failures', async () => {
      await main.getByRole('button', { name: 'Approve stage 1 (fleet)' }).click();
      await main.locator('#plan-phase').getByText('paused by engine: failure_threshold').waitFor({ timeout: ROLLOUT_MS });
      await main.locator('#plan-phase').getByText('paused', { exact: true }).waitFor({ timeout: STEP_MS });
    });

    await step('the page says why: failure_threshold_reached, with the failing devices', async () => {
      const why = main.locator('#why-title + div');
      await why.getByText('stuck: failure_threshold_reached').waitFor({ timeout: STEP_MS });
      await why.getByText('the failure threshold was reached').waitFor({ timeout: STEP_MS });
      // Devices in flight at the pause finish and count: wait until none is left.
      const fleet = main.locator('tr[data-stage="fleet"]');
      await fleet.locator('td.in-flight').getByText('0 in flight').waitFor({ timeout: ROLLOUT_MS });
      await fleet.getByText(`failed: ${failing.length}`).waitFor({ timeout: STEP_MS });
      assert(await page.evaluate(() => window.e2eNotReloaded === true), 'the page was never reloaded');
      await shot(page, '05-plan-paused');
      // What the README shows: the top of this page, as a person sees it.
      await page.screenshot({ path: join(ARTIFACTS, 'console.png') });
    });

    await step('the devices of the plan filter by state: exactly the failing ones are failed', async () => {
      await main.getByLabel('Device state').selectOption('failed');
      await main.getByText(`Devices of ${PLAN} in state failed (${failing.length} shown)`).waitFor({ timeout: STEP_MS });
      for (const d of failing) await main.locator(`tr[data-device="${d}"]`).waitFor({ timeout: STEP_MS });
    });

    await step('the viewer sees the engine pause but no resume, retry, rollback or abort', async () => {
      await vmain.locator('#plan-phase').getByText('paused by engine: failure_threshold').waitFor({ timeout: STEP_MS });
      assert((await vmain.getByRole('button', { name: ACTION_BUTTONS }).count()) === 0, 'no action button for a viewer');
      assert((await vmain.getByRole('radio').count()) === 0, 'no strategy to choose for a viewer');
      await shot(viewerPage, '06-viewer-paused');
    });

    await step('the stuck page groups the plan under failure_threshold_reached', async () => {
      await nav(page, 'Stuck');
      await main.getByLabel('Stuck after (seconds without progress)').fill('0');
      await main.getByRole('button', { name: 'Scan' }).click();
      const group = main.locator('section[data-code="failure_threshold_reached"]');
      await group.locator(`article[data-plan="${PLAN}"]`).waitFor({ timeout: STEP_MS });
      await group.getByText('retry re-dispatches the failed devices').first().waitFor({ timeout: STEP_MS });
      await group.getByText(`--strategy retry`).first().waitFor({ timeout: STEP_MS });
      await shot(page, '07-stuck');
    });

    await step(`the devices page lists the ${DEVICES} devices with labels and digests`, async () => {
      await nav(page, 'Devices');
      await main.getByLabel('Label selector').fill('fleet=e2e');
      await main.getByRole('button', { name: 'Apply' }).click();
      await main.getByText(`Devices matching fleet=e2e (${DEVICES} shown)`).waitFor({ timeout: STEP_MS });
      await main.getByText('ring=canary').first().waitFor({ timeout: STEP_MS });
      await shot(page, '08-devices');
    });

    await step('retry needs a reason, previews as a dry run, then applies on confirm', async () => {
      await page.goto(`${url}/ui/#/plans/${PLAN}`, { timeout: STEP_MS });
      await main.getByRole('heading', { name: `Plan ${PLAN}` }).waitFor({ timeout: STEP_MS });
      await main.getByRole('radio', { name: 'retry' }).check();
      await main.getByRole('button', { name: 'Preview (dry run)' }).click();
      await main.locator('#recovery-preview').getByText('A reason is required').waitFor({ timeout: STEP_MS });
      assert(await main.locator('#recovery-confirm').isHidden(), 'no confirm without a preview');
      await main.getByLabel(/^Reason/).fill('e2e: the failed devices get another attempt');
      await main.getByRole('button', { name: 'Preview (dry run)' }).click();
      await main.locator('#recovery-preview').getByText('retry would move the plan from paused to active').waitFor({ timeout: STEP_MS });
      // The dry run changed nothing.
      await main.locator('#plan-phase').getByText('paused', { exact: true }).waitFor({ timeout: STEP_MS });
      await shot(page, '09-retry-preview');
      await main.getByRole('button', { name: 'Confirm retry' }).click();
      await main.locator('#recovery-preview').getByText('success — paused → active').waitFor({ timeout: STEP_MS });
    });

    await step('the plan completes: every device verified', async () => {
      await main.locator('#plan-phase').getByText('completed', { exact: true }).waitFor({ timeout: ROLLOUT_MS });
      const fleet = main.locator('tr[data-stage="fleet"]');
      await fleet.getByText(`${DEVICES - CANARY}/${DEVICES - CANARY}`).waitFor({ timeout: STEP_MS });
      await fleet.getByText(`verified: ${DEVICES - CANARY}`).waitFor({ timeout: STEP_MS });
      await main.locator('#why-title + div').getByText('Nothing: the stuck scan does not report this plan').waitFor({ timeout: STEP_MS });
    });

    await step("the plan's audit trail shows the approvals and the retry, by the operator", async () => {
      const trail = main.locator('#trail-title + div');
      const retry = trail.locator('tr', { hasText: 'rollback.executed' });
      await retry.getByText('e2e: the failed devices get another attempt').waitFor({ timeout: STEP_MS });
      await retry.getByText('e2e-operator').waitFor({ timeout: STEP_MS });
      await trail.locator('tr', { hasText: 'rollout.gate_reached' }).first().waitFor({ timeout: STEP_MS });
      await shot(page, '10-plan-completed');
    });

    await step('the plans page filters by phase', async () => {
      await nav(page, 'Plans');
      await main.getByLabel('Phase', { exact: true }).selectOption('paused');
      await main.getByText('Plans in phase paused (0 shown)').waitFor({ timeout: STEP_MS });
      await main.getByLabel('Phase', { exact: true }).selectOption('completed');
      const row = main.locator(`tr[data-plan="${PLAN}"]`);
      await row.getByText('completed', { exact: true }).waitFor({ timeout: STEP_MS });
      await row.getByText(`${DEVICES - CANARY}/${DEVICES - CANARY}`).waitFor({ timeout: STEP_MS });
      await shot(page, '11-plans-completed');
    });

    await step('audit search finds the retry by event type and actor', async () => {
      await nav(page, 'Audit');
      await main.getByLabel('Event type').fill('rollback.executed');
      await main.getByLabel('Actor').fill('e2e-operator');
      await main.getByRole('button', { name: 'Search' }).click();
      await main.getByText('Audit events, oldest first (1 shown)').waitFor({ timeout: STEP_MS });
      await main.locator('tbody tr').getByText('success', { exact: true }).waitFor({ timeout: STEP_MS });
      await shot(page, '12-audit');
    });

    await step('a hidden tab is not polled, and refreshes as soon as it is visible again', async () => {
      const seen = [];
      const onRequest = (r) => {
        if (new URL(r.url()).pathname.startsWith('/v1/')) seen.push(Date.now());
      };
      page.on('request', onRequest);
      const setVisibility = (state) =>
        page.evaluate((v) => {
          Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => v });
          document.dispatchEvent(new Event('visibilitychange'));
        }, state);
      await setVisibility('hidden');
      const hiddenAt = Date.now();
      await page.locator('#live').getByText('paused while this tab is hidden').waitFor({ timeout: STEP_MS });
      // Absence can only be watched for a while: 2.5 refresh periods (a request already on its
      // way when the tab was hidden may still start within the first moment).
      await page.waitForTimeout(5000);
      const whileHidden = seen.filter((t) => t > hiddenAt + 500).length;
      assert(whileHidden === 0, `${whileHidden} API requests while hidden`);
      const shownAt = Date.now();
      await setVisibility('visible');
      await until('an API request once visible', 5000, () => seen.some((t) => t >= shownAt));
      page.off('request', onRequest);
    });

    await step('no page logged an error (CSP refusals, exceptions)', async () => {
      assert(pageErrors.length === 0, pageErrors.join('\n'));
    });
  } finally {
    await context.close();
  }
}

try {
  await main();
} catch {
  // Reported by its step.
} finally {
  await stopAll();
  if (failed > 0) log(`logs kept in ${work}`);
  else rmSync(work, { recursive: true, force: true });
  log(`screenshots in ${ARTIFACTS}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed > 0 || passed === 0 ? 1 : 0;
}
