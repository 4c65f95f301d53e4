// Browser test of the dashboard's sign-in with an OpenID provider (tests/ui/provider.mjs), in
// Debian's Chromium through playwright-core. Run: node tests/ui/signin.mjs
//
// Environment: JOBSTATS_URL (a serve configured with JOBSTATS_UI_OIDC_* for the provider and
// its JWKS URL), ISSUER (the provider's issuer), TENANT_A (alice's tenant), JOBS_A (JSON list of
// tenant A's job names), TENANTS (JSON list of every tenant with jobs), TOKEN_PASTE (an HS256
// token serve accepts), SCREENSHOT_DIR, optional CHROMIUM (default /usr/bin/chromium).
// The provider's access tokens must be short-lived (e.g. 20 s): one case waits for a renewal.
//
// Prints one line per case (`ok - name` / `not ok - name: reason`), then `N passed, M failed`;
// exits 1 when any case failed.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const T = 15000;

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
const ISSUER = env('ISSUER');
const ISSUER_ORIGIN = new URL(ISSUER).origin;
const TENANT_A = env('TENANT_A');
const JOBS_A = JSON.parse(env('JOBS_A'));
const TENANTS = JSON.parse(env('TENANTS'));
const TOKEN_PASTE = env('TOKEN_PASTE');
const SHOTS = env('SCREENSHOT_DIR', join(HERE, 'screenshots'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let passed = 0;
let failed = 0;
const fail = (msg) => {
  throw new Error(msg);
};
const assert = (cond, msg) => {
  if (!cond) fail(msg);
};

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

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** Script errors and CSP violations on jobstats' pages. */
const problems = [];
/** Every request the page made to the provider: {url, method, body}. */
const toProvider = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
  // Nothing leaves the machine: the provider's own pages would load a web font.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(`${BASE}/`) || url.startsWith(`${ISSUER_ORIGIN}/`) || url.startsWith('data:')) return route.continue();
    return route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && page.url().startsWith(BASE) && /Content Security Policy|Refused to/i.test(msg.text())) {
      problems.push(`CSP: ${msg.text()}`);
    }
  });
  page.on('request', (req) => {
    if (req.url().startsWith(`${ISSUER_ORIGIN}/`)) toProvider.push({ url: req.url(), method: req.method(), body: req.postData() || '' });
  });
  return page;
}

const visible = (page, sel) => page.waitForSelector(sel, { state: 'visible' });
const rowNames = (page) => page.$$eval('#jobs-body tr[data-job]', (rows) => rows.map((r) => r.dataset.job).sort());
const storedToken = (page) => page.evaluate(() => sessionStorage.getItem('jobstats.token'));
const claimsOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

async function waitRows(page, names) {
  await page.waitForFunction((want) => {
    const got = [...document.querySelectorAll('#jobs-body tr[data-job]')].map((r) => r.dataset.job).sort();
    return JSON.stringify(got) === JSON.stringify([...want].sort());
  }, names).catch(async () => fail(`jobs shown ${JSON.stringify(await rowNames(page))}, expected ${JSON.stringify([...names].sort())}`));
}

/** From the dashboard's sign-in view through the provider's login (and consent) pages, back. */
async function signInAs(page, user) {
  await visible(page, '#oidc-signin-button');
  await page.click('#oidc-signin-button');
  await page.waitForURL((url) => url.href.startsWith(ISSUER_ORIGIN));
  await visible(page, 'input[name="login"]');
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any password: development login');
  await page.click('button[type="submit"]');
  // The provider asks once for consent to the scopes; later sign-ins go straight back.
  await page.waitForURL((url) => url.href.startsWith(UI) || /interaction/.test(url.pathname));
  if (!page.url().startsWith(UI)) {
    await page.click('button[type="submit"]');
  }
  await page.waitForURL((url) => url.href.startsWith(UI));
  await visible(page, '#jobs-view');
}

mkdirSync(SHOTS, { recursive: true });
let page;

await check('the sign-in view offers "Sign in with" the provider\'s host', async () => {
  page = await newPage();
  await page.goto(UI);
  await visible(page, '#oidc-signin-button');
  const text = (await page.textContent('#oidc-signin-button')).trim();
  assert(text === `Sign in with ${new URL(ISSUER).host}`, `button says ${JSON.stringify(text)}`);
  assert(await page.isVisible('#token-input'), 'pasting a token is still offered');
  await page.screenshot({ path: join(SHOTS, 'signin-oidc.png') });
});

await check('alice signs in through the provider\'s login page and sees her tenant\'s jobs', async () => {
  await signInAs(page, 'alice');
  await waitRows(page, JOBS_A);
  assert((await page.textContent('#role-label')).trim() === 'system_admin', 'role label');
  assert((await page.textContent('#tenant-label')).trim() === TENANT_A, 'alice sees only her own tenant');
  assert(await page.isHidden('#tenant-picker'), 'a system_admin gets no tenant picker');
  const url = page.url();
  assert(!/[?&](code|state)=/.test(url), `the code is still in the address bar: ${url}`);
  const token = await storedToken(page);
  const claims = claimsOf(token);
  assert(claims.iss === ISSUER, `the stored token comes from ${claims.iss}`);
  const authorize = toProvider.find((r) => r.url.includes('/protocol/openid-connect/auth?'));
  assert(authorize, 'no authorization request was made');
  const params = new URL(authorize.url).searchParams;
  for (const p of ['state', 'nonce', 'code_challenge']) assert(params.get(p), `the authorization request has no ${p}`);
  assert(params.get('code_challenge_method') === 'S256', 'PKCE is not S256');
  assert(params.get('redirect_uri') === UI, `redirect_uri is ${params.get('redirect_uri')}`);
  const exchange = toProvider.find((r) => r.method === 'POST' && r.body.includes('grant_type=authorization_code'));
  assert(exchange && exchange.body.includes('code_verifier='), 'the code was not exchanged with its verifier');
  await page.screenshot({ path: join(SHOTS, 'jobs-oidc.png') });
});

await check('the access token is renewed with the refresh token before it expires', async () => {
  const first = await storedToken(page);
  const expiresAt = claimsOf(first).exp * 1000;
  await page.waitForFunction((old) => sessionStorage.getItem('jobstats.token') !== old, first, { timeout: Math.max(T, expiresAt - Date.now() + 5000) })
    .catch(() => fail('the token was not renewed'));
  const renewed = await storedToken(page);
  assert(Date.now() < expiresAt, 'renewed only after the old token expired');
  assert(claimsOf(renewed).exp > claimsOf(first).exp, 'the new token does not outlive the old one');
  assert(toProvider.some((r) => r.method === 'POST' && r.body.includes('grant_type=refresh_token')), 'no refresh-token request');
  // Past the old token's expiry the page is still signed in and reads with the new token.
  await page.waitForTimeout(Math.max(0, expiresAt - Date.now() + 1000));
  const answered = await page.waitForResponse((res) => res.url().startsWith(`${BASE}/api/v1/admin/jobs`)
    && res.request().headers().authorization === `Bearer ${renewed}`, { timeout: 12000 })
    .catch(() => fail('no poll with the renewed token'));
  // 304: unchanged since the last poll, which the server says only to an accepted token.
  assert([200, 304].includes(answered.status()), `the renewed token was answered ${answered.status()}`);
  assert(await page.isVisible('#jobs-view'), 'signed out at the old token\'s expiry');
  assert((await page.textContent('#tenant-label')).trim() === TENANT_A, 'the tenant changed on renewal');
});

await check('signing out ends the session at the provider too', async () => {
  await page.click('#signout');
  await page.waitForURL((url) => url.href.startsWith(ISSUER_ORIGIN));
  const logout = toProvider.find((r) => r.url.includes('/protocol/openid-connect/logout'));
  assert(logout && new URL(logout.url).searchParams.get('id_token_hint'), 'no end-session request with id_token_hint');
  await page.click('button[name="logout"]');
  await page.waitForURL((url) => url.href.startsWith(UI));
  await visible(page, '#signin-view');
  const message = (await page.textContent('#signin-message')).trim();
  assert(message === 'You signed out.', `message: ${JSON.stringify(message)}`);
  assert(!(await storedToken(page)), 'a token is still stored');
  // Signing in again asks for the login again: the provider forgot the session.
  await page.click('#oidc-signin-button');
  await page.waitForURL((url) => url.href.startsWith(ISSUER_ORIGIN));
  await visible(page, 'input[name="login"]');
  await page.goto(UI);
});

await check('a super_admin signed in through the provider picks the tenant', async () => {
  await visible(page, '#signin-view');
  await signInAs(page, 'root');
  await visible(page, '#tenant-picker');
  const options = await page.$$eval('#tenant-select option', (opts) => opts.map((o) => o.value).sort());
  assert(JSON.stringify(options) === JSON.stringify([...TENANTS].sort()), `tenants offered: ${options}`);
  assert((await page.textContent('#role-label')).trim() === 'super_admin', 'role label');
  await page.selectOption('#tenant-select', TENANT_A);
  await waitRows(page, JOBS_A);
  await page.context().close();
});

await check('pasting a token still signs in', async () => {
  const paste = await newPage();
  await paste.goto(UI);
  await visible(paste, '#token-input');
  await paste.fill('#token-input', TOKEN_PASTE);
  await paste.click('#signin-submit');
  await waitRows(paste, JOBS_A);
  await paste.context().close();
});

await check('no script error or CSP violation on the dashboard', async () => {
  const uniq = [...new Set(problems)];
  assert(!uniq.length, uniq.slice(0, 8).join('; '));
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
