// Browser test of the jobstats dashboard (/ui/), driving Debian's Chromium through
// playwright-core (no browser download). Run: node tests/ui/dashboard.mjs
//
// Environment: JOBSTATS_URL, TOKEN_SYSTEM (system_admin of tenant A), TOKEN_SUPER (super_admin),
// TOKEN_OTHER (system_admin of tenant B), TOKEN_EXPIRED, TENANT_A, TENANT_B, SCREENSHOT_DIR,
// EXPECT (JSON, computed from the API just before the run, see README of this folder or the
// comment at `expect` below), optional CHROMIUM (default /usr/bin/chromium).
//
// Prints one line per case (`ok - name` / `not ok - name: reason`), then `N passed, M failed`;
// exits 1 when any case failed.

import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const AXE_PATH = join(HERE, 'node_modules', 'axe-core', 'axe.min.js');
const T = 10000; // default wait for anything to appear

const env = (name, fallback) => {
  const v = process.env[name];
  if (v == null || v === '') {
    if (fallback !== undefined) return fallback;
    console.log(`not ok - environment: ${name} is not set`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  return v;
};

const BASE = env('JOBSTATS_URL').replace(/\/+$/, '');
const UI = `${BASE}/ui/`;
const TOKEN_SYSTEM = env('TOKEN_SYSTEM');
const TOKEN_SUPER = env('TOKEN_SUPER');
const TOKEN_OTHER = env('TOKEN_OTHER');
const TOKEN_EXPIRED = env('TOKEN_EXPIRED');
const TENANT_A = env('TENANT_A');
const TENANT_B = env('TENANT_B');
const SHOTS = env('SCREENSHOT_DIR', join(HERE, 'screenshots'));
/**
 * {
 *   jobs: {"<jobName>": {state, completed, failed, successRate ("99.8%" | null), p95Ms}, ...}  (tenant A)
 *   failingJob, failureMessage, failingCounts: {completed, failed},        (whole-stream queue counts)
 *   failingPercentiles: {p50Ms, p95Ms},                                     (whole-stream performance.percentiles)
 *   otherTenantJob, otherTenantJobs? (every job of tenant B, optional),
 *   unhealthyJobs: [...], healthyJobs: [...]                                (tenant A)
 * }
 */
const expect = JSON.parse(env('EXPECT'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let passed = 0;
let failed = 0;
const fail = (msg) => {
  throw new Error(msg);
};
const assert = (cond, msg) => {
  if (!cond) fail(msg);
};
const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok - ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    const msg = String((e && e.message) || e).split('\n').filter(Boolean).slice(0, 12).join('\n    ');
    console.log(`not ok - ${name}: ${msg}`);
  }
}

// ---------------------------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** Problems seen by any page: script errors, CSP violations, requests to other origins. */
const problems = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US', timezoneId: 'Europe/Paris' });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
  });
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(`${BASE}/`) && !url.startsWith('data:')) problems.push(`external request: ${url}`);
  });
  page.requests = [];
  page.on('request', (req) => page.requests.push({ url: req.url(), headers: req.headers() }));
  page.responses = [];
  page.on('response', (res) => page.responses.push({ url: res.url(), status: res.status() }));
  return page;
}

const visible = (page, sel) => page.waitForSelector(sel, { state: 'visible' });

/** Waits until the job list has finished its first load (rows, empty text or an error). */
async function jobsLoaded(page) {
  await visible(page, '#jobs-view');
  await page.waitForFunction(() => document.querySelector('#jobs-body tr')
    || !document.getElementById('jobs-empty').hidden
    || !document.getElementById('alert').hidden);
}

async function signIn(page, token) {
  await page.goto(`${UI}#token=${encodeURIComponent(token)}`);
  await jobsLoaded(page);
}

const rowNames = (page) => page.$$eval('#jobs-body tr[data-job]', (rows) => rows.map((r) => r.dataset.job));

async function waitRows(page, names, what) {
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll('#jobs-body tr[data-job]')].map((r) => r.dataset.job).sort();
      return JSON.stringify(got) === JSON.stringify([...want].sort());
    }, names, { timeout: T });
  } catch {
    fail(`${what}: expected ${JSON.stringify([...names].sort())}, shown ${JSON.stringify((await rowNames(page)).sort())}`);
  }
}

const AXE_SOURCE = readFileSync(AXE_PATH, 'utf8');
async function axe(page, label) {
  // The page's CSP (script-src 'self') refuses an injected <script> (addScriptTag); evaluating
  // the source through the DevTools protocol is not subject to it.
  await page.evaluate(AXE_SOURCE);
  const res = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  return res.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => ({ view: label, ...v }));
}

const statValue = (page, testid) => page.$eval(`[data-testid="${testid}"] .value`, (el) => ({ raw: el.dataset.value, text: el.textContent.trim() }));
const fmtDuration = (page, ms) => page.evaluate((v) => window.jobstatsFormat.fmtDuration(v), ms);
const jobHash = (name) => `#/jobs/${encodeURIComponent(name)}`;

const axeViolations = [];
const shots = {};
mkdirSync(SHOTS, { recursive: true });

// 1 -------------------------------------------------------------------------------------------
let main; // the system_admin page, reused by cases 2-5
await check('sign-in via #token= fragment shows the jobs view and removes the token from the URL', async () => {
  main = await newPage();
  await signIn(main, TOKEN_SYSTEM);
  const url = main.url();
  assert(!url.includes('token='), `the URL still holds a token: ${url}`);
  assert(!url.includes(TOKEN_SYSTEM.slice(0, 20)), 'the URL still holds the token');
  const hash = await main.evaluate(() => location.hash);
  assert(hash === '#/jobs', `hash is ${hash}, expected #/jobs`);
  const stored = await main.evaluate(() => sessionStorage.getItem('jobstats.token'));
  assert(stored === TOKEN_SYSTEM, 'the token is not in sessionStorage under jobstats.token');
  assert(await main.isHidden('#signin-view'), 'the sign-in view is still shown');
  const tenant = await main.textContent('#tenant-label');
  assert(tenant.trim() === TENANT_A, `tenant label is ${tenant}, expected ${TENANT_A}`);
  assert(await main.isHidden('#nav-projection'), 'a system_admin sees the Projection link');
});

// 2 -------------------------------------------------------------------------------------------
await check('the jobs view lists every expected job with its state and success rate', async () => {
  assert(main, 'no signed-in page');
  const names = Object.keys(expect.jobs || {});
  assert(names.length, 'EXPECT.jobs is empty');
  await main.waitForFunction((n) => n.every((name) => document.querySelector(`#jobs-body tr[data-job="${CSS.escape(name)}"]`)), names)
    .catch(async () => fail(`missing rows; shown: ${JSON.stringify(await rowNames(main))}`));
  // Compared again after the next 5 s refresh if anything differs (EXPECT may be newer than the page).
  let errors = await compareJobRows(main);
  if (errors.length) {
    await main.waitForTimeout(6000);
    errors = await compareJobRows(main);
  }
  assert(!errors.length, errors.join('; '));
  const total = await main.$eval('#jobs-total', (el) => Number(el.dataset.value));
  assert(total >= names.length, `total ${total} < ${names.length} expected jobs`);
});

async function compareJobRows(page) {
  const errors = [];
  for (const [name, want] of Object.entries(expect.jobs)) {
    const got = await page.$eval(`#jobs-body tr[data-job="${name.replace(/["\\]/g, '\\$&')}"]`, (tr) => ({
      state: tr.querySelector('[data-col="health"] .badge').dataset.state,
      stateText: tr.querySelector('[data-col="health"] .badge-label').textContent.trim(),
      icon: tr.querySelector('[data-col="health"] .badge-icon').textContent.trim(),
      rate: tr.querySelector('[data-col="successRate"] .rate').textContent.trim(),
      p95: tr.querySelector('[data-col="p95"]').dataset.value,
      completed: tr.dataset.completed,
      failed: tr.dataset.failed,
      link: tr.querySelector('[data-col="name"] a').getAttribute('href'),
    }));
    if (want.state != null && (got.state !== want.state || got.stateText !== want.state)) errors.push(`${name}: state ${got.stateText} (data-state ${got.state}), expected ${want.state}`);
    if (!got.icon) errors.push(`${name}: the state badge has no icon`);
    if (want.successRate !== undefined && got.rate !== (want.successRate ?? '—')) errors.push(`${name}: success rate ${got.rate}, expected ${want.successRate ?? '—'}`);
    if (want.p95Ms !== undefined && String(got.p95) !== String(want.p95Ms ?? '')) errors.push(`${name}: p95 ${got.p95}, expected ${want.p95Ms}`);
    if (want.completed !== undefined && Number(got.completed) !== want.completed) errors.push(`${name}: completed ${got.completed}, expected ${want.completed}`);
    if (want.failed !== undefined && Number(got.failed) !== want.failed) errors.push(`${name}: failed ${got.failed}, expected ${want.failed}`);
    if (got.link !== jobHash(name)) errors.push(`${name}: link ${got.link}`);
  }
  return errors;
}

// 2b ------------------------------------------------------------------------------------------
await check('the jobs view polls with If-None-Match and keeps its DOM on 304', async () => {
  assert(main, 'no signed-in page');
  // The list's ETag changes only with its data (a fire of the */5 cron, a verdict): of three
  // revalidations in a row at least two find it unchanged, so a 304 is required, not hoped for.
  const statuses = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    await main.evaluate(() => { document.querySelector('#jobs-body tr').dataset.marker = 'kept'; });
    const since = main.requests.length;
    const sinceRes = main.responses.length;
    let deadline = Date.now() + 8000;
    let poll;
    while (Date.now() < deadline && !poll) {
      await main.waitForTimeout(100);
      poll = main.requests.slice(since).find((r) => /\/api\/v1\/admin\/jobs\?/.test(r.url) && r.headers['if-none-match']);
    }
    assert(poll, 'no revalidation of the job list with If-None-Match within 8 s');
    deadline = Date.now() + 3000;
    let res;
    while (Date.now() < deadline && !res) {
      await main.waitForTimeout(50);
      res = main.responses.slice(sinceRes).find((r) => r.url === poll.url);
    }
    assert(res, `no answer to the revalidation ${poll.url}`);
    statuses.push(res.status);
    if (res.status === 304) {
      // Give the page the time a render would take before looking.
      await main.waitForTimeout(300);
      const kept = await main.$('#jobs-body tr[data-marker="kept"]');
      assert(kept, 'the table was re-rendered although the server answered 304');
      return;
    }
    assert(res.status === 200, `the revalidation answered ${res.status}`);
  }
  fail(`three revalidations in a row, no 304: ${statuses.join(', ')}`);
});

// 3 -------------------------------------------------------------------------------------------
await check('the "Needs attention" filter shows exactly the unhealthy jobs', async () => {
  assert(main, 'no signed-in page');
  await main.click('#chip-attention');
  assert(await main.getAttribute('#chip-attention', 'aria-pressed') === 'true', 'the chip is not aria-pressed');
  await waitRows(main, expect.unhealthyJobs || [], 'Needs attention');
  const req = main.requests.find((r) => r.url.includes('health=unknown%2Cstuck%2Cmissed%2Cfailing') || r.url.includes('health=unknown,stuck,missed,failing'));
  assert(req, 'no request with health=unknown,stuck,missed,failing');
  if (expect.healthyJobs) {
    await main.click('#chip-all');
    await main.click('#health-chips button[data-health="healthy"]');
    await waitRows(main, expect.healthyJobs, 'Healthy');
  }
  await main.click('#chip-all');
  assert(await main.getAttribute('#chip-all', 'aria-pressed') === 'true', '"All" is not pressed after clicking it');
  await jobsLoaded(main);
});

// 3b ------------------------------------------------------------------------------------------
const CSS_ESCAPE = (name) => name.replace(/["\\]/g, '\\$&');
/** The job list as the API answers it, read with the page's own session. */
async function apiJobs(page, query) {
  return page.evaluate(async ({ query, tenant }) => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem('jobstats.token')}`, 'x-tenantid': tenant };
    const res = await fetch(`../api/v1/admin/jobs?${query}`, { headers, cache: 'no-store' });
    if (res.status !== 200) throw new Error(`GET jobs?${query} answered ${res.status}`);
    return ((await res.json()).data || {}).jobs || [];
  }, { query, tenant: TENANT_A });
}

await check('the jobs view sorts worst first by default, by name on request, and says why a job is in trouble', async () => {
  assert(main, 'no signed-in page');
  assert(await main.inputValue('#jobs-sort') === 'health', `the default sort is ${await main.inputValue('#jobs-sort')}, expected health`);
  assert(main.requests.some((r) => /\/api\/v1\/admin\/jobs\?.*sort=health/.test(r.url) && /order=asc/.test(r.url)), 'no job-list request with sort=health&order=asc');
  const worst = (await apiJobs(main, 'sort=health&order=asc&limit=500')).map((j) => j.jobName);
  await main.waitForFunction((want) => JSON.stringify([...document.querySelectorAll('#jobs-body tr[data-job]')].map((r) => r.dataset.job)) === JSON.stringify(want), worst)
    .catch(async () => fail(`rows ${JSON.stringify(await rowNames(main))}, the API's worst-first order ${JSON.stringify(worst)}`));
  const unhealthy = new Set(expect.unhealthyJobs || []);
  assert(worst.slice(0, unhealthy.size).every((n) => unhealthy.has(n)), `the unhealthy jobs are not first: ${JSON.stringify(worst)}`);
  // The reason under the badge (when the list answers one) in the page's words; stuck ids.
  const errors = [];
  for (const j of await apiJobs(main, 'sort=health&order=asc&limit=500')) {
    const hl = j.health || {};
    const row = await main.$eval(`#jobs-body tr[data-job="${CSS_ESCAPE(j.jobName)}"]`, (tr) => {
      const el = tr.querySelector('[data-col="health"] [data-testid="job-row-reason"]');
      return el ? { text: el.textContent.trim(), title: el.getAttribute('title') } : null;
    });
    const quiet = hl.state === 'healthy' || hl.state === 'new';
    if (quiet && row) errors.push(`${j.jobName} (${hl.state}) shows a reason line: ${row.text}`);
    if (quiet) continue;
    if (typeof hl.reason === 'string' && hl.reason) {
      const words = await main.evaluate((r) => window.jobstatsFormat.fmtReason(r), hl.reason);
      if (!row || !row.text.includes(words)) errors.push(`${j.jobName}: reason line "${row && row.text}", expected "${words}"`);
      if (/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/.test(row ? row.text : '')) errors.push(`${j.jobName}: the reason line shows a raw ISO instant: ${row.text}`);
    }
    for (const id of hl.stuckExecutionIds || []) {
      if (!row || !row.text.includes(id)) errors.push(`${j.jobName}: stuck execution ${id} is not shown`);
    }
  }
  assert(!errors.length, errors.join('; '));
  await main.selectOption('#jobs-sort', 'name');
  const byName = (await apiJobs(main, 'sort=name&order=asc&limit=500')).map((j) => j.jobName);
  await main.waitForFunction((want) => JSON.stringify([...document.querySelectorAll('#jobs-body tr[data-job]')].map((r) => r.dataset.job)) === JSON.stringify(want), byName)
    .catch(async () => fail(`sorted by name: rows ${JSON.stringify(await rowNames(main))}, expected ${JSON.stringify(byName)}`));
  await main.selectOption('#jobs-sort', 'health');
  await main.waitForFunction((want) => JSON.stringify([...document.querySelectorAll('#jobs-body tr[data-job]')].map((r) => r.dataset.job)) === JSON.stringify(want), worst);
});

await check('reasons read in the page\'s words: local instants, page durations, plurals', async () => {
  assert(main, 'no signed-in page');
  const got = await main.evaluate(() => {
    const f = window.jobstatsFormat;
    const iso = '2026-12-06T21:00:18.100Z';
    const local = new Date(iso).toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', ...(new Date(iso).getFullYear() !== new Date().getFullYear() ? { year: 'numeric' } : {}) });
    return {
      local,
      failing: f.fmtReason(`The last 3 finished executions failed (the latest at ${iso}).`),
      one: f.fmtReason(`The last 1 finished execution failed (the latest at ${iso}).`),
      missed: f.fmtReason('No run started within 10m of the run due at 2026-12-06T21:00:00.000Z.'),
      stuck: f.fmtReason('Execution i1 has been processing for more than its maximum run time of 1h 2m.'),
      dur: [f.fmtDuration(600000), f.fmtDuration(3720000)],
      plural: [f.plural(1, 'execution'), f.plural(2, 'execution')],
    };
  });
  const errors = [];
  if (got.failing !== `The last 3 finished executions failed (the latest at ${got.local}).`) errors.push(`failing: ${got.failing}`);
  if (got.one !== `The last finished execution failed (the latest at ${got.local}).`) errors.push(`one: ${got.one}`);
  if (!got.missed.startsWith(`No run started within ${got.dur[0]} of the run due at `) || /T\d{2}:/.test(got.missed)) errors.push(`missed: ${got.missed}`);
  if (!got.stuck.endsWith(`run time of ${got.dur[1]}.`)) errors.push(`stuck: ${got.stuck}`);
  if (JSON.stringify(got.plural) !== JSON.stringify(['1 execution', '2 executions'])) errors.push(`plurals: ${got.plural}`);
  const reason = (await main.textContent('#jobs-body')) || '';
  if (/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/.test(reason)) errors.push('the jobs table shows a raw ISO instant');
  assert(!errors.length, errors.join('; '));
});

// 4 -------------------------------------------------------------------------------------------
await check('the failing job shows its failure message, counts and percentiles', async () => {
  assert(main, 'no signed-in page');
  const name = expect.failingJob;
  await main.waitForSelector(`#jobs-body tr[data-job="${name}"] a`);
  await main.click(`#jobs-body tr[data-job="${name}"] a`);
  await visible(main, '#job-content');
  assert((await main.evaluate(() => location.hash)) === jobHash(name), 'the link did not lead to the job route');
  assert((await main.textContent('#job-title')).trim() === name, 'wrong job title');
  const state = await main.getAttribute('#job-health .badge', 'data-state');
  assert(state === 'failing', `health badge ${state}, expected failing`);
  assert((await main.textContent('#job-reason')).trim().length > 0, 'no health reason shown');
  const reasonText = (await main.textContent('#job-reason')).trim();
  assert(!/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/.test(reasonText), `the reason shows a raw ISO instant: ${reasonText}`);
  await main.waitForFunction((msg) => [...document.querySelectorAll('#exec-body [data-col="error"]')].some((td) => td.textContent.includes(msg)), expect.failureMessage)
    .catch(() => fail(`"${expect.failureMessage}" is not in the executions table`));
  // The health-change timeline names the failing state it is in, newest first, and the
  // uptime figures are percentages (the job has been failing: below 100%).
  await main.waitForSelector('#flips li.flip')
    .catch(() => fail('the job page shows no health change'));
  const newestFlip = await main.getAttribute('#flips li.flip', 'data-state');
  assert(newestFlip === 'failing', `newest health change ${newestFlip}, expected failing`);
  await main.waitForFunction(() => /%$/.test(document.querySelector('[data-testid="uptime-24h"] .value')?.textContent.trim() || ''))
    .catch(() => fail('the job page shows no uptime figure'));
  const uptime = await statValue(main, 'uptime-24h');
  assert(/^\d+(\.\d)?%$/.test(uptime.text) && Number(uptime.raw) < 100, `uptime 24 h reads "${uptime.text}" (${uptime.raw})`);
  const failedRow = await main.$eval('#exec-body tr[data-status="failed"]', (tr) => tr.querySelector('[data-col="status"]').textContent.trim());
  assert(/failed/i.test(failedRow), 'a failed execution does not say "failed" in text');
  const errors = [];
  for (const k of ['completed', 'failed']) {
    const want = expect.failingCounts && expect.failingCounts[k];
    if (want == null) continue;
    const got = await statValue(main, `queue-${k}`);
    if (Number(got.raw) !== want) errors.push(`queue ${k} ${got.raw}, expected ${want}`);
    if (got.text !== String(want.toLocaleString('en-US'))) errors.push(`queue ${k} reads "${got.text}"`);
  }
  for (const k of ['p50Ms', 'p95Ms']) {
    const want = expect.failingPercentiles && expect.failingPercentiles[k];
    if (want === undefined) continue;
    const got = await statValue(main, `perf-${k.replace('Ms', '')}`);
    const text = await fmtDuration(main, want);
    if (String(got.raw ?? '') !== String(want ?? '')) errors.push(`${k} ${got.raw}, expected ${want}`);
    if (got.text !== text) errors.push(`${k} reads "${got.text}", expected "${text}"`);
  }
  assert(!errors.length, errors.join('; '));
  // The status filter narrows the table to failed runs, each with its message.
  await main.selectOption('#exec-status', 'failed');
  await main.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#exec-body tr')];
    return rows.length && rows.every((r) => r.dataset.status === 'failed');
  }).catch(() => fail('the status filter did not narrow the table to failed executions'));
  const emptyErrors = await main.$$eval('#exec-body tr', (rows) => rows.filter((r) => !r.querySelector('[data-col="error"] .error-text')).length);
  assert(emptyErrors === 0, `${emptyErrors} failed executions show no error message`);
  await main.selectOption('#exec-status', '');
});

// 4b ------------------------------------------------------------------------------------------
await check('a failed run shows its exit code and, opened, its output; the schedule names its zone', async () => {
  assert(main, 'no signed-in page');
  await visible(main, '#job-content');
  const row = '#exec-body tr[data-status="failed"]';
  await main.waitForSelector(`${row} [data-testid="exit-code"]`)
    .catch(() => fail('no failed execution shows an exit code'));
  const exit = (await main.textContent(`${row} [data-testid="exit-code"]`)).trim();
  assert(exit === `exit ${expect.failureExitCode}`, `exit code reads "${exit}", expected "exit ${expect.failureExitCode}"`);
  await main.click(`${row} details.output-more summary`);
  await main.waitForFunction((want) => (document.querySelector('#exec-body tr[data-status="failed"] [data-testid="exec-output"]')?.textContent || '').includes(want), expect.failureOutputLine)
    .catch(async () => fail(`the output reads "${await main.textContent(`${row} [data-testid="exec-output"]`)}", expected it to contain "${expect.failureOutputLine}"`));
  assert(main.requests.some((r) => /\/executions\/[^/?]+$/.test(r.url)), 'the output was not read from the one-execution endpoint');

  await main.goto(`${UI}${jobHash(expect.zonedJob)}`);
  await visible(main, '#job-content');
  await main.waitForFunction((zone) => (document.querySelector('[data-testid="schedule-words"] .value')?.textContent || '').includes(zone), expect.zone)
    .catch(async () => fail(`"in words" reads "${(await statValue(main, 'schedule-words')).text}", expected it to name ${expect.zone}`));
  const cron = (await statValue(main, 'schedule-cron')).text;
  assert(cron.includes(expect.zone) && !cron.includes('UTC'), `the cron line reads "${cron}"`);
  const alerts = (await statValue(main, 'schedule-alerts')).text;
  assert(alerts.includes(`after ${expect.zonedFailureThreshold} failures`), `the alert thresholds read "${alerts}"`);
  const labels = (await statValue(main, 'schedule-labels')).text;
  assert(labels.includes('team=payments'), `the labels read "${labels}"`);
  await main.goto(`${UI}${jobHash(expect.failingJob)}`);
  await visible(main, '#job-content');
});

// 4c ------------------------------------------------------------------------------------------
/** The failing job's health as the API answers it now. */
async function apiHealth(page, name) {
  return page.evaluate(async ({ name, tenant }) => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem('jobstats.token')}`, 'x-tenantid': tenant };
    const res = await fetch(`../api/v1/admin/jobs/${encodeURIComponent(name)}/stats`, { headers, cache: 'no-store' });
    return ((await res.json()).data || {}).health || {};
  }, { name, tenant: TENANT_A });
}

await check('silence buttons: 1 h shows in the job and the list, lifting clears it, "until lifted" stays', async () => {
  assert(main, 'no signed-in page');
  const name = expect.failingJob;
  await visible(main, '#job-content');
  assert(await main.isHidden('[data-testid="silence-state"]'), 'a silence is shown before any was set');
  const clicked = Date.now();
  await main.click('[data-testid="silence-1h"]');
  await visible(main, '[data-testid="silence-state"]')
    .catch(() => fail('the silence is not shown after "Silence 1 h"'));
  const hl = await apiHealth(main, name);
  const until = Date.parse(hl.silencedUntil);
  assert(Math.abs(until - (clicked + 3600e3)) < 60e3, `silencedUntil ${hl.silencedUntil} is not an hour after the click`);
  assert(hl.state === 'failing', `a silenced job is judged as always: ${hl.state}`);
  const shown = (await main.textContent('[data-testid="silence-state"]')).trim();
  assert(/silenced until/i.test(shown) && shown.includes('1 hour'), `the silence reads "${shown}"`);
  assert(await main.isVisible('[data-testid="silence-lift"]'), 'no button lifts the silence');
  await main.goto(`${UI}#/jobs`);
  await main.waitForSelector(`#jobs-body tr[data-job="${CSS_ESCAPE(name)}"] [data-testid="job-row-silenced"]`)
    .catch(() => fail('the job list does not mark the job silenced'));
  await main.goto(`${UI}${jobHash(name)}`);
  await visible(main, '[data-testid="silence-lift"]');
  await main.click('[data-testid="silence-lift"]');
  await main.waitForSelector('[data-testid="silence-state"]', { state: 'hidden' })
    .catch(() => fail('the silence is still shown after lifting it'));
  assert(!(await apiHealth(main, name)).silencedUntil, 'the API still answers a silence after lifting');
  await main.click('[data-testid="silence-lifted"]');
  await main.waitForFunction(() => /until lifted/.test(document.querySelector('[data-testid="silence-state"]')?.textContent || ''))
    .catch(() => fail('"Silence until lifted" is not shown as until lifted'));
  assert(Date.parse((await apiHealth(main, name)).silencedUntil) > Date.now() + 50 * 365 * 86400e3, 'an open-ended silence is not far in the future');
  await main.click('[data-testid="silence-lift"]');
  await main.waitForSelector('[data-testid="silence-state"]', { state: 'hidden' });
});

// 5 -------------------------------------------------------------------------------------------
await check('the window selector reloads the series and redraws the chart (24h -> 7d, by keyboard)', async () => {
  assert(main, 'no signed-in page');
  await visible(main, '#job-content');
  if (!(await main.isChecked('#window-24h'))) await main.click('label[for="window-24h"]');
  await main.waitForSelector('#series-chart[data-window="24h"] canvas', { state: 'attached' });
  const before = await main.$$eval('#series-body tr', (r) => r.length);
  const beforeBuckets = Number(await main.getAttribute('#series-chart', 'data-bucket-count'));
  assert(before === beforeBuckets && before > 0, `24h: table rows ${before}, chart buckets ${beforeBuckets}`);
  const since = main.requests.length;
  await main.focus('#window-24h');
  await main.keyboard.press('ArrowRight');
  assert(await main.isChecked('#window-7d'), 'ArrowRight on the 24h radio did not select 7d');
  await main.waitForSelector('#series-chart[data-window="7d"] canvas', { state: 'attached' });
  const after = await main.$$eval('#series-body tr', (r) => r.length);
  const afterBuckets = Number(await main.getAttribute('#series-chart', 'data-bucket-count'));
  assert(after === afterBuckets, `7d: table rows ${after} but chart buckets ${afterBuckets}`);
  assert(after !== before, `the bucket count did not change (${before} -> ${after})`);
  const reqs = main.requests.slice(since).map((r) => r.url);
  assert(reqs.some((u) => /\/series\?window=7d/.test(u)), 'no request for series?window=7d');
  assert(reqs.some((u) => /\/stats\?window=7d/.test(u)), 'no request for stats?window=7d');
  const label = await main.getAttribute('#series-chart', 'aria-label');
  assert(/7 days/.test(label), `chart aria-label does not name the window: ${label}`);
  await main.click('label[for="window-24h"]');
  await main.waitForSelector('#series-chart[data-window="24h"] canvas', { state: 'attached' });
});

// 5b ------------------------------------------------------------------------------------------
/** Buckets of the series API with completed > 0 / failed > 0, read with the page's own session. */
async function seriesCounts(page, name, win) {
  return page.evaluate(async ({ name, win, tenant }) => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem('jobstats.token')}`, 'x-tenantid': tenant };
    const res = await fetch(`../api/v1/admin/jobs/${encodeURIComponent(name)}/series?window=${win}`, { headers, cache: 'no-store' });
    const body = await res.json();
    const buckets = (body.data && body.data.buckets) || [];
    return {
      status: res.status,
      buckets: buckets.length,
      completed: buckets.filter((b) => b.completed > 0).length,
      failed: buckets.filter((b) => b.failed > 0).length,
    };
  }, { name, win, tenant: TENANT_A });
}

await check('the chart draws one whole bar per bucket with runs, as the series API says, in every window', async () => {
  assert(main, 'no signed-in page');
  const name = expect.failingJob;
  await main.goto(`${UI}${jobHash(name)}`);
  await visible(main, '#job-content');
  const errors = [];
  let sawFailed = false;
  for (const win of ['1h', '24h', '7d', '30d']) {
    await main.click(`label[for="window-${win}"]`);
    await main.waitForSelector(`#series-chart[data-window="${win}"][data-bars-completed] canvas`, { state: 'attached' });
    // The data may move on (a bucket ends) between the API read and the draw: compare again
    // until both agree or 10 s pass, reading the API anew each time.
    const deadline = Date.now() + T;
    let want;
    let got;
    for (;;) {
      want = await seriesCounts(main, name, win);
      got = await main.$eval('#series-chart', (el) => ({
        window: el.dataset.window,
        buckets: Number(el.dataset.bucketCount),
        completed: Number(el.dataset.barsCompleted),
        failed: Number(el.dataset.barsFailed),
        clipped: Number(el.dataset.barsClipped),
      }));
      const agree = want.status === 200 && got.window === win && got.buckets === want.buckets
        && got.completed === want.completed && got.failed === want.failed && got.clipped === 0;
      if (agree || Date.now() > deadline) break;
      await main.waitForFunction((g) => {
        const el = document.getElementById('series-chart');
        return el.dataset.barsCompleted !== String(g.completed) || el.dataset.barsFailed !== String(g.failed) || el.dataset.bucketCount !== String(g.buckets);
      }, got, { timeout: 1000 }).catch(() => {});
    }
    if (want.status !== 200) errors.push(`${win}: the series API answered ${want.status}`);
    if (got.completed !== want.completed) errors.push(`${win}: ${got.completed} green bars drawn inside the plot, the API has ${want.completed} buckets with completed > 0`);
    if (got.failed !== want.failed) errors.push(`${win}: ${got.failed} red bars drawn inside the plot, the API has ${want.failed} buckets with failed > 0`);
    if (got.clipped) errors.push(`${win}: ${got.clipped} bars cut by or outside the plot area`);
    if (want.failed) sawFailed = true;
  }
  assert(sawFailed, `${name} has no failed bucket in any window: the check compared nothing red`);
  assert(!errors.length, errors.join('; '));
  await main.click('label[for="window-24h"]');
  await main.waitForSelector('#series-chart[data-window="24h"] canvas', { state: 'attached' });
});

await check('with nothing hovered the chart legend shows the latest bucket, not zeros', async () => {
  assert(main, 'no signed-in page');
  await main.mouse.move(0, 0);
  const rows = await main.$$eval('#series-body tr', (r) => r.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent.trim())));
  assert(rows.length, 'no bucket in the data table');
  const latest = rows[rows.length - 1];
  const legend = await main.$$eval('#series-chart .u-legend .u-series .u-value', (v) => v.map((x) => x.textContent.trim()));
  // Legend: time, completed, failed, p50, p95; table: completed, failed, p50, p95.
  assert(legend.length === 5, `legend values ${JSON.stringify(legend)}`);
  assert(legend[0] !== '—', `the legend names no bucket: ${JSON.stringify(legend)}`);
  assert(JSON.stringify(legend.slice(1)) === JSON.stringify(latest), `legend ${JSON.stringify(legend)}, the latest bucket reads ${JSON.stringify(latest)}`);
});

// 6 -------------------------------------------------------------------------------------------
await check('a system_admin of tenant A cannot read tenant B; tenant B sees only its jobs', async () => {
  const other = expect.otherTenantJob;
  assert(other, 'EXPECT.otherTenantJob is missing');
  const page = await newPage();
  await signIn(page, TOKEN_SYSTEM);
  // (a) the tenant switched to B (a link with ?tenant=B, as stored in sessionStorage): 403, nothing of B shown.
  await page.goto(`${UI}#/jobs?tenant=${TENANT_B}`);
  await visible(page, '#alert');
  assert(await page.evaluate(() => sessionStorage.getItem('jobstats.tenant')) === TENANT_B, 'the tenant choice is not in sessionStorage');
  await page.waitForFunction((b) => document.getElementById('alert').textContent.includes(`You may not read tenant ${b}`), TENANT_B)
    .catch(async () => fail(`alert reads "${await page.textContent('#alert')}"`));
  assert((await rowNames(page)).length === 0, 'rows are shown for a forbidden tenant');
  // (b) a deep link to B's job with ?tenant=B: 403 again, no job data.
  await page.goto(`${UI}#/jobs/${encodeURIComponent(other)}?tenant=${TENANT_B}`);
  await visible(page, '#job-view');
  await page.waitForFunction(() => !document.getElementById('alert').hidden && /You may not read tenant/.test(document.getElementById('alert').textContent));
  assert(await page.isHidden('#job-content'), 'job data is shown for a forbidden tenant');
  // (c) B's job under the token's own tenant: not found, no data.
  await page.goto(`${UI}#/jobs?tenant=${TENANT_A}`);
  await jobsLoaded(page);
  await page.waitForSelector(`#jobs-body tr[data-job="${expect.failingJob}"]`);
  assert(!(await rowNames(page)).includes(other), `${other} is listed in tenant A`);
  await page.goto(`${UI}${jobHash(other)}`);
  await page.waitForFunction(() => !document.getElementById('alert').hidden);
  assert(await page.isHidden('#job-content'), `${other}'s data is shown under tenant A`);
  await page.context().close();

  // (d) tenant B's own admin sees B's job and none of A's.
  const pageB = await newPage();
  await signIn(pageB, TOKEN_OTHER);
  await pageB.waitForSelector(`#jobs-body tr[data-job="${other}"]`).catch(async () => fail(`${other} is not listed for TOKEN_OTHER: ${JSON.stringify(await rowNames(pageB))}`));
  const shown = await rowNames(pageB);
  if (expect.otherTenantJobs) {
    assert(same(shown, expect.otherTenantJobs), `tenant B shows ${JSON.stringify(shown)}, expected ${JSON.stringify(expect.otherTenantJobs)}`);
  }
  // Names that belong to tenant A only (a name may exist in both tenants, e.g. tokenExpiry).
  const aOnly = expect.otherTenantJobs
    ? Object.keys(expect.jobs || {}).filter((n) => !expect.otherTenantJobs.includes(n))
    : [expect.failingJob, ...(expect.unhealthyJobs || [])].filter((n) => n && n !== other);
  const leaked = [...new Set(aOnly)].filter((n) => shown.includes(n));
  assert(!leaked.length, `tenant A's jobs shown to tenant B: ${leaked.join(', ')}`);
  assert((await pageB.textContent('#tenant-label')).trim() === TENANT_B, 'tenant label is not tenant B');
  await pageB.context().close();
});

// 7 -------------------------------------------------------------------------------------------
await check('an expired or rejected token ends on the sign-in view with a message', async () => {
  const page = await newPage();
  await page.goto(`${UI}#token=${encodeURIComponent(TOKEN_EXPIRED)}`);
  await visible(page, '#signin-view');
  await visible(page, '#signin-message');
  const msg = (await page.textContent('#signin-message')).trim();
  assert(/expired/i.test(msg), `message: "${msg}"`);
  assert(!page.url().includes('token='), `the URL still holds the token: ${page.url()}`);
  assert(await page.evaluate(() => sessionStorage.getItem('jobstats.token')) === null, 'the expired token was stored');
  assert(await page.isHidden('#jobs-view'), 'the jobs view is shown');
  // A well-formed, unexpired token with a bad signature: the API answers 401.
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const forged = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'ui-test', roles: ['system_admin'], tenant_id: TENANT_A, exp: Math.floor(Date.now() / 1000) + 3600 })}.${Buffer.from('not-a-signature').toString('base64url')}`;
  await page.goto(`${UI}#token=${encodeURIComponent(forged)}`);
  await page.waitForFunction(() => !document.getElementById('signin-view').hidden && !document.getElementById('signin-message').hidden);
  assert(await page.evaluate(() => sessionStorage.getItem('jobstats.token')) === null, 'the rejected token stayed stored');
  // The sign-in form works too, and sign-out returns to it.
  await page.fill('#token-input', TOKEN_SYSTEM);
  await page.click('#signin-submit');
  await jobsLoaded(page);
  await page.click('#signout');
  await visible(page, '#signin-view');
  assert(await page.evaluate(() => sessionStorage.getItem('jobstats.token')) === null, 'sign-out kept the token');
  await page.context().close();
});

// 8 -------------------------------------------------------------------------------------------
await check('super_admin picks a tenant and sees the projection with dead letters', async () => {
  const page = await newPage();
  await signIn(page, TOKEN_SUPER);
  await visible(page, '#tenant-select');
  const options = await page.$$eval('#tenant-select option', (o) => o.map((x) => x.value));
  assert(options.includes(TENANT_A) && options.includes(TENANT_B), `tenant options ${JSON.stringify(options)}`);
  await page.selectOption('#tenant-select', TENANT_B);
  await page.waitForSelector(`#jobs-body tr[data-job="${expect.otherTenantJob}"]`);
  assert(await page.evaluate(() => sessionStorage.getItem('jobstats.tenant')) === TENANT_B, 'the choice is not remembered');
  await page.selectOption('#tenant-select', TENANT_A);
  await page.waitForSelector(`#jobs-body tr[data-job="${expect.failingJob}"]`);
  await visible(page, '#nav-projection');
  await page.click('#nav-projection');
  await visible(page, '#projection-content');
  const seq = await statValue(page, 'proj-appliedSequence');
  assert(Number(seq.raw) > 0, `applied sequence ${seq.raw}`);
  assert(seq.text && seq.text !== '—', 'applied sequence not shown');
  const dl = await statValue(page, 'proj-deadLetters');
  assert(dl.raw != null && Number.isFinite(Number(dl.raw)), `dead letters total ${dl.raw}`);
  if (expect.deadLetters != null) assert(Number(dl.raw) === expect.deadLetters, `dead letters ${dl.raw}, expected ${expect.deadLetters}`);
  const reasons = await page.$$eval('#dl-reasons-body tr', (r) => r.map((x) => ({ code: x.dataset.reason, count: Number(x.querySelector('td').dataset.value) })));
  const sum = reasons.reduce((a, r) => a + r.count, 0);
  assert(sum === Number(dl.raw), `by-reason counts add up to ${sum}, total is ${dl.raw}`);
  const rows = await page.$$eval('#dl-body tr', (r) => r.length);
  if (Number(dl.raw) > 0) {
    assert(rows > 0, 'no dead letter listed although the total is not 0');
    const code = reasons[0].code;
    await page.selectOption('#dl-reason', code);
    await page.waitForFunction((c) => {
      const r = [...document.querySelectorAll('#dl-body tr')];
      return r.length && r.every((tr) => tr.querySelector('td code').textContent === c);
    }, code).catch(() => fail(`the reason filter ${code} did not narrow the list`));
  } else {
    assert(await page.isVisible('#dl-empty'), 'no empty-state text for zero dead letters');
  }
  await page.context().close();
});

// 8b ------------------------------------------------------------------------------------------
await check('a reload keeps the session and the view', async () => {
  const page = await newPage();
  await signIn(page, TOKEN_SYSTEM);
  await page.goto(`${UI}${jobHash(expect.failingJob)}`);
  await visible(page, '#job-content');
  // The browser revalidates /ui/ and its files with If-None-Match: that must answer 304 or 200.
  const res = await page.reload();
  assert(res && res.status() < 400, `reloading /ui/ answered ${res && res.status()} (the conditional GET of the page must work)`);
  await visible(page, '#job-content');
  assert(await page.isHidden('#signin-view'), 'a reload signed the user out');
  assert((await page.textContent('#job-title')).trim() === expect.failingJob, 'a reload lost the job view');
  await page.context().close();
});

// 9 & 10: a tour of every view (axe scan + screenshot) --------------------------------------
await check('axe-core finds no serious or critical violation on any view', async () => {
  const page = await newPage();
  await page.goto(UI);
  await visible(page, '#signin-view');
  axeViolations.push(...await axe(page, 'sign-in'));
  await page.screenshot({ path: join(SHOTS, 'signin.png') });
  shots.signin = true;

  await signIn(page, TOKEN_SYSTEM);
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll('#jobs-body td[data-col="trend"]')];
    return cells.length && cells.every((c) => c.querySelector('svg'));
  }).catch(() => {});
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  axeViolations.push(...await axe(page, 'jobs'));
  await page.screenshot({ path: join(SHOTS, 'jobs.png') });
  shots.jobs = true;

  await page.goto(`${UI}${jobHash(expect.failingJob)}`);
  await visible(page, '#job-content');
  await page.waitForSelector('#series-chart canvas', { state: 'attached' });
  await page.waitForSelector('#exec-body tr');
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  axeViolations.push(...await axe(page, 'job'));
  await page.screenshot({ path: join(SHOTS, 'job.png'), fullPage: true });
  shots.job = true;
  await page.context().close();

  const sup = await newPage();
  await signIn(sup, TOKEN_SUPER);
  await sup.click('#nav-projection');
  await visible(sup, '#projection-content');
  await sup.evaluate(() => document.activeElement && document.activeElement.blur());
  axeViolations.push(...await axe(sup, 'projection'));
  await sup.screenshot({ path: join(SHOTS, 'projection.png'), fullPage: true });
  shots.projection = true;
  await sup.context().close();

  assert(!axeViolations.length, `\n${axeViolations.map((v) => `[${v.view}] ${v.impact} ${v.id}: ${v.help} at ${v.nodes.join(' | ')}`).join('\n')}`);
});

await check('a 1280x800 screenshot of each view is saved', async () => {
  const missing = [];
  for (const f of ['signin', 'jobs', 'job', 'projection']) {
    const path = join(SHOTS, `${f}.png`);
    try {
      if (!shots[f] || statSync(path).size < 5000) missing.push(f);
    } catch {
      missing.push(f);
    }
  }
  assert(!missing.length, `missing or empty: ${missing.join(', ')} in ${SHOTS}`);
});

await check('no script error, CSP violation or request to another origin', async () => {
  const uniq = [...new Set(problems)];
  assert(!uniq.length, uniq.slice(0, 8).join('; '));
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
