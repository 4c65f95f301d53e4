// jobstats dashboard: a plain ES module, no framework, no build step.
// Every piece of API data reaches the page through textContent / attributes, never HTML.

const TOKEN_KEY = 'jobstats.token';
const TENANT_KEY = 'jobstats.tenant';
/** The signed-in provider session: {refreshToken, idToken}. */
const OIDC_KEY = 'jobstats.oidc';
/** A sign-in on its way through the provider: {state, nonce, verifier, returnTo}. */
const OIDC_PENDING_KEY = 'jobstats.oidc.pending';
/** Set before the provider's sign-out page, so the page it sends back to can say so. */
const SIGNED_OUT_KEY = 'jobstats.signedOut';
const WINDOW_KEY = 'jobstats.window';
const API_BASE = new URL('../api/v1/admin/', document.baseURI);
const POLL_MS = 5000;
const JOBS_PAGE = 100;
const EXEC_PAGE = 20;
const FLIPS_SHOWN = 20;
const DL_PAGE = 20;
const SPARK_RUNS = 20;
const WINDOWS = ['1h', '24h', '7d', '30d'];
const WINDOW_WORDS = { '1h': 'the last hour', '24h': 'the last 24 hours', '7d': 'the last 7 days', '30d': 'the last 30 days' };

const STATES = {
  healthy: { icon: '✓', label: 'healthy' },
  new: { icon: '•', label: 'new' },
  unknown: { icon: '?', label: 'unknown' },
  stuck: { icon: '⚠', label: 'stuck' },
  missed: { icon: '◷', label: 'missed' },
  failing: { icon: '✖', label: 'failing' },
};
const EXEC_STATES = {
  pending: { icon: '…', label: 'pending' },
  processing: { icon: '▶', label: 'processing' },
  completed: { icon: '✓', label: 'completed' },
  failed: { icon: '✖', label: 'failed' },
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Formatting (exported on window.jobstatsFormat for tests and the console).

export function fmtDuration(ms) {
  if (ms == null || !Number.isFinite(Number(ms))) return '—';
  ms = Math.max(0, Math.round(Number(ms)));
  if (ms < 1000) return `${ms} ms`;
  if (ms < 10000) return `${(Math.floor(ms / 100) / 10).toFixed(1)} s`;
  let s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  let m = Math.floor(s / 60);
  s %= 60;
  if (m < 60) return s ? `${m} m ${s} s` : `${m} m`;
  let hrs = Math.floor(m / 60);
  m %= 60;
  if (hrs < 24) return m ? `${hrs} h ${m} m` : `${hrs} h`;
  const d = Math.floor(hrs / 24);
  hrs %= 24;
  return hrs ? `${d} d ${hrs} h` : `${d} d`;
}

export function fmtRelative(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '—';
  const diff = t - now;
  const abs = Math.abs(diff);
  let text;
  if (abs < 45 * 1000) return diff <= 0 ? 'just now' : 'in a moment';
  const min = Math.max(1, Math.round(abs / 60000));
  if (min < 60) text = `${min} min`;
  else if (min < 6 * 60) text = min % 60 ? `${Math.floor(min / 60)} h ${min % 60} min` : `${min / 60} h`;
  else if (abs < 48 * 3600 * 1000) text = `${Math.round(abs / 3600000)} h`;
  else text = `${Math.round(abs / 86400000)} d`;
  return diff < 0 ? `${text} ago` : `in ${text}`;
}

export function fmtNumber(n) {
  if (n == null || !Number.isFinite(Number(n))) return '—';
  return Number(n).toLocaleString();
}

export function fmtBytes(n) {
  if (n == null) return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fmtLocal(d, withSeconds = true) {
  const opts = { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
  if (withSeconds) opts.second = '2-digit';
  if (d.getFullYear() !== new Date().getFullYear()) opts.year = 'numeric';
  return d.toLocaleString(undefined, opts);
}

/** "1 execution", "2 executions" (the plural form given when it is not the singular + "s"). */
export function plural(n, one, many = `${one}s`) {
  return `${fmtNumber(n)} ${Number(n) === 1 ? one : many}`;
}

// An RFC 3339 instant (as the API writes them in reasons) or an API duration ("850ms", "45s",
// "10m", "2m 5s", "1h", "1h 2m", "3d").
const REASON_TOKENS = new RegExp(
  String.raw`(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))`
  + String.raw`|\b(?:(\d+)d(?: (\d+)h)?|(\d+)h(?: (\d+)m)?|(\d+)m(?: (\d+)s)?|(\d+)s|(\d+)ms)\b`, 'g');

/**
 * An API `health.reason` (machine-stable English, ISO UTC instants, "10m" durations) in the
 * page's words: instants in the viewer's zone and style, durations as everywhere on the page.
 */
export function fmtReason(text) {
  if (text == null) return '';
  return String(text)
    .replace(REASON_TOKENS, (all, iso, d, dh, hr, hm, m, ms, s, milli) => {
      if (iso) {
        const t = new Date(iso);
        return Number.isNaN(t.getTime()) ? all : fmtLocal(t);
      }
      const n = (v) => Number(v || 0);
      let total;
      if (d != null) total = (n(d) * 24 + n(dh)) * 3600000;
      else if (hr != null) total = (n(hr) * 60 + n(hm)) * 60000;
      else if (m != null) total = (n(m) * 60 + n(ms)) * 1000;
      else if (s != null) total = n(s) * 1000;
      else total = n(milli);
      return fmtDuration(total);
    })
    .replace(/\bThe last 1 finished execution\b/g, 'The last finished execution');
}

window.jobstatsFormat = { fmtDuration, fmtRelative, fmtNumber, fmtBytes, fmtReason, plural };

// ---------------------------------------------------------------------------------------------
// DOM helpers.

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function dash() {
  return h('span', { class: 'muted', 'aria-label': 'none' }, '—');
}

/** A `<time>` in the viewer's zone whose title (hover) shows the UTC instant. */
function timeEl(iso, { relative = false, seconds = true } = {}) {
  if (!iso) return dash();
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return document.createTextNode(String(iso));
  const utc = d.toISOString();
  const el = h('time', { datetime: utc, title: `${utc} (UTC)` });
  if (relative) {
    el.dataset.relative = '1';
    el.textContent = fmtRelative(utc);
    el.title = `${fmtLocal(d)} · ${utc} (UTC)`;
  } else {
    el.textContent = fmtLocal(d, seconds);
  }
  return el;
}

function refreshRelativeTimes() {
  for (const el of document.querySelectorAll('time[data-relative]')) {
    const text = fmtRelative(el.dateTime);
    if (el.textContent !== text) el.textContent = text;
  }
}

function badge(state, table = STATES, extraClass = 'badge') {
  const info = table[state] || { icon: '?', label: state || 'unknown' };
  return h('span', { class: `${extraClass} state-${state || 'unknown'}`, 'data-state': state || '' },
    h('span', { class: 'badge-icon', 'aria-hidden': 'true' }, info.icon),
    h('span', { class: 'badge-label' }, info.label));
}

function setStat(testid, raw, content) {
  const box = document.querySelector(`[data-testid="${testid}"]`);
  if (!box) return;
  const dd = box.querySelector('.value');
  if (raw == null) delete dd.dataset.value;
  else dd.dataset.value = typeof raw === 'object' ? JSON.stringify(raw) : String(raw);
  dd.replaceChildren(content instanceof Node ? content : document.createTextNode(content == null ? '—' : String(content)));
}

/** Replaces a table body, keeping keyboard focus on the same logical element if it was inside. */
function replaceRows(tbody, rows) {
  const active = document.activeElement;
  const key = active && tbody.contains(active) ? active.dataset.focusKey : null;
  tbody.replaceChildren(...rows);
  if (key) {
    const again = tbody.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Messages.

/** Says something in the polite live region (screen readers read it when idle). */
function announce(text) {
  const el = $('status');
  if (el.textContent !== text) el.textContent = text;
}
/**
 * Shows when the data last changed. Announced only after something the user did (a filter, a
 * page, a window); the 5 s refresh updates the visible time silently, so a screen reader is not
 * interrupted every few seconds.
 */
function announceUpdated(poll = false) {
  const t = new Date().toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  $('updated').textContent = `Updated ${t}`;
  if (!poll) announce(`Updated ${t}`);
}
function showError(text) {
  const el = $('alert');
  if (el.textContent !== text) el.textContent = text;
  el.hidden = false;
}
function clearError() {
  const el = $('alert');
  if (!el.hidden) {
    el.hidden = true;
    el.textContent = '';
  }
}

// ---------------------------------------------------------------------------------------------
// Session: token, claims, tenant.

const session = {
  token: null,
  claims: null,
  roles: new Set(),
  tenant: null,
  tenants: null,
  expiryTimer: null,
};

function b64urlJson(part) {
  let s = part.replace(/-/g, '+').replace(/_/g, '/');
  while (s.length % 4) s += '=';
  const bin = atob(s);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** Reads the payload of a JWT without verifying it (the server does that). */
export function decodeJwt(token) {
  const parts = String(token).trim().split('.');
  if (parts.length !== 3) throw new Error('A JWT has three dot-separated parts.');
  const payload = b64urlJson(parts[1]);
  if (!payload || typeof payload !== 'object') throw new Error('The token payload is not a JSON object.');
  return payload;
}

function rolesOf(claims) {
  const out = new Set();
  const add = (list) => Array.isArray(list) && list.forEach((r) => typeof r === 'string' && out.add(r));
  add(claims.roles);
  add(claims.realm_access && claims.realm_access.roles);
  return out;
}

function isExpired(claims) {
  return typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now();
}

function isSuper() {
  return session.roles.has('super_admin');
}

/**
 * Validates and stores a token; returns an error sentence or null. A renewal keeps the chosen
 * tenant and the provider session; anything else (a pasted token, a new sign-in) starts afresh.
 */
function acceptToken(raw, { renewal = false } = {}) {
  const token = String(raw || '').trim().replace(/^Bearer\s+/i, '');
  if (!token) return 'Paste a token first.';
  let claims;
  try {
    claims = decodeJwt(token);
  } catch (e) {
    return `This is not a readable JWT: ${e.message}`;
  }
  if (isExpired(claims)) {
    clearSession();
    return `This token expired ${fmtRelative(new Date(claims.exp * 1000).toISOString())} (at ${fmtLocal(new Date(claims.exp * 1000))}). Sign in with a fresh one.`;
  }
  if (!renewal) {
    sessionStorage.removeItem(OIDC_KEY);
    if (sessionStorage.getItem(TOKEN_KEY) !== token) sessionStorage.removeItem(TENANT_KEY);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  loadSession();
  return null;
}

function loadSession() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  session.token = token;
  session.claims = null;
  session.roles = new Set();
  session.tenants = null;
  clearTimeout(session.expiryTimer);
  if (!token) return false;
  try {
    session.claims = decodeJwt(token);
  } catch {
    clearSession();
    return false;
  }
  session.roles = rolesOf(session.claims);
  if (typeof session.claims.exp === 'number') {
    const left = session.claims.exp * 1000 - Date.now();
    if (left < 2 ** 31 - 1) {
      session.expiryTimer = setTimeout(() => signOut('Your token expired. Sign in again.'), Math.max(0, left));
    }
  }
  scheduleRenewal();
  return true;
}

function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(TENANT_KEY);
  sessionStorage.removeItem(OIDC_KEY);
  clearTimeout(oidc.renewTimer);
  session.token = null;
  session.claims = null;
  session.roles = new Set();
  session.tenant = null;
  session.tenants = null;
  clearTimeout(session.expiryTimer);
  etags.clear();
}

let signinMessage = '';
function signOut(message = '') {
  clearSession();
  signinMessage = message;
  stopPolling();
  resetViews();
  if (!location.hash.startsWith('#/')) history.replaceState(null, '', `${location.pathname}${location.search}#/jobs`);
  route();
}

async function setupTenant() {
  const stored = sessionStorage.getItem(TENANT_KEY);
  const select = $('tenant-select');
  if (isSuper()) {
    $('tenant-static').hidden = true;
    $('tenant-picker').hidden = false;
    if (!session.tenants) {
      const { data } = await api('tenants', { tenant: false });
      session.tenants = (data && data.tenants) || [];
    }
    const ids = session.tenants.map((t) => t.tenantId);
    let chosen = stored || ids[0] || null;
    const options = session.tenants.map((t) =>
      h('option', { value: t.tenantId }, `${t.tenantId} (${plural(t.jobs, 'job')})`));
    if (chosen && !ids.includes(chosen)) options.unshift(h('option', { value: chosen }, `${chosen} (not listed)`));
    if (!options.length) options.push(h('option', { value: '' }, 'No tenant has jobs yet'));
    select.replaceChildren(...options);
    session.tenant = chosen;
    if (chosen) {
      select.value = chosen;
      sessionStorage.setItem(TENANT_KEY, chosen);
    }
  } else {
    session.tenant = stored || ownTenant();
    showStaticTenant();
  }
}

function ownTenant() {
  return session.claims && typeof session.claims.tenant_id === 'string' ? session.claims.tenant_id : null;
}

function showStaticTenant() {
  $('tenant-picker').hidden = true;
  $('tenant-static').hidden = false;
  $('tenant-label').textContent = session.tenant || 'none';
  $('tenant-reset').hidden = !(ownTenant() && session.tenant && session.tenant !== ownTenant());
}

/** Drops `?tenant=` from the hash (it was applied once) so later choices are not undone. */
function dropTenantParam() {
  const [path, query = ''] = location.hash.split('?');
  const params = new URLSearchParams(query);
  if (!params.has('tenant')) return;
  params.delete('tenant');
  const rest = params.toString();
  history.replaceState(null, '', `${location.pathname}${location.search}${path}${rest ? `?${rest}` : ''}`);
}

function chooseTenant(id) {
  if (!id || id === session.tenant) return;
  session.tenant = id;
  sessionStorage.setItem(TENANT_KEY, id);
  if (isSuper()) $('tenant-select').value = id;
  else showStaticTenant();
  resetViews();
}

// ---------------------------------------------------------------------------------------------
// API.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** url -> {etag, data}; bounded. */
const etags = new Map();
function rememberEtag(key, etag, data) {
  etags.delete(key);
  etags.set(key, { etag, data });
  while (etags.size > 300) etags.delete(etags.keys().next().value);
}

/**
 * GET an admin endpoint. Returns {data, changed, key}. With `conditional`, sends the last
 * ETag for the same URL and tenant; a 304 answers the remembered data with changed=false.
 */
async function api(path, { tenant = true, conditional = false, method = 'GET', body: sent = undefined } = {}) {
  if (!session.token) throw new ApiError(401, 'UNAUTHORIZED', 'Not signed in.');
  const url = new URL(path, API_BASE);
  const headers = { Authorization: `Bearer ${session.token}`, Accept: 'application/json' };
  if (sent !== undefined) headers['Content-Type'] = 'application/json';
  if (tenant) {
    if (!session.tenant) {
      throw new ApiError(0, 'NO_TENANT', isSuper() ? 'Pick a tenant first.' : 'No tenant to read: your token carries no tenant_id claim.');
    }
    headers['x-tenantid'] = session.tenant;
  }
  const key = `${tenant ? session.tenant : '-'} ${url.href}`;
  const cached = conditional ? etags.get(key) : null;
  if (cached) headers['If-None-Match'] = cached.etag;
  let res;
  try {
    res = await fetch(url, {
      method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error',
      body: sent === undefined ? undefined : JSON.stringify(sent),
    });
  } catch {
    throw new ApiError(0, 'NETWORK', 'The jobstats server cannot be reached. Retrying…');
  }
  if (res.status === 304 && cached) return { data: cached.data, changed: false, key };
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const message = body && typeof body.message === 'string' ? body.message : `The server answered ${res.status}.`;
  const code = body && body.error && body.error.code;
  if (res.status === 401) {
    signOut(`Signed out: ${message}`);
    throw new ApiError(401, code || 'UNAUTHORIZED', message);
  }
  if (!res.ok || !body || body.success === false) {
    let text = message;
    if (res.status === 403 && tenant) text = `You may not read tenant ${session.tenant}. ${message}`;
    else if (res.status === 421) text = `Tenant ${session.tenant} is not served here. ${message}`;
    throw new ApiError(res.status, code || 'ERROR', text);
  }
  const etag = res.headers.get('ETag');
  if (conditional && etag) rememberEtag(key, etag, body.data);
  return { data: body.data, changed: true, key };
}

function enc(name) {
  return encodeURIComponent(name);
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
}

// ---------------------------------------------------------------------------------------------
// Routing and polling.

let current = null; // 'signin' | 'jobs' | 'job' | 'projection'
let pollTimer = null;

function parseRoute() {
  const hash = location.hash.replace(/^#/, '');
  const [path, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'projection') return { view: 'projection', params };
  if (parts[0] === 'jobs' && parts.length > 1) {
    let name;
    try {
      name = decodeURIComponent(parts.slice(1).join('/'));
    } catch {
      name = parts.slice(1).join('/');
    }
    return { view: 'job', name, params };
  }
  return { view: 'jobs', params };
}

function showView(name) {
  for (const v of ['signin', 'jobs', 'job', 'projection']) $(`${v}-view`).hidden = v !== name;
  const changed = current !== name;
  current = name;
  const signedIn = name !== 'signin';
  $('main-nav').hidden = !signedIn;
  $('session-box').hidden = !signedIn;
  $('nav-projection-item').hidden = !(signedIn && isSuper());
  $('nav-jobs').toggleAttribute('aria-current', false);
  $('nav-projection').toggleAttribute('aria-current', false);
  if (name === 'jobs' || name === 'job') $('nav-jobs').setAttribute('aria-current', 'page');
  if (name === 'projection') $('nav-projection').setAttribute('aria-current', 'page');
  return changed;
}

function focusHeading(id) {
  const el = $(id);
  if (el && document.activeElement !== el) el.focus({ preventScroll: false });
}

let routeSeq = 0;
async function route() {
  const seq = ++routeSeq;
  stopPolling();
  if (!session.token) {
    showView('signin');
    document.title = 'Sign in · jobstats';
    const msg = $('signin-message');
    msg.textContent = signinMessage;
    msg.hidden = !signinMessage;
    clearError();
    announce('');
    $('updated').textContent = '';
    focusHeading('signin-title');
    return;
  }
  if (session.claims && isExpired(session.claims)) {
    signOut('Your token expired. Sign in again.');
    return;
  }
  const r = parseRoute();
  const tenantParam = r.params.get('tenant');
  if (tenantParam) {
    if (tenantParam !== session.tenant) {
      sessionStorage.setItem(TENANT_KEY, tenantParam);
      session.tenant = tenantParam;
      resetViews();
    }
    dropTenantParam();
  }
  $('role-label').textContent = isSuper() ? 'super_admin' : session.roles.has('system_admin') ? 'system_admin' : [...session.roles].join(', ') || 'no role';
  let tenantError = null;
  try {
    if (!session.tenant || isSuper()) await setupTenant();
    else showStaticTenant();
  } catch (e) {
    if (e.status === 401) return;
    tenantError = e;
  }
  if (seq !== routeSeq) return;
  const first = showView(r.view);
  if (tenantError) showError(`The tenant list could not be read: ${tenantError.message}`);
  else clearError();
  if (r.view === 'jobs') {
    document.title = 'Jobs · jobstats';
    if (first) focusHeading('jobs-title');
    await loadJobs();
  } else if (r.view === 'job') {
    document.title = `${r.name} · jobstats`;
    openJob(r.name);
    if (first) focusHeading('job-title');
    await loadJob();
  } else if (r.view === 'projection') {
    document.title = 'Projection · jobstats';
    if (first) focusHeading('projection-title');
    await loadProjection();
  }
  if (seq === routeSeq) schedulePoll();
}

function stopPolling() {
  clearTimeout(pollTimer);
  pollTimer = null;
}

function schedulePoll() {
  stopPolling();
  pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  if (!session.token) return;
  if (!document.hidden) {
    if (current === 'jobs') await loadJobs({ poll: true });
    else if (current === 'job') await loadJob({ poll: true });
    else if (current === 'projection') await loadProjection({ poll: true });
    refreshRelativeTimes();
  }
  if (session.token && current !== 'signin') schedulePoll();
}

function reportError(e) {
  if (!e || e.status === 401) return;
  $('updated').textContent = '';
  if (e instanceof ApiError) showError(e.message);
  else {
    console.error(e);
    showError(`Something went wrong in the page: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Jobs view.

const jobs = {
  health: new Set(),
  q: '',
  // Worst first (the API's health order, ascending); the user may still sort by name.
  sort: 'health',
  order: 'asc',
  cursor: null,
  stack: [],
  nextCursor: null,
  seq: 0,
  renderedKey: null,
  sparks: new Map(), // jobName -> {key, durations}
};

function jobsPath() {
  return `jobs${qs({
    health: [...jobs.health].join(','),
    q: jobs.q,
    sort: jobs.sort,
    order: jobs.order,
    limit: JOBS_PAGE,
    cursor: jobs.cursor,
  })}`;
}

async function loadJobs({ poll = false } = {}) {
  const seq = ++jobs.seq;
  try {
    const res = await api(jobsPath(), { conditional: true });
    if (seq !== jobs.seq || current !== 'jobs') return;
    clearError();
    if (!res.changed && jobs.renderedKey === res.key) return; // 304: keep the DOM as it is
    jobs.renderedKey = res.key;
    renderJobs(res.data);
    announceUpdated(poll);
    loadSparklines(res.data.jobs || []);
  } catch (e) {
    if (seq !== jobs.seq) return;
    reportError(e);
    if (e.status === 403 || e.status === 421 || e.status === 400) {
      jobs.renderedKey = null;
      $('jobs-table-card').hidden = true;
      $('jobs-body').replaceChildren();
      $('jobs-total').textContent = '';
      $('jobs-empty').hidden = true;
    }
  }
}

function renderChips() {
  const sel = [...jobs.health].sort().join(',');
  for (const chip of $('health-chips').querySelectorAll('button.chip')) {
    const states = chip.dataset.health ? chip.dataset.health.split(',').sort().join(',') : '';
    chip.setAttribute('aria-pressed', String(states === sel || (chip.dataset.health && chip.id !== 'chip-attention' && jobs.health.has(chip.dataset.health))));
  }
}

function renderJobs(data) {
  const list = data.jobs || [];
  const total = data.total ?? list.length;
  const start = jobs.stack.length * JOBS_PAGE;
  $('jobs-total').textContent = list.length
    ? `${plural(total, 'job')}${jobs.health.size || jobs.q ? (total === 1 ? ' matches' : ' match') : ''} · showing ${start + 1}–${start + list.length}`
    : `${plural(total, 'job')}${jobs.health.size || jobs.q ? (total === 1 ? ' matches' : ' match') : ''}`;
  $('jobs-total').dataset.value = String(total);
  $('jobs-table-card').hidden = false;
  const rows = list.map((j) => jobRow(j));
  replaceRows($('jobs-body'), rows);
  $('jobs-empty').hidden = list.length > 0;
  $('jobs-empty').textContent = jobs.health.size || jobs.q ? 'No job matches these filters.' : 'No job has reported to this tenant yet.';
  jobs.nextCursor = data.nextCursor || null;
  $('jobs-next').disabled = !jobs.nextCursor;
  $('jobs-prev').disabled = jobs.stack.length === 0;
  $('jobs-page').textContent = `Page ${jobs.stack.length + 1}`;
  $('jobs-pager').hidden = !(jobs.stack.length || jobs.nextCursor);
}

function jobRow(j) {
  const hl = j.health || {};
  const href = `#/jobs/${enc(j.jobName)}`;
  const sparkCell = h('td', { 'data-col': 'trend', class: 'spark-cell' });
  const cached = jobs.sparks.get(j.jobName);
  if (cached) sparkCell.append(sparkline(cached.runs));
  const q = j.queue || {};
  return h('tr', { 'data-job': j.jobName, 'data-state': hl.state || '', 'data-completed': q.completed ?? '', 'data-failed': q.failed ?? '' },
    h('th', { scope: 'row', 'data-col': 'name', class: 'job-name' },
      h('a', { href, 'data-focus-key': `job:${j.jobName}` }, j.jobName)),
    h('td', { 'data-col': 'health' },
      h('div', { class: 'health-cell' }, badge(hl.state),
        hl.since ? h('span', { class: 'since' }, 'since ', timeEl(hl.since, { relative: true })) : null,
        silencedMark(hl)),
      healthWhy(hl)),
    h('td', { 'data-col': 'status' }, statusPill(j.status)),
    h('td', { 'data-col': 'lastRun' }, timeEl(j.lastRun, { relative: true })),
    h('td', { 'data-col': 'lastOutcome' }, j.lastOutcome ? badge(j.lastOutcome, EXEC_STATES, 'outcome') : dash()),
    h('td', { 'data-col': 'successRate', class: 'num', 'data-value': j.successRatePercent ?? '' },
      h('span', { class: 'rate' }, j.successRate || '—'), runsLine(j.queue)),
    h('td', { 'data-col': 'p95', class: 'num', 'data-value': j.p95Ms ?? '' }, fmtDuration(j.p95Ms)),
    h('td', { 'data-col': 'nextRun' }, timeEl(j.nextRun, { relative: true })),
    sparkCell);
}

/** A silence in force is far-future when it was set "until lifted" (the contract has no open end). */
const UNTIL_LIFTED = '9999-12-31T23:59:59.999Z';
function liftedOnly(iso) {
  return Date.parse(iso) >= Date.parse('9000-01-01T00:00:00Z');
}

/** The list's marker of a job whose alerts are silenced. */
function silencedMark(hl) {
  if (!hl || !hl.silencedUntil) return null;
  const until = liftedOnly(hl.silencedUntil) ? 'until lifted' : `until ${fmtLocal(new Date(hl.silencedUntil))}`;
  return h('span', { class: 'silenced-mark', 'data-testid': 'job-row-silenced', title: hl.silenceReason || null },
    h('span', { 'aria-hidden': 'true' }, '🔕 '), `silenced ${until}`);
}

/** Why a job is not healthy or new: its reason (in the page's words) and its stuck executions. */
function healthWhy(hl) {
  if (!hl || hl.state === 'healthy' || hl.state === 'new') return null;
  const reason = typeof hl.reason === 'string' && hl.reason ? hl.reason : null;
  const ids = (Array.isArray(hl.stuckExecutionIds) ? hl.stuckExecutionIds : []).filter((id) => typeof id === 'string');
  const extra = ids.filter((id) => !reason || !reason.includes(id));
  if (!reason && !extra.length) return null;
  return h('p', { class: 'reason-line', 'data-testid': 'job-row-reason', title: reason || null },
    reason ? fmtReason(reason) : null,
    extra.length ? h('span', { class: 'stuck-ids' }, `${reason ? ' ' : ''}Stuck: `,
      ...extra.flatMap((id, i) => [i ? ', ' : '', h('code', { class: 'exec-id' }, id)]), '.') : null);
}

function runsLine(q) {
  if (!q) return null;
  const done = (q.completed || 0) + (q.failed || 0);
  if (!done) return null;
  const text = q.failed ? `${fmtNumber(q.failed)} of ${fmtNumber(done)} failed` : plural(done, 'run');
  return h('span', { class: `sub${q.failed ? ' sub-bad' : ''}` }, text);
}

function statusPill(status) {
  if (!status) return dash();
  return h('span', { class: `pill pill-${status}`, 'data-status': status },
    h('span', { 'aria-hidden': 'true' }, status === 'running' ? '▶ ' : '■ '), status);
}

let sparkRun = 0;
async function loadSparklines(list) {
  const run = ++sparkRun;
  const queue = [...list];
  const worker = async () => {
    while (queue.length && run === sparkRun && current === 'jobs') {
      const j = queue.shift();
      try {
        const res = await api(`jobs/${enc(j.jobName)}/executions${qs({ limit: SPARK_RUNS })}`, { conditional: true });
        if (run !== sparkRun) return;
        const prev = jobs.sparks.get(j.jobName);
        if (!res.changed && prev && prev.key === res.key) continue;
        const runs = (res.data.executions || []).slice().reverse()
          .filter((x) => x.durationMs != null && (x.status === 'completed' || x.status === 'failed'))
          .map((x) => ({ ms: x.durationMs, failed: x.status === 'failed' }));
        jobs.sparks.set(j.jobName, { key: res.key, runs });
        const cell = document.querySelector(`#jobs-body tr[data-job="${CSS.escape(j.jobName)}"] td[data-col="trend"]`);
        if (cell) cell.replaceChildren(sparkline(runs));
      } catch (e) {
        if (e.status === 401) return;
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

/** A tiny inline SVG of recent run times (completed as a line, failures as red marks). */
function sparkline(runs) {
  const W = 100;
  const H = 26;
  const pad = 3;
  const done = runs.filter((r) => !r.failed);
  const failed = runs.length - done.length;
  const el = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'sparkline', role: 'img' });
  if (!runs.length) {
    el.setAttribute('aria-label', 'No finished run yet');
    el.append(svg('line', { x1: pad, x2: W - pad, y1: H / 2, y2: H / 2, class: 'spark-empty' }));
    return el;
  }
  const max = Math.max(...runs.map((r) => r.ms), 1);
  const min = Math.min(...runs.map((r) => r.ms));
  const span = Math.max(max - min, max * 0.1, 1);
  const x = (i) => (runs.length === 1 ? W / 2 : pad + (i * (W - 2 * pad)) / (runs.length - 1));
  const y = (ms) => H - pad - ((ms - (min - span * 0.1)) / (span * 1.2)) * (H - 2 * pad);
  const pts = [];
  runs.forEach((r, i) => {
    if (!r.failed) pts.push(`${x(i).toFixed(1)},${y(r.ms).toFixed(1)}`);
  });
  if (pts.length > 1) el.append(svg('polyline', { points: pts.join(' '), class: 'spark-line' }));
  runs.forEach((r, i) => {
    if (r.failed) el.append(svg('path', { d: `M${x(i) - 2.5},${y(r.ms) - 2.5}l5,5m0,-5l-5,5`, class: 'spark-fail' }));
    else if (i === runs.length - 1 || pts.length === 1) el.append(svg('circle', { cx: x(i), cy: y(r.ms), r: 2, class: 'spark-dot' }));
  });
  const words = done.length
    ? `${runs.length === 1 ? 'The last finished run' : `Last ${runs.length} finished runs`}: completed in ${fmtDuration(Math.min(...done.map((r) => r.ms)))} to ${fmtDuration(Math.max(...done.map((r) => r.ms)))}, latest ${fmtDuration(runs[runs.length - 1].ms)}`
    : (runs.length === 1 ? 'The last finished run' : `Last ${runs.length} finished runs`);
  el.setAttribute('aria-label', failed ? `${words}; ${fmtNumber(failed)} failed` : words);
  el.append(Object.assign(svg('title'), { textContent: el.getAttribute('aria-label') }));
  return el;
}

function jobsFiltersChanged() {
  jobs.cursor = null;
  jobs.stack = [];
  jobs.renderedKey = null;
  renderChips();
  loadJobs();
}

function bindJobs() {
  $('health-chips').addEventListener('click', (ev) => {
    const chip = ev.target.closest('button.chip');
    if (!chip) return;
    const states = chip.dataset.health ? chip.dataset.health.split(',') : [];
    const pressed = chip.getAttribute('aria-pressed') === 'true';
    if (!states.length) jobs.health.clear();
    else if (chip.id === 'chip-attention') {
      jobs.health = pressed ? new Set() : new Set(states);
    } else if (jobs.health.has(states[0])) jobs.health.delete(states[0]);
    else jobs.health.add(states[0]);
    jobsFiltersChanged();
  });
  let qTimer = null;
  $('jobs-q').addEventListener('input', () => {
    clearTimeout(qTimer);
    qTimer = setTimeout(() => {
      const q = $('jobs-q').value.trim();
      if (q === jobs.q) return;
      jobs.q = q;
      jobsFiltersChanged();
    }, 250);
  });
  $('jobs-sort').addEventListener('change', () => {
    jobs.sort = $('jobs-sort').value;
    jobsFiltersChanged();
  });
  $('jobs-order').addEventListener('change', () => {
    jobs.order = $('jobs-order').value;
    jobsFiltersChanged();
  });
  $('jobs-next').addEventListener('click', () => {
    if (!jobs.nextCursor) return;
    jobs.stack.push(jobs.cursor);
    jobs.cursor = jobs.nextCursor;
    jobs.renderedKey = null;
    loadJobs();
  });
  $('jobs-prev').addEventListener('click', () => {
    if (!jobs.stack.length) return;
    jobs.cursor = jobs.stack.pop();
    jobs.renderedKey = null;
    loadJobs();
  });
}

// ---------------------------------------------------------------------------------------------
// Job view.

const job = {
  name: null,
  window: WINDOWS.includes(sessionStorage.getItem(WINDOW_KEY)) ? sessionStorage.getItem(WINDOW_KEY) : '24h',
  status: '',
  cursor: null,
  stack: [],
  nextCursor: null,
  seq: 0,
  /** The stream sequence of this page's last write, until a stats answer reflects it. */
  minSequence: null,
  rendered: { stats: null, series: null, exec: null, flips: null },
  chart: null,
  resize: null,
};

function openJob(name) {
  if (job.name === name) return;
  job.name = name;
  job.minSequence = null;
  job.status = '';
  job.cursor = null;
  job.stack = [];
  job.rendered = { stats: null, series: null, exec: null, flips: null };
  $('exec-status').value = '';
  $('job-title').textContent = name;
  $('job-status').replaceChildren();
  $('job-content').hidden = true;
  $('exec-body').replaceChildren();
  $('series-body').replaceChildren();
  destroyChart();
  $(`window-${job.window}`).checked = true;
}

async function loadJob({ poll = false, only = null } = {}) {
  const seq = ++job.seq;
  const name = job.name;
  const base = `jobs/${enc(name)}`;
  const want = (part) => !only || only.includes(part);
  const tasks = {
    // After a write of this page (a silence), the stats wait for the read model to hold it.
    stats: want('stats') ? api(`${base}/stats${qs({ window: job.window, minSequence: job.minSequence, waitMs: job.minSequence ? 3000 : null })}`, { conditional: true }) : null,
    series: want('series') ? api(`${base}/series${qs({ window: job.window })}`, { conditional: true }) : null,
    exec: want('exec') ? api(`${base}/executions${qs({ status: job.status, limit: EXEC_PAGE, cursor: job.cursor })}`, { conditional: true }) : null,
    flips: want('flips') ? api(`${base}/flips${qs({ limit: FLIPS_SHOWN })}`, { conditional: true }) : null,
  };
  const results = {};
  let firstError = null;
  await Promise.all(Object.entries(tasks).map(async ([k, p]) => {
    if (!p) return;
    try {
      results[k] = await p;
    } catch (e) {
      if (!firstError || (firstError.status === 0 && e.status)) firstError = e;
    }
  }));
  if (seq !== job.seq || current !== 'job' || name !== job.name) return;
  if (results.stats) job.minSequence = null;
  if (firstError) {
    reportError(firstError);
    if (firstError.status >= 400 && firstError.status < 500 && !results.stats) {
      $('job-content').hidden = true;
      job.rendered = { stats: null, series: null, exec: null, flips: null };
    }
    if (!results.stats && !results.series && !results.exec && !results.flips) return;
  } else clearError();
  let changed = false;
  if (results.stats && (results.stats.changed || job.rendered.stats !== results.stats.key)) {
    renderJobStats(results.stats.data);
    job.rendered.stats = results.stats.key;
    changed = true;
  }
  if (results.series && (results.series.changed || job.rendered.series !== results.series.key)) {
    renderSeries(results.series.data);
    job.rendered.series = results.series.key;
    changed = true;
  }
  if (results.exec && (results.exec.changed || job.rendered.exec !== results.exec.key)) {
    renderExecutions(results.exec.data);
    job.rendered.exec = results.exec.key;
    changed = true;
  }
  if (results.flips && (results.flips.changed || job.rendered.flips !== results.flips.key)) {
    renderFlips(results.flips.data);
    job.rendered.flips = results.flips.key;
    changed = true;
  }
  if (results.stats) $('job-content').hidden = false;
  if (changed) announceUpdated(poll);
}

function renderJobStats(d) {
  const hl = d.health || {};
  $('job-status').replaceChildren(statusPill(d.status));
  $('job-health').replaceChildren(badge(hl.state, STATES, 'badge badge-lg'));
  $('job-since').replaceChildren(...(hl.since ? ['since ', timeEl(hl.since, { relative: true }), ' (', timeEl(hl.since), ')'] : []));
  $('job-reason').textContent = fmtReason(hl.reason);
  if (hl.reason) $('job-reason').title = hl.reason;
  else $('job-reason').removeAttribute('title');
  $('job-reason').hidden = !hl.reason;
  // The ids the reason does not name already (it names the first).
  const stuck = (Array.isArray(hl.stuckExecutionIds) ? hl.stuckExecutionIds : []).filter((id) => !String(hl.reason || '').includes(id));
  if (stuck.length) {
    $('job-reason').append(h('span', { class: 'muted' }, ` ${hl.reason ? 'Also stuck' : 'Stuck'}: ${stuck.join(', ')}.`));
    $('job-reason').hidden = false;
  }

  renderSilence(hl);

  const q = d.queue || {};
  for (const k of ['pending', 'processing', 'completed', 'failed']) setStat(`queue-${k}`, q[k] ?? null, fmtNumber(q[k]));

  const p = d.performance || {};
  const pc = p.percentiles || {};
  const qw = p.queueWait || {};
  const items = p.itemsProcessed || {};
  setStat('perf-successRate', p.successRatePercent ?? null, p.successRate || '—');
  setStat('perf-average', p.averageExecutionTimeMs ?? null, fmtDuration(p.averageExecutionTimeMs));
  setStat('perf-last', p.lastExecutionTimeMs ?? null, fmtDuration(p.lastExecutionTimeMs));
  for (const k of ['p50', 'p90', 'p95', 'p99']) setStat(`perf-${k}`, pc[`${k}Ms`] ?? null, fmtDuration(pc[`${k}Ms`]));
  setStat('perf-queueWaitAvg', qw.averageMs ?? null, fmtDuration(qw.averageMs));
  setStat('perf-queueWaitP95', qw.p95Ms ?? null, fmtDuration(qw.p95Ms));
  setStat('perf-itemsTotal', items.total ?? null, fmtNumber(items.total));
  setStat('perf-itemsAvg', items.averagePerRun ?? null, items.averagePerRun == null ? '—' : Number(items.averagePerRun).toLocaleString(undefined, { maximumFractionDigits: 1 }));

  const w = d.window || {};
  const wp = w.percentiles || {};
  setStat('window-completed', w.completed ?? null, fmtNumber(w.completed));
  setStat('window-failed', w.failed ?? null, fmtNumber(w.failed));
  setStat('window-successRate', w.successRatePercent ?? null, w.successRate || '—');
  setStat('window-average', w.averageExecutionTimeMs ?? null, fmtDuration(w.averageExecutionTimeMs));
  for (const k of ['p50', 'p95', 'p99']) setStat(`window-${k}`, wp[`${k}Ms`] ?? null, fmtDuration(wp[`${k}Ms`]));

  const s = d.schedule || {};
  const zone = s.timezone || 'UTC';
  setStat('schedule-cron', s.cron ?? null, s.cron ? h('span', {}, h('code', {}, s.cron), ` (${zone})`) : 'No schedule');
  setStat('schedule-words', null, s.cron ? cronWords(s.cron, zone) : '—');
  setStat('schedule-next', s.nextRun ?? null, s.nextRun ? h('span', {}, timeEl(s.nextRun), ' · ', timeEl(s.nextRun, { relative: true })) : dash());
  setStat('schedule-last', s.lastRun ?? null, s.lastRun ? h('span', {}, timeEl(s.lastRun), ' · ', timeEl(s.lastRun, { relative: true })) : dash());
  setStat('schedule-outcome', s.lastOutcome ?? null, s.lastOutcome ? badge(s.lastOutcome, EXEC_STATES, 'outcome') : dash());
  setStat('schedule-expected', s.expectedAt ?? null, timeEl(s.expectedAt));
  setStat('schedule-grace', s.graceMs ?? null, fmtDuration(s.graceMs));
  setStat('schedule-maxruntime', s.maxRuntimeMs ?? null, fmtDuration(s.maxRuntimeMs));
  const up = d.uptime || {};
  for (const k of ['24h', '7d', '30d']) setStat(`uptime-${k}`, up[`last${k}Percent`] ?? null, up[`last${k}`] || '—');
  const mr = hl.missedRuns || {};
  setStat('schedule-missed', mr, `${fmtNumber(mr.last24h ?? 0)} in 24 h · ${fmtNumber(mr.last7d ?? 0)} in 7 d`);
  const fails = s.failureThreshold || 1;
  const recovers = s.recoveryThreshold || 1;
  setStat('schedule-alerts', `${fails}/${recovers}`,
    `failing after ${plural(fails, 'failure')} in a row · healthy after ${plural(recovers, 'success', 'successes')} in a row`);
  const labels = Object.entries(s.labels || {});
  setStat('schedule-labels', labels.length ? JSON.stringify(s.labels) : null,
    labels.length ? h('span', {}, ...labels.flatMap(([k, v], i) => [i ? ' ' : '', h('code', {}, `${k}=${v}`)])) : '—');
}

/** The silence in force (until when, why, by whom) and the buttons that set or lift one. */
function renderSilence(hl) {
  const state = $('silence-state');
  const silenced = Boolean(hl.silencedUntil);
  if (silenced) {
    const until = liftedOnly(hl.silencedUntil) ? ['until lifted'] : ['until ', timeEl(hl.silencedUntil), ' (', timeEl(hl.silencedUntil, { relative: true }), ')'];
    state.replaceChildren(h('span', { 'aria-hidden': 'true' }, '🔕 '), 'Alerts silenced ', ...until,
      hl.silenceReason ? `: ${hl.silenceReason}` : '',
      hl.silencedBy ? h('span', { class: 'muted' }, ` · by ${hl.silencedBy}`) : '');
  }
  state.hidden = !silenced;
  state.dataset.until = hl.silencedUntil || '';
  document.querySelector('[data-silence="lift"]').hidden = !silenced;
}

/** POSTs a silence (or its lifting) and shows the job once the read model holds it. */
async function setSilence(choice) {
  const hour = 3600 * 1000;
  const until = { '1h': new Date(Date.now() + hour).toISOString(), '1d': new Date(Date.now() + 24 * hour).toISOString(), lifted: UNTIL_LIFTED, lift: null }[choice];
  if (until === undefined) return;
  const buttons = [...document.querySelectorAll('[data-silence]')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const reason = choice === 'lift' ? null : `silenced from the dashboard (${{ '1h': '1 hour', '1d': '1 day', lifted: 'until lifted' }[choice]})`;
    const res = await api(`jobs/${enc(job.name)}/silence`, { method: 'POST', body: { until, reason } });
    job.minSequence = res.data.sequence;
    announce(choice === 'lift' ? 'Silence lifted.' : 'Alerts silenced.');
    await loadJob({ only: ['stats'] });
  } catch (e) {
    reportError(e);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function cronWords(cron, zone = 'UTC') {
  try {
    if (window.cronstrue) return `${window.cronstrue.toString(cron, { use24HourTimeFormat: true, verbose: false })} (${zone} time)`;
  } catch {
    return 'Not describable';
  }
  return '—';
}

function destroyChart() {
  if (job.chart) {
    job.chart.destroy();
    job.chart = null;
  }
  if (job.resize) {
    job.resize.disconnect();
    job.resize = null;
  }
  $('series-chart').replaceChildren();
}

const BUCKET_WORDS = { minute: 'minute', hour: 'hour', day: 'day' };

function renderSeries(d) {
  const buckets = d.buckets || [];
  const gran = BUCKET_WORDS[d.granularity] || d.granularity || 'bucket';
  const totalC = buckets.reduce((a, b) => a + (b.completed || 0), 0);
  const totalF = buckets.reduce((a, b) => a + (b.failed || 0), 0);
  const chartEl = $('series-chart');
  chartEl.dataset.window = d.window || job.window;
  chartEl.dataset.bucketCount = String(buckets.length);
  chartEl.setAttribute('aria-label',
    `Chart of completed and failed runs per ${gran}, with p50 and p95 run times, over ${WINDOW_WORDS[d.window] || d.window}: ` +
    `${fmtNumber(totalC)} completed, ${fmtNumber(totalF)} failed in ${plural(buckets.length, 'bucket')}. The same numbers are in the data table below the chart.`);

  $('series-caption').textContent = `Runs per ${gran}, ${WINDOW_WORDS[d.window] || d.window} (${plural(buckets.length, 'bucket')})`;
  const withSeconds = false;
  replaceRows($('series-body'), buckets.map((b) => h('tr', { 'data-start': b.start },
    h('th', { scope: 'row' }, timeEl(b.start, { seconds: withSeconds })),
    h('td', { class: 'num', 'data-value': b.completed }, fmtNumber(b.completed)),
    h('td', { class: 'num', 'data-value': b.failed }, fmtNumber(b.failed)),
    h('td', { class: 'num', 'data-value': b.p50Ms ?? '' }, fmtDuration(b.p50Ms)),
    h('td', { class: 'num', 'data-value': b.p95Ms ?? '' }, fmtDuration(b.p95Ms)))));

  drawChart(buckets, gran);
}

const BUCKET_SECONDS = { minute: 60, hour: 3600, day: 86400 };
const COMPLETED_FILL = 'rgba(47,125,74,0.55)';
const FAILED_FILL = 'rgba(179,38,30,0.8)';

/** An axis as wide as its longest tick label plus the tick and gap, so its label never covers them. */
function axisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1 && axis._size) return axis._size;
  let size = (axis.ticks && axis.ticks.show !== false ? axis.ticks.size || 10 : 0) + (axis.gap || 5);
  const longest = (values || []).reduce((a, v) => (v != null && String(v).length > a.length ? String(v) : a), '');
  if (longest) {
    u.ctx.save();
    u.ctx.font = axis.font[0];
    size += u.ctx.measureText(longest).width / (window.devicePixelRatio || 1);
    u.ctx.restore();
  }
  return Math.ceil(size) + 6;
}

/**
 * The run-time scale. Linear while the bucket percentiles stay within a factor of 10 of each
 * other; beyond that (one burst of slow runs would flatten every other bucket onto the axis on a
 * linear scale) a log-10 scale, which keeps every bucket's p50/p95 readable without clipping the
 * burst. Chosen over a clipped range because a clipped range hides the very values that stand
 * out.
 */
function msScale(values) {
  const pos = values.filter((v) => v != null && v > 0);
  if (!pos.length) return { log: false, scale: { range: () => [0, 1000] } };
  const min = Math.min(...pos);
  const max = Math.max(...pos);
  if (max / min <= 10) return { log: false, scale: { range: () => [0, max * 1.15] } };
  return { log: true, scale: { distr: 3, log: 10, range: () => [min / 1.6, max * 1.6] } };
}

function drawChart(buckets, gran) {
  destroyChart();
  const el = $('series-chart');
  delete el.dataset.barsCompleted;
  delete el.dataset.barsFailed;
  delete el.dataset.barsClipped;
  if (!window.uPlot) {
    el.append(h('p', { class: 'muted' }, 'The chart library did not load; the data table below has the numbers.'));
    return;
  }
  const U = window.uPlot;
  const xs = buckets.map((b) => Date.parse(b.start) / 1000);
  const step = BUCKET_SECONDS[gran] || (xs.length > 1 ? xs[1] - xs[0] : 3600);
  const p50 = buckets.map((b) => b.p50Ms ?? null);
  const p95 = buckets.map((b) => b.p95Ms ?? null);
  const ms = msScale([...p50, ...p95]);
  const data = [
    xs,
    buckets.map((b) => b.completed || null), // null: no bar at all rather than a 0-high one
    buckets.map((b) => b.failed || null),
    // On a log scale a value must be > 0.
    ms.log ? p50.map((v) => (v > 0 ? v : null)) : p50,
    ms.log ? p95.map((v) => (v > 0 ? v : null)) : p95,
  ];
  const last = buckets.length ? buckets.length - 1 : null;
  const bars = U.paths && U.paths.bars;
  // Every rectangle the bars path builder draws, by series, in canvas pixels; after each draw
  // the ones inside the plot area are counted into data-bars-completed / data-bars-failed (what
  // the browser test compares with the series API). A bar outside the plot area, or cut by its
  // edge, is not counted as drawn (it is counted in data-bars-clipped).
  let drawn = { 1: [], 2: [] };
  const each = (u, seriesIdx, dataIdx, left, top, w, hgt) => {
    if (drawn[seriesIdx]) drawn[seriesIdx].push({ left, top, w, h: hgt, idx: dataIdx });
  };
  const countBars = (u) => {
    const bb = u.bbox;
    const eps = 1; // device pixels of rounding
    let clipped = 0;
    const inside = (r) => {
      const whole = r.w > 0 && r.h > 0 && r.left >= bb.left - eps && r.left + r.w <= bb.left + bb.width + eps
        && r.top >= bb.top - eps && r.top + r.h <= bb.top + bb.height + eps;
      if (!whole) clipped++;
      return whole;
    };
    el.dataset.barsCompleted = String(new Set(drawn[1].filter(inside).map((r) => r.idx)).size);
    el.dataset.barsFailed = String(new Set(drawn[2].filter(inside).map((r) => r.idx)).size);
    el.dataset.barsClipped = String(clipped);
    el.dataset.msScale = ms.log ? 'log' : 'linear';
  };
  // With nothing hovered the legend shows the latest bucket, never a row of made-up zeros.
  const latestLegend = (u) => {
    if (u.cursor.idx == null && last != null) u.setLegend({ idx: last }, false);
  };
  const width = Math.max(280, el.clientWidth || 600);
  const count = (key) => (u, v, s, idx) => (idx == null || !buckets[idx] ? '—' : fmtNumber(buckets[idx][key] || 0));
  const dur = (key) => (u, v, s, idx) => (idx == null || !buckets[idx] ? '—' : fmtDuration(buckets[idx][key]));
  const axisStyle = { stroke: '#3d4650', grid: { stroke: '#e6e9ed', width: 1 }, ticks: { stroke: '#c9ced4', width: 1, size: 6 }, gap: 4, font: '12px system-ui, sans-serif', labelFont: 'bold 12px system-ui, sans-serif', labelGap: 2, size: axisSize };
  const logTick = (t) => {
    const m = t / 10 ** Math.floor(Math.log10(t) + 1e-9);
    return [1, 2, 5].some((n) => Math.abs(m - n) < 1e-6);
  };
  const pointsFor = (series) => {
    const n = series.filter((v) => v != null).length;
    // Isolated values (a bucket with runs between empty ones) are drawn as points; lines join
    // the buckets that have a value (an empty bucket has no percentile, it is not a 0).
    return { show: n <= 60 || buckets.length <= 60, size: 5 };
  };
  const opts = {
    width,
    height: 240,
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    legend: { show: true, live: true },
    scales: {
      // Half a bucket of padding each side: the first and last buckets' bars are drawn whole.
      x: { time: true, range: () => (xs.length ? [xs[0] - step / 2, xs[xs.length - 1] + step / 2] : [0, 1]) },
      count: { range: (u, min, max) => [0, Math.max(2, Math.ceil((max || 0) * 1.15))] },
      ms: ms.scale,
    },
    axes: [
      { ...axisStyle, size: 50 },
      { ...axisStyle, scale: 'count', label: 'Runs', labelSize: 16, values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? fmtNumber(t) : '')) },
      { ...axisStyle, scale: 'ms', side: 1, label: 'Run time', labelSize: 16, grid: { show: false },
        values: (u, ticks) => ticks.map((t) => fmtDuration(t)) },
    ],
    series: [
      { label: gran === 'day' ? 'Day' : 'Time', value: (u, v) => (v == null ? '—' : fmtLocal(new Date(v * 1000), false)) },
      { label: 'Completed', scale: 'count', stroke: '#2f7d4a', fill: COMPLETED_FILL, width: 1, value: count('completed'), points: { show: false }, paths: bars ? bars({ size: [0.42, 28], align: -1, each }) : undefined },
      { label: 'Failed', scale: 'count', stroke: '#b3261e', fill: FAILED_FILL, width: 1, value: count('failed'), points: { show: false }, paths: bars ? bars({ size: [0.42, 28], align: 1, each }) : undefined },
      { label: 'p50', scale: 'ms', stroke: '#1f5fbf', width: 2, value: dur('p50Ms'), spanGaps: true, points: pointsFor(data[3]) },
      { label: 'p95', scale: 'ms', stroke: '#7b3fa0', width: 2, dash: [6, 4], value: dur('p95Ms'), spanGaps: true, points: pointsFor(data[4]) },
    ],
    hooks: {
      drawClear: [() => { drawn = { 1: [], 2: [] }; }],
      draw: [countBars],
      ready: [latestLegend],
      setCursor: [latestLegend],
    },
  };
  job.chart = new U(opts, data, el);
  job.resize = new ResizeObserver(() => {
    const w = Math.max(280, el.clientWidth);
    if (job.chart && Math.abs(job.chart.width - w) > 2) job.chart.setSize({ width: w, height: 240 });
  });
  job.resize.observe(el);
}

function renderExecutions(d) {
  const list = d.executions || [];
  replaceRows($('exec-body'), list.map((x) => h('tr', { 'data-execution-id': x.id, 'data-status': x.status },
    h('th', { scope: 'row', 'data-col': 'id' }, h('code', { class: 'exec-id' }, x.id)),
    h('td', { 'data-col': 'status' }, badge(x.status, EXEC_STATES, 'outcome')),
    h('td', { 'data-col': 'started' }, timeEl(x.startedAt)),
    h('td', { 'data-col': 'finished' }, timeEl(x.completedAt)),
    h('td', { 'data-col': 'duration', class: 'num', 'data-value': x.durationMs ?? '' }, fmtDuration(x.durationMs)),
    h('td', { 'data-col': 'items', class: 'num', 'data-value': x.itemsProcessed ?? '' }, fmtNumber(x.itemsProcessed)),
    h('td', { 'data-col': 'error', class: 'error-cell' },
      x.exitCode != null ? h('span', { class: 'exit-code', 'data-testid': 'exit-code' }, `exit ${x.exitCode}`) : null,
      x.error ? errorText(x.error) : (x.exitCode == null ? dash() : null),
      x.status === 'failed' || x.exitCode ? outputDetails(x.id) : null))));
  $('exec-empty').hidden = list.length > 0;
  job.nextCursor = d.nextCursor || null;
  $('exec-next').disabled = !job.nextCursor;
  $('exec-prev').disabled = job.stack.length === 0;
  $('exec-page').textContent = `Page ${job.stack.length + 1}`;
  $('exec-pager').hidden = !(job.stack.length || job.nextCursor);
}

/** The latest health changes, newest first: a timeline of state badges and why. */
function renderFlips(d) {
  const list = d.flips || [];
  replaceRows($('flips'), list.map((f) => h('li', { class: 'flip', 'data-state': f.state },
    badge(f.state),
    h('span', { class: 'flip-when' }, 'from ', badge(f.previousState), ' ', timeEl(f.at), ' · ', timeEl(f.at, { relative: true })),
    f.silenced ? h('span', { class: 'muted' }, ' (silenced)') : '',
    h('div', { class: 'flip-reason' }, fmtReason(f.reason)))));
  $('flips-empty').hidden = list.length > 0;
}

/** A failed run's output tail, fetched from the one-execution endpoint when opened. */
function outputDetails(id) {
  const pre = h('pre', { class: 'output-full', 'data-testid': 'exec-output', tabindex: '0' }, 'Loading…');
  const details = h('details', { class: 'output-more' }, h('summary', {}, 'Output'), pre);
  const name = job.name;
  details.addEventListener('toggle', async () => {
    if (!details.open || details.dataset.loaded) return;
    try {
      const res = await api(`jobs/${enc(name)}/executions/${enc(id)}`);
      details.dataset.loaded = 'true';
      pre.textContent = res.data.output || 'No output was reported for this run.';
    } catch (e) {
      pre.textContent = `The output cannot be loaded: ${e.message}`;
    }
  });
  return details;
}

function errorText(text) {
  if (text.length <= 240) return h('span', { class: 'error-text' }, text);
  return h('details', { class: 'error-more' },
    h('summary', {}, h('span', { class: 'error-text' }, `${text.slice(0, 200)}…`)),
    h('pre', { class: 'error-full' }, text));
}

function bindJob() {
  $('window-select').addEventListener('change', (ev) => {
    if (ev.target.name !== 'window' || !WINDOWS.includes(ev.target.value)) return;
    job.window = ev.target.value;
    sessionStorage.setItem(WINDOW_KEY, job.window);
    loadJob({ only: ['stats', 'series'] });
  });
  $('exec-status').addEventListener('change', () => {
    job.status = $('exec-status').value;
    job.cursor = null;
    job.stack = [];
    loadJob({ only: ['exec'] });
  });
  $('exec-next').addEventListener('click', () => {
    if (!job.nextCursor) return;
    job.stack.push(job.cursor);
    job.cursor = job.nextCursor;
    loadJob({ only: ['exec'] });
  });
  $('exec-prev').addEventListener('click', () => {
    if (!job.stack.length) return;
    job.cursor = job.stack.pop();
    loadJob({ only: ['exec'] });
  });
  for (const button of document.querySelectorAll('[data-silence]')) {
    button.addEventListener('click', () => setSilence(button.dataset.silence));
  }
}

// ---------------------------------------------------------------------------------------------
// Projection view.

const proj = {
  reason: '',
  cursor: null,
  stack: [],
  nextCursor: null,
  seq: 0,
  rendered: { state: null, dl: null },
};

async function loadProjection({ poll = false, only = null } = {}) {
  const seq = ++proj.seq;
  const want = (part) => !only || only.includes(part);
  const results = {};
  let firstError = null;
  await Promise.all([
    want('state') ? api('projection', { tenant: false, conditional: true }).then((r) => { results.state = r; }, (e) => { firstError = firstError || e; }) : null,
    want('dl') ? api(`dead-letters${qs({ reason: proj.reason, limit: DL_PAGE, cursor: proj.cursor })}`, { tenant: false, conditional: true }).then((r) => { results.dl = r; }, (e) => { firstError = firstError || e; }) : null,
  ]);
  if (seq !== proj.seq || current !== 'projection') return;
  if (firstError) {
    reportError(firstError);
    if (!results.state && !results.dl) {
      $('projection-content').hidden = true;
      proj.rendered = { state: null, dl: null };
      return;
    }
  } else clearError();
  let changed = false;
  if (results.state && (results.state.changed || proj.rendered.state !== results.state.key)) {
    renderProjection(results.state.data);
    proj.rendered.state = results.state.key;
    changed = true;
  }
  if (results.dl && (results.dl.changed || proj.rendered.dl !== results.dl.key)) {
    renderDeadLetters(results.dl.data);
    proj.rendered.dl = results.dl.key;
    changed = true;
  }
  $('projection-content').hidden = false;
  if (changed) announceUpdated(poll);
}

function renderProjection(d) {
  setStat('proj-appliedSequence', d.appliedSequence ?? null, fmtNumber(d.appliedSequence));
  setStat('proj-lastEventAt', d.lastEventAt ?? null, d.lastEventAt ? h('span', {}, timeEl(d.lastEventAt), h('br'), h('small', { class: 'muted' }, timeEl(d.lastEventAt, { relative: true }))) : 'No event yet');
  setStat('proj-lag', d.lag ?? null, fmtNumber(d.lag));
  setStat('proj-caughtUp', d.caughtUp ?? null, d.caughtUp
    ? h('span', { class: 'ok-text' }, h('span', { 'aria-hidden': 'true' }, '✓ '), 'Yes')
    : h('span', { class: 'warn-text' }, h('span', { 'aria-hidden': 'true' }, '⚠ '), 'No'));
  setStat('proj-eventsApplied', d.eventsApplied ?? null, fmtNumber(d.eventsApplied));
  setStat('proj-deadLetters', d.deadLetters ?? null, fmtNumber(d.deadLetters));
  const pill = $('proj-caughtup-pill');
  pill.className = `pill ${d.caughtUp ? 'pill-ok' : 'pill-warn'}`;
  pill.textContent = d.caughtUp ? '✓ Caught up' : `⚠ Behind by ${fmtNumber(d.lag)}`;

  const reasons = d.deadLettersByReason || [];
  replaceRows($('dl-reasons-body'), reasons.map((r) => h('tr', { 'data-reason': r.reasonCode },
    h('th', { scope: 'row' }, h('code', {}, r.reasonCode)),
    h('td', { class: 'num', 'data-value': r.count }, fmtNumber(r.count)))));
  $('dl-reasons-empty').hidden = reasons.length > 0;

  const select = $('dl-reason');
  const codes = reasons.map((r) => r.reasonCode);
  if (proj.reason && !codes.includes(proj.reason)) codes.push(proj.reason);
  const have = [...select.options].slice(1).map((o) => o.value).join(',');
  if (have !== codes.join(',')) {
    select.replaceChildren(h('option', { value: '' }, 'All reasons'),
      ...codes.map((c) => {
        const r = reasons.find((x) => x.reasonCode === c);
        return h('option', { value: c }, r ? `${c} (${fmtNumber(r.count)})` : c);
      }));
    select.value = proj.reason;
  }
}

function renderDeadLetters(d) {
  const list = d.deadLetters || [];
  replaceRows($('dl-body'), list.map((x) => h('tr', { 'data-sequence': x.sequence },
    h('th', { scope: 'row', class: 'num' }, fmtNumber(x.sequence)),
    h('td', {}, timeEl(x.publishedAt)),
    h('td', {}, h('code', {}, x.reasonCode)),
    h('td', { class: 'error-cell' }, h('span', { class: 'error-text' }, x.reason || '')),
    h('td', {}, h('code', { class: 'subject' }, x.subject || '')),
    h('td', { class: 'num', 'data-value': x.payloadBytes ?? '' }, fmtBytes(x.payloadBytes)))));
  $('dl-empty').hidden = list.length > 0;
  proj.nextCursor = d.nextCursor || null;
  $('dl-next').disabled = !proj.nextCursor;
  $('dl-prev').disabled = proj.stack.length === 0;
  $('dl-page').textContent = `Page ${proj.stack.length + 1}`;
  $('dl-pager').hidden = !(proj.stack.length || proj.nextCursor);
}

function bindProjection() {
  $('dl-reason').addEventListener('change', () => {
    proj.reason = $('dl-reason').value;
    proj.cursor = null;
    proj.stack = [];
    loadProjection({ only: ['dl'] });
  });
  $('dl-next').addEventListener('click', () => {
    if (!proj.nextCursor) return;
    proj.stack.push(proj.cursor);
    proj.cursor = proj.nextCursor;
    loadProjection({ only: ['dl'] });
  });
  $('dl-prev').addEventListener('click', () => {
    if (!proj.stack.length) return;
    proj.cursor = proj.stack.pop();
    loadProjection({ only: ['dl'] });
  });
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function resetViews() {
  jobs.renderedKey = null;
  jobs.cursor = null;
  jobs.stack = [];
  jobs.sparks.clear();
  jobs.seq++;
  $('jobs-body').replaceChildren();
  $('jobs-total').textContent = '';
  $('jobs-empty').hidden = true;
  job.name = null;
  job.seq++;
  destroyChart();
  $('job-content').hidden = true;
  proj.rendered = { state: null, dl: null };
  proj.seq++;
  $('projection-content').hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Sign-in with the identity provider (GET ./config.json says which): OpenID Connect's
// authorization code flow with PKCE (S256), run by this page. The state and nonce tie the answer
// to this tab's request; the access token is renewed with the refresh token before it expires.

const oidc = { config: null, discovery: null, renewTimer: null };

async function loadUiConfig() {
  try {
    const res = await fetch(new URL('./config.json', document.baseURI), { cache: 'no-store', credentials: 'omit' });
    const body = res.ok ? await res.json() : null;
    oidc.config = body && body.oidc && typeof body.oidc.issuer === 'string' ? body.oidc : null;
  } catch {
    oidc.config = null;
  }
  if (oidc.config) {
    $('oidc-issuer-host').textContent = issuerHost();
    $('oidc-signin').hidden = false;
  }
}

function issuerHost() {
  try {
    return new URL(oidc.config.issuer).host;
  } catch {
    return 'your identity provider';
  }
}

function showSigninMessage(text) {
  signinMessage = text;
  const msg = $('signin-message');
  msg.textContent = text;
  msg.hidden = !text;
}

/** The provider's metadata, checked: it must name the configured issuer and offer S256. */
async function discover() {
  if (oidc.discovery) return oidc.discovery;
  const issuer = oidc.config.issuer;
  let res;
  try {
    res = await fetch(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`, { cache: 'no-store', credentials: 'omit', redirect: 'error' });
  } catch {
    throw new Error('the provider cannot be reached');
  }
  const meta = res.ok ? await res.json().catch(() => null) : null;
  if (!meta) throw new Error(`the provider answered ${res.status} for its configuration`);
  if (meta.issuer !== issuer) throw new Error(`the provider calls itself ${meta.issuer}, not ${issuer}`);
  if (typeof meta.authorization_endpoint !== 'string' || typeof meta.token_endpoint !== 'string') {
    throw new Error('the provider names no authorization or token endpoint');
  }
  const methods = meta.code_challenge_methods_supported;
  if (Array.isArray(methods) && !methods.includes('S256')) throw new Error('the provider does not offer PKCE with S256');
  oidc.discovery = meta;
  return meta;
}

function base64url(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(bytes = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

/** This page's address without query or fragment: the client's redirect URI (`…/ui/`). */
function redirectUri() {
  return new URL('./', document.baseURI).href;
}

async function beginSignIn() {
  const meta = await discover();
  const pending = {
    state: randomString(),
    nonce: randomString(),
    verifier: randomString(48),
    returnTo: location.hash.startsWith('#/') ? location.hash : '#/jobs',
  };
  const challenge = base64url(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(pending.verifier))));
  sessionStorage.setItem(OIDC_PENDING_KEY, JSON.stringify(pending));
  const url = new URL(meta.authorization_endpoint);
  const params = {
    response_type: 'code',
    client_id: oidc.config.clientId,
    redirect_uri: redirectUri(),
    scope: oidc.config.scopes.join(' '),
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  location.assign(url.href);
}

/**
 * Back from the provider (`?code=…&state=…` or `?error=…`): checks the state, trades the code
 * for tokens, checks the ID token's nonce, issuer and audience. Returns an error sentence, or
 * null (signed in, or nothing to complete).
 */
async function completeSignIn() {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return null;
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(OIDC_PENDING_KEY) || 'null');
  } catch {
    pending = null;
  }
  sessionStorage.removeItem(OIDC_PENDING_KEY);
  // The code leaves the address bar (and the history) at once.
  history.replaceState(null, '', `${location.pathname}${(pending && pending.returnTo) || '#/jobs'}`);
  if (!oidc.config) return 'Sign-in is not configured on this server.';
  if (!pending || params.get('state') !== pending.state) {
    return 'Sign-in failed: the answer does not belong to a sign-in started in this tab. Try again.';
  }
  if (params.has('error')) return `Sign-in failed: ${params.get('error_description') || params.get('error')}`;
  if (params.has('iss') && params.get('iss') !== oidc.config.issuer) return 'Sign-in failed: the answer comes from another issuer.';
  try {
    const meta = await discover();
    const tokens = await tokenRequest(meta, {
      grant_type: 'authorization_code',
      code: params.get('code'),
      redirect_uri: redirectUri(),
      client_id: oidc.config.clientId,
      code_verifier: pending.verifier,
    });
    checkIdToken(tokens.id_token, pending.nonce);
    return storeTokens(tokens, null);
  } catch (e) {
    return `Sign-in failed: ${e.message}`;
  }
}

/** The ID token came straight from the token endpoint; its claims must answer our request. */
function checkIdToken(idToken, nonce) {
  if (typeof idToken !== 'string') throw new Error('the provider sent no ID token (is "openid" among the scopes?)');
  const claims = decodeJwt(idToken);
  const audience = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (claims.nonce !== nonce) throw new Error('the ID token does not answer this sign-in (nonce)');
  if (claims.iss !== oidc.config.issuer) throw new Error('the ID token comes from another issuer');
  if (!audience.includes(oidc.config.clientId)) throw new Error('the ID token is meant for another client');
}

async function tokenRequest(meta, form) {
  let res;
  try {
    res = await fetch(meta.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
      body: new URLSearchParams(form),
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    });
  } catch {
    throw new Error('the provider cannot be reached');
  }
  const body = await res.json().catch(() => null);
  if (!res.ok || !body || typeof body.access_token !== 'string') {
    throw new Error((body && (body.error_description || body.error)) || `the provider answered ${res.status}`);
  }
  return body;
}

/** Keeps the access token like a pasted one, and what renewing and signing out need. */
function storeTokens(tokens, previous) {
  const err = acceptToken(tokens.access_token, { renewal: previous != null });
  if (err) return err;
  sessionStorage.setItem(OIDC_KEY, JSON.stringify({
    refreshToken: tokens.refresh_token || (previous && previous.refreshToken) || null,
    idToken: tokens.id_token || (previous && previous.idToken) || null,
  }));
  scheduleRenewal();
  return null;
}

function providerSession() {
  try {
    return JSON.parse(sessionStorage.getItem(OIDC_KEY) || 'null');
  } catch {
    return null;
  }
}

/** Renews a quarter of the token's lifetime before it expires (at most a minute before). */
function scheduleRenewal() {
  clearTimeout(oidc.renewTimer);
  const stored = providerSession();
  if (!oidc.config || !stored || !stored.refreshToken || !session.claims || typeof session.claims.exp !== 'number') return;
  const expires = session.claims.exp * 1000;
  const issued = typeof session.claims.iat === 'number' ? session.claims.iat * 1000 : Date.now();
  const lead = Math.min(60000, Math.max(2000, (expires - issued) / 4));
  oidc.renewTimer = setTimeout(renew, Math.max(0, expires - lead - Date.now()));
}

async function renew() {
  const stored = providerSession();
  if (!stored || !stored.refreshToken) return;
  try {
    const meta = await discover();
    const tokens = await tokenRequest(meta, {
      grant_type: 'refresh_token',
      refresh_token: stored.refreshToken,
      client_id: oidc.config.clientId,
    });
    const err = storeTokens(tokens, stored);
    if (err) throw new Error(err);
  } catch (e) {
    // The current token still works until it expires (then the page signs out): try again
    // while there is time.
    const left = session.claims ? session.claims.exp * 1000 - Date.now() : 0;
    console.warn(`token renewal failed: ${e.message}`);
    if (left > 3000) oidc.renewTimer = setTimeout(renew, Math.min(10000, left / 2));
  }
}

/** Signs out here and, when the provider offers it, ends the session there too. */
function signOutEverywhere() {
  const stored = providerSession();
  signOut('You signed out.');
  if (!stored || !oidc.config) return;
  discover().then((meta) => {
    if (!meta.end_session_endpoint) return;
    const url = new URL(meta.end_session_endpoint);
    url.searchParams.set('client_id', oidc.config.clientId);
    url.searchParams.set('post_logout_redirect_uri', redirectUri());
    if (stored.idToken) url.searchParams.set('id_token_hint', stored.idToken);
    sessionStorage.setItem(SIGNED_OUT_KEY, '1');
    location.assign(url.href);
  }, () => {
    // Signed out here; the provider's session stays (it could not be reached).
  });
}

/** `/ui/#token=<jwt>`: take the token once and remove it from the address bar at once. */
function consumeFragmentToken() {
  const hash = location.hash.replace(/^#/, '');
  if (!hash || hash.startsWith('/')) return;
  const params = new URLSearchParams(hash);
  const token = params.get('token') || params.get('access_token');
  if (token == null) return;
  history.replaceState(null, '', `${location.pathname}${location.search}#/jobs`);
  const err = acceptToken(token);
  signinMessage = err || '';
}

function bindSignin() {
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('token-input');
    const err = acceptToken(input.value);
    if (err) {
      signinMessage = err;
      const msg = $('signin-message');
      msg.textContent = err;
      msg.hidden = false;
      input.focus();
      return;
    }
    input.value = '';
    signinMessage = '';
    resetViews();
    if (!location.hash.startsWith('#/')) history.replaceState(null, '', `${location.pathname}${location.search}#/jobs`);
    route();
  });
  $('signout').addEventListener('click', () => signOutEverywhere());
  $('oidc-signin-button').addEventListener('click', () => {
    beginSignIn().catch((e) => showSigninMessage(`Sign-in with ${issuerHost()} is not available: ${e.message}`));
  });
  $('tenant-select').addEventListener('change', () => {
    chooseTenant($('tenant-select').value);
    route();
  });
  $('tenant-reset').addEventListener('click', () => {
    chooseTenant(ownTenant());
    clearError();
    if (location.hash.startsWith('#/jobs/')) location.hash = '#/jobs';
    else route();
  });
  $('skip-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    const heading = document.querySelector('.view:not([hidden]) h1');
    (heading || $('main')).focus();
  });
}

async function boot() {
  await loadUiConfig();
  bindSignin();
  bindJobs();
  bindJob();
  bindProjection();
  renderChips();
  $(`window-${job.window}`).checked = true;
  if (sessionStorage.getItem(SIGNED_OUT_KEY)) {
    sessionStorage.removeItem(SIGNED_OUT_KEY);
    signinMessage = 'You signed out.';
  }
  const signinError = await completeSignIn();
  if (signinError) signinMessage = signinError;
  consumeFragmentToken();
  if (!signinMessage) loadSession();
  window.addEventListener('hashchange', () => {
    // A token pasted into the fragment later is taken the same way.
    if (location.hash && !location.hash.startsWith('#/')) {
      consumeFragmentToken();
      resetViews();
      if (!signinMessage) loadSession();
    }
    route();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && session.token && current !== 'signin' && !pollTimer) schedulePoll();
  });
  setInterval(refreshRelativeTimes, 30000);
  route();
}

boot();
