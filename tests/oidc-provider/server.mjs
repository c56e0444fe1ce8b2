// panva's oidc-provider (a certified OpenID Provider) set up for token-refresh's
// interoperability tests. Started by `tests/common/oidc_provider.rs`; by hand:
//
//     npm ci --prefix tests/oidc-provider
//     node tests/oidc-provider/server.mjs --port 0
//
// It listens on 127.0.0.1 only, on `--port` (0: a free port), and prints one JSON line that
// starts with `{"ready":true` once it answers: the issuer, the clients, and refresh tokens
// minted through the provider's own models (three, each its own grant, for tests that need
// independent series). Other lines (the provider's notices) are not JSON.
// It exits when its standard input closes, so a test process that dies takes it along.
//
// What it serves:
// - the client-credentials grant, and refresh tokens rotated at every use (reuse of a spent
//   one revokes the grant, as oidc-provider does);
// - RFC 8707 resource indicators: a token for one of `RESOURCES` is a JWT whose `aud` is that
//   resource and whose scope is what the client asked for among `RESOURCE_SCOPES`; any other
//   resource is refused (`invalid_target`);
// - clients for client_secret_basic, client_secret_post, client_secret_jwt and
//   private_key_jwt (the public keys of `tests/keys/`: RSA, EC P-256, Ed25519);
// - two grants oidc-provider does not have, registered with its `registerGrantType`
//   extension point: RFC 7523 JWT-bearer (an assertion signed with the RSA test key, whose
//   `iss` names the client: RFC 7523 §3.1 needs no other client authentication) and RFC 8693
//   token exchange (a subject token this provider issued, for a resource);
// - `GET /test/stats`: how many token requests came, by grant type and by the client
//   authentication they carried (what oidc-provider does not count: it takes
//   client_secret_basic and client_secret_post alike from a client registered with either).
//
// Options: `--port N`; `--auth-methods a,b` (token_endpoint_auth_methods_supported, default
// the four above and `none`, the JWT-bearer client's); `--auth-algs a,b` (token_endpoint_auth_signing_alg_values_supported,
// default HS256,RS256,PS256,ES256: no EdDSA, so an Ed25519 client key is one the server
// does not take); `--access-token-ttl S` (default 300).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import * as querystring from 'node:querystring';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));
const keys = path.join(here, '..', 'keys');

// --- command line ---------------------------------------------------------------------------

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  if (at === -1) return fallback;
  const value = process.argv[at + 1];
  if (value === undefined || value.startsWith('--')) {
    fail(`--${name} needs a value`);
  }
  return value;
}

function fail(message) {
  process.stderr.write(`oidc-provider test server: ${message}\n`);
  process.exit(2);
}

const port = Number(option('port', '0'));
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port must be 0..65535');
const authMethods = option(
  'auth-methods',
  'client_secret_basic,client_secret_post,client_secret_jwt,private_key_jwt,none',
).split(',');
const authAlgs = option('auth-algs', 'HS256,RS256,PS256,ES256').split(',');
const accessTokenTtl = Number(option('access-token-ttl', '300'));
if (!Number.isInteger(accessTokenTtl) || accessTokenTtl <= 0) fail('--access-token-ttl must be a positive integer');

// --- what it grants ---------------------------------------------------------------------------

/** The resources it issues tokens for, and the scopes each has. */
const RESOURCES = ['https://api-a.test/', 'https://api-b.test/'];
const RESOURCE_SCOPES = 'api:read api:write';
/** The scope of the minted refresh token: OpenID (so a refresh without `resource` gets a
 * token for the userinfo endpoint, not for an API), offline access, and both API scopes. */
const REFRESH_SCOPE = `openid offline_access ${RESOURCE_SCOPES}`;
const ACCOUNT = 'test-user';

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

/** A public key of `tests/keys/` as a JWK with `kid`. */
function publicJwk(file, kid) {
  const jwk = crypto.createPublicKey(fs.readFileSync(path.join(keys, file))).export({ format: 'jwk' });
  return { ...jwk, kid, use: 'sig' };
}

const clientKeys = [
  publicJwk('rsa-public.pem', 'rsa-1'),
  publicJwk('ec-public.pem', 'ec-1'),
  publicJwk('ed25519-public.pem', 'ed25519-1'),
];

/** Test secrets, long enough for HS256 (`client_secret_jwt`). Test-only. */
const secret = (name) => `${name}-secret-0123456789-0123456789-0123456789`;

const CLIENTS = {
  basic: { id: 'client-basic', secret: secret('client-basic'), method: 'client_secret_basic' },
  post: { id: 'client-post', secret: secret('client-post'), method: 'client_secret_post' },
  secret_jwt: { id: 'client-secret-jwt', secret: secret('client-secret-jwt'), method: 'client_secret_jwt' },
  key: { id: 'client-key', method: 'private_key_jwt' },
  refresh: { id: 'client-refresh', secret: secret('client-refresh'), method: 'client_secret_basic' },
  jwt_bearer: { id: 'client-jwt-bearer', method: 'none' },
};

const grantTypes = ['client_credentials', TOKEN_EXCHANGE];
const clients = [
  ...['basic', 'post', 'secret_jwt'].map((name) => ({
    client_id: CLIENTS[name].id,
    client_secret: CLIENTS[name].secret,
    token_endpoint_auth_method: CLIENTS[name].method,
    grant_types: grantTypes,
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  })),
  {
    client_id: CLIENTS.key.id,
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: clientKeys },
    grant_types: grantTypes,
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  {
    client_id: CLIENTS.refresh.id,
    client_secret: CLIENTS.refresh.secret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
    scope: REFRESH_SCOPE,
  },
  {
    client_id: CLIENTS.jwt_bearer.id,
    token_endpoint_auth_method: 'none',
    grant_types: [JWT_BEARER],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
];

function resourceServer(resource) {
  if (!RESOURCES.includes(resource)) {
    throw new errors.InvalidTarget(`this server issues no tokens for ${resource}`);
  }
  return {
    scope: RESOURCE_SCOPES,
    audience: resource,
    accessTokenFormat: 'jwt',
    accessTokenTTL: accessTokenTtl,
  };
}

// The provider's own signing key (for JWT access tokens and ID tokens), new at each start.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'provider-1', use: 'sig', alg: 'RS256' };

const configuration = {
  clients,
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES.split(' ')],
  clientAuthMethods: authMethods,
  enabledJWA: { clientAuthSigningAlgValues: authAlgs },
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resource) => resourceServer(resource),
    },
  },
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTtl,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTtl,
    RefreshToken: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    IdToken: 60 * 60,
    Interaction: 60 * 60,
    Session: 24 * 60 * 60,
  },
};

// --- start --------------------------------------------------------------------------------

const server = http.createServer();
server.on('error', (error) => fail(`cannot listen: ${error.message}`));
server.listen(port, '127.0.0.1', async () => {
  try {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    const provider = new Provider(issuer, configuration);
    const stats = { token_requests: 0, by_grant_type: {}, by_client_auth: {} };
    provider.use(testRoutes(provider, stats));
    registerJwtBearer(provider);
    registerTokenExchange(provider);
    server.on('request', provider.callback());
    // None when `--auth-methods` leaves out the refresh client's method: it is not a valid
    // client of this server then.
    const refreshTokens = [];
    for (let i = 0; i < 3 && authMethods.includes(CLIENTS.refresh.method); i += 1) {
      refreshTokens.push(await mintRefreshToken(provider));
    }
    process.stdout.write(`${JSON.stringify({
      ready: true,
      issuer,
      token_endpoint: `${issuer}/token`,
      resources: RESOURCES,
      refresh_tokens: refreshTokens,
      refresh_scope: REFRESH_SCOPE,
      clients: CLIENTS,
    })}\n`);
  } catch (error) {
    fail(`cannot start: ${error.stack || error}`);
  }
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

/** A Grant and a refresh token for `ACCOUNT` and the refresh client, for both resources, made
 * with the provider's own models: what an authorization-code flow would have left. */
async function mintRefreshToken(provider) {
  const client = await provider.Client.find(CLIENTS.refresh.id);
  const grant = new provider.Grant({ accountId: ACCOUNT, clientId: client.clientId });
  grant.addOIDCScope('openid offline_access');
  for (const resource of RESOURCES) {
    grant.addResourceScope(resource, RESOURCE_SCOPES);
  }
  const grantId = await grant.save();
  const refreshToken = new provider.RefreshToken({
    accountId: ACCOUNT,
    client,
    grantId,
    gty: 'authorization_code',
    scope: REFRESH_SCOPE,
    resource: RESOURCES,
    expiresWithSession: false,
    authTime: Math.floor(Date.now() / 1000),
  });
  return refreshToken.save();
}

/** Counts token requests, serves `/test/stats`, and names the client of a JWT-bearer request
 * that has no client authentication after its assertion's `iss` (RFC 7523 §3.1). */
function testRoutes(provider, stats) {
  return async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/test/stats') {
      ctx.body = stats;
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/token' && ctx.is('application/x-www-form-urlencoded')) {
      let raw = await readBody(ctx.req);
      const form = querystring.parse(raw);
      const grantType = String(form.grant_type);
      stats.token_requests += 1;
      stats.by_grant_type[grantType] = (stats.by_grant_type[grantType] || 0) + 1;
      const auth = clientAuthOf(ctx, form);
      stats.by_client_auth[auth] = (stats.by_client_auth[auth] || 0) + 1;
      if (grantType === JWT_BEARER && !form.client_id && !ctx.headers.authorization) {
        const claims = decodeJwt(String(form.assertion || ''))?.payload;
        if (typeof claims?.iss === 'string') {
          raw += `&${querystring.stringify({ client_id: claims.iss })}`;
        }
      }
      // oidc-provider reads an already-read body from here.
      ctx.req.body = raw;
    }
    await next();
  };
}

/** The client authentication a token request carries, by RFC 8414's names. */
function clientAuthOf(ctx, form) {
  if (form.client_assertion) {
    const alg = decodeJwt(String(form.client_assertion))?.header?.alg;
    return alg === 'HS256' ? 'client_secret_jwt' : 'private_key_jwt';
  }
  if (/^basic /i.test(ctx.headers.authorization || '')) return 'client_secret_basic';
  if (form.client_secret) return 'client_secret_post';
  return 'none';
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function decodeJwt(jwt) {
  const parts = jwt.split('.');
  if (parts.length !== 3) return undefined;
  try {
    return {
      header: JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')),
      payload: JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')),
      signingInput: `${parts[0]}.${parts[1]}`,
      signature: Buffer.from(parts[2], 'base64url'),
    };
  } catch {
    return undefined;
  }
}

/** An access token for `client`, with `scope` (space-separated) and at most one `resource`:
 * issued as the client-credentials grant issues one (a JWT for the resource's audience). */
async function issueAccessToken(provider, ctx, client, scope, resource) {
  if (Array.isArray(resource)) {
    if (resource.length > 1) {
      throw new errors.InvalidTarget('only a single resource indicator value is supported for this grant type');
    }
    [resource] = resource;
  }
  const token = new provider.ClientCredentials({ client, scope: scope || undefined });
  if (resource) {
    const info = resourceServer(resource);
    token.resourceServer = new provider.ResourceServer(resource, info);
    const allowed = new Set(info.scope.split(' '));
    token.scope = (scope || '').split(' ').filter((s) => allowed.has(s)).join(' ') || undefined;
  }
  const value = await token.save();
  return {
    access_token: value,
    expires_in: token.expiration,
    token_type: 'Bearer',
    scope: token.scope,
  };
}

/** RFC 7523 §2.1: an assertion signed RS256 or ES256 with a key of the client's JWKS, `iss` the
 * client id, `aud` the token endpoint or the issuer, not expired. */
function registerJwtBearer(provider) {
  const handler = async (ctx) => {
    const { client } = ctx.oidc;
    const assertion = decodeJwt(String(ctx.oidc.params.assertion || ''));
    if (!assertion) throw new errors.InvalidGrant('the assertion is not a JWT');
    const { header, payload, signingInput, signature } = assertion;
    const jwk = clientKeys.find((k) => k.kid === header.kid);
    const algs = { RS256: 'RSA', ES256: 'EC' };
    if (!jwk || algs[header.alg] !== jwk.kty) {
      throw new errors.InvalidGrant('the assertion is not signed with a key of the client');
    }
    const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    const ok = crypto.verify(
      'sha256',
      Buffer.from(signingInput),
      header.alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key,
      signature,
    );
    if (!ok) throw new errors.InvalidGrant('the assertion signature does not verify');
    if (payload.iss !== client.clientId) throw new errors.InvalidGrant('the assertion iss is not the client');
    const audiences = new Set([provider.issuer, `${provider.issuer}/token`]);
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (!aud.some((a) => audiences.has(a))) throw new errors.InvalidGrant('the assertion aud is not this server');
    if (typeof payload.exp !== 'number' || payload.exp < Date.now() / 1000) {
      throw new errors.InvalidGrant('the assertion has expired');
    }
    const { scope, resource } = ctx.oidc.params;
    ctx.body = await issueAccessToken(provider, ctx, client, scope, resource);
  };
  provider.registerGrantType(JWT_BEARER, handler, ['assertion', 'scope', 'resource'], ['resource']);
}

/** RFC 8693: a subject token that is an access token this provider issued (opaque, still
 * valid) exchanged for a token for `resource` and `scope`. */
function registerTokenExchange(provider) {
  const handler = async (ctx) => {
    const { client } = ctx.oidc;
    const { subject_token: subjectToken, subject_token_type: subjectType, scope, resource } = ctx.oidc.params;
    if (subjectType !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    const subject = await provider.ClientCredentials.find(String(subjectToken || ''));
    if (!subject || !subject.isValid) {
      throw new errors.InvalidGrant('the subject token is not an access token this server issued');
    }
    const answer = await issueAccessToken(provider, ctx, client, scope, resource);
    ctx.body = { ...answer, issued_token_type: ACCESS_TOKEN_TYPE };
  };
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    handler,
    ['subject_token', 'subject_token_type', 'requested_token_type', 'scope', 'resource', 'audience'],
    ['resource', 'audience'],
  );
}
