// A real OpenID Connect provider for the tests: the certified `oidc-provider` package, shaped
// like a Keycloak realm so jobstats is tested against what it meets in production:
//   issuer   http://127.0.0.1:PORT/realms/REALM
//   keys     …/protocol/openid-connect/certs   (RS256, `kid`, `use: sig`)
//   login    the package's development login page (any password), then a consent page
//   tokens   JWT access tokens (resource indicators) with Keycloak's claims: realm_access.roles,
//            tenant_id, iss; refresh tokens for the dashboard; short lifetimes on request.
//
// Run: node tests/ui/provider.mjs. Environment:
//   PORT             port to listen on (default 0: any free one)
//   REALM            realm name (default acme)
//   REDIRECT_URI     the dashboard's address (e.g. http://127.0.0.1:8080/ui/), redirect and
//                    post-logout redirect of the public client `jobstats-dashboard`
//   TENANT_A         tenant_id of the user `alice` (system_admin) and of the `jobstats-probe` client
//   ACCESS_TOKEN_TTL seconds an access token lives (default 300)
//
// Users: `alice` (system_admin of TENANT_A), `root` (super_admin), anyone else has no role.
// Confidential client `jobstats-probe` (secret `probe-secret`, client_credentials) lets a test get
// an access token without a browser.
//
// Test-only endpoints, outside the issuer path:
//   POST /test/rotate   a new signing key replaces the old one (the provider restarts in-process
//                       with the new key set; what a Keycloak key rotation looks like to jobstats)
//   GET  /test/keys     {"kids": [...]} currently published
//
// Prints one JSON line once listening: {"issuer", "jwksUri", "port"}; logs go to stderr.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const REALM = process.env.REALM || 'acme';
const PREFIX = `/realms/${REALM}`;
const REDIRECT_URI = process.env.REDIRECT_URI || 'http://127.0.0.1:8080/ui/';
const TENANT_A = process.env.TENANT_A || '3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11';
const ACCESS_TOKEN_TTL = Number(process.env.ACCESS_TOKEN_TTL || 300);
const RESOURCE = 'urn:jobstats';
const DASHBOARD = 'jobstats-dashboard';
const PROBE = 'jobstats-probe';

const USERS = {
  alice: { realm_access: { roles: ['system_admin'] }, tenant_id: TENANT_A },
  root: { realm_access: { roles: ['super_admin'] } },
};

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

function claimsOf(accountId, clientId) {
  if (accountId) return USERS[accountId] || { realm_access: { roles: [] } };
  if (clientId === PROBE) return { realm_access: { roles: ['system_admin'] }, tenant_id: TENANT_A };
  return {};
}

function configuration(keys) {
  return {
    jwks: { keys },
    clients: [
      {
        client_id: DASHBOARD,
        token_endpoint_auth_method: 'none',
        application_type: 'web',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [REDIRECT_URI],
        post_logout_redirect_uris: [REDIRECT_URI],
      },
      {
        client_id: PROBE,
        client_secret: 'probe-secret',
        token_endpoint_auth_method: 'client_secret_post',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      userinfo: '/protocol/openid-connect/userinfo',
      end_session: '/protocol/openid-connect/logout',
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({
          scope: 'jobstats',
          audience: 'jobstats',
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    scopes: ['openid', 'offline_access', 'jobstats'],
    pkce: { required: () => true },
    // A browser client refreshes its own tokens, as Keycloak lets a public client do.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    clientBasedCORS: (ctx, origin, client) =>
      client.redirectUris.some((uri) => new URL(uri).origin === origin),
    extraTokenClaims: async (ctx, token) => claimsOf(token.accountId, token.clientId),
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, preferred_username: sub }),
    }),
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      IdToken: 3600,
      RefreshToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    cookies: { keys: ['jobstats-test-cookie-key'] },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><pre id="error">${JSON.stringify(out)}</pre>`;
    },
  };
}

let keys = [signingKey()];
let issuer = null;
let provider = null;
let handler = null;

function start() {
  provider = new Provider(issuer, configuration(keys));
  provider.on('server_error', (ctx, err) => console.error('provider server_error', err));
  handler = provider.callback();
}

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/test/rotate' && req.method === 'POST') {
    keys = [signingKey()];
    start();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    return;
  }
  if (url.pathname === '/test/keys') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    return;
  }
  if (url.pathname === PREFIX || url.pathname.startsWith(`${PREFIX}/`)) {
    // Mounted under the realm path: the provider sees the rest, and builds its URLs from
    // originalUrl (as when mounted in express).
    req.originalUrl = req.url;
    req.url = req.url.slice(PREFIX.length) || '/';
    handler(req, res);
    return;
  }
  res.statusCode = 404;
  res.end('not found');
});

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}${PREFIX}`;
  start();
  console.log(JSON.stringify({ issuer, jwksUri: `${issuer}/protocol/openid-connect/certs`, port }));
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
