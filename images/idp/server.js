// A real OpenID provider for pact's token tests (journal/tests/oidc.rs), built on
// oidc-provider 8. TEST USE ONLY: the clients, secrets and in-memory storage below are fixed
// and public, and --test-signing signs whatever it is asked to.
//
//   node server.js --port N [--issuer http://127.0.0.1:N] --keys FILE [--kid a] [--alg RS256|ES256]
//                  [--user-role ROLE] [--service-role ROLE] [--device-interval SECONDS]
//                  [--test-signing]
//
// --keys FILE   a private JWKS ({"keys": [...]}, every key with a "kid"). When FILE does not
//               exist, one key is generated (kid --kid, algorithm --alg) and written there.
//               Access tokens are signed with the first key; a rotation is a restart with a
//               file that holds the new key (and not the old one).
// Clients:
//   pact-test / pact-test-secret (client_secret_basic): client_credentials, and
//     authorization_code (+PKCE), refresh_token and the device flow, redirect
//     http://localhost:8400/callback.
//   pact-cli and pact (public, PKCE required; `pact` is the deployment guide's client id, the
//     CLI's default): authorization_code, refresh_token and the device flow, same redirect.
//     They are native clients, so any port on a loopback redirect is accepted
//     (http://localhost:N/callback, RFC 8252 §7.3): `pact login --callback-port N`.
// Every client allowed the refresh_token grant gets a refresh token with its access token
// (no offline_access/prompt=consent dance), as the CLI's token cache expects.
// Access tokens for the resource urn:pact (the default; a resource indicator must be an
// absolute URI) are JWTs with aud "pact", and carry `sub` and `pact_role`:
//   client_credentials: token-request parameters pact_role=ROLE (default --service-role, else
//     pact-viewer-default) and pact_subject=NAME (default: the client id) choose them per token;
//   interactive logins (dev interactions, any login/password): sub = the login,
//     pact_role = --user-role (default pact-platform-admin).
// --device-interval SECONDS  the polling interval the device authorization endpoint announces
//   (`interval`; without it none is sent and clients poll every 5 s, RFC 8628 §3.2).
// --test-signing  also serves POST /test/sign: body {"claims": {...}, "header": {...}} →
//   a compact JWS signed with the current key. Defaults: iss = the issuer, aud = "pact",
//   sub = "pact-test", iat = now, exp = now + 600; a claim given as null is left out.
// Prints one line "IDP READY <issuer>" on stdout once it listens.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import Provider, { errors } from 'oidc-provider';
// The built-in client_credentials grant, re-registered below with two more parameters
// (provider.registerGrantType is public API; the token endpoint drops unknown parameters).
import {
  handler as clientCredentialsHandler,
  parameters as clientCredentialsParameters,
} from 'oidc-provider/lib/actions/grants/client_credentials.js';

const RESOURCE = 'urn:pact';
const AUDIENCE = 'pact';
const REDIRECT = 'http://localhost:8400/callback';

function usage(msg) {
  process.stderr.write(`idp: ${msg}\nusage: node server.js --port N [--issuer URL] --keys FILE [--kid a] [--alg RS256|ES256] [--user-role ROLE] [--service-role ROLE] [--device-interval SECONDS] [--test-signing]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    kid: 'a', alg: 'RS256', userRole: 'pact-platform-admin', serviceRole: 'pact-viewer-default', testSigning: false,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      i += 1;
      return argv[i];
    };
    switch (a) {
      case '--port': o.port = Number(value()); break;
      case '--issuer': o.issuer = value(); break;
      case '--keys': o.keys = value(); break;
      case '--kid': o.kid = value(); break;
      case '--alg': o.alg = value(); break;
      case '--user-role': o.userRole = value(); break;
      case '--service-role': o.serviceRole = value(); break;
      case '--device-interval': o.deviceInterval = Number(value()); break;
      case '--test-signing': o.testSigning = true; break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!Number.isInteger(o.port) || o.port <= 0 || o.port > 65535) usage('--port N is required');
  if (!o.keys) usage('--keys FILE is required');
  if (o.deviceInterval !== undefined && !(Number.isInteger(o.deviceInterval) && o.deviceInterval >= 1)) {
    usage('--device-interval SECONDS: expected a whole number of seconds, 1 or more');
  }
  if (!['RS256', 'ES256'].includes(o.alg)) usage(`--alg ${o.alg}: expected RS256 or ES256`);
  o.issuer = (o.issuer || `http://127.0.0.1:${o.port}`).replace(/\/+$/, '');
  return o;
}

function generateKey(kid, alg) {
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

function loadKeys(file, kid, alg) {
  if (!fs.existsSync(file)) {
    const jwks = { keys: [generateKey(kid, alg)] };
    fs.writeFileSync(file, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
    process.stderr.write(`idp: generated ${alg} key ${JSON.stringify(kid)} in ${file}\n`);
  }
  const jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) throw new Error(`${file}: no "keys"`);
  for (const k of jwks.keys) {
    if (typeof k.kid !== 'string' || !k.kid) throw new Error(`${file}: every key needs a "kid"`);
    if (!k.d) throw new Error(`${file}: key ${k.kid} is not a private key`);
    if (!k.alg) k.alg = k.kty === 'EC' ? 'ES256' : 'RS256';
  }
  return jwks;
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/// A compact JWS of `payload` with the private JWK `jwk` (RS256 or ES256), node crypto only.
function signJws(jwk, header, payload) {
  const alg = jwk.alg;
  const h = { alg, typ: 'JWT', kid: jwk.kid, ...header };
  const input = `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(payload))}`;
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const sig = alg === 'ES256'
    ? crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
    : crypto.sign('sha256', Buffer.from(input), key);
  return `${input}.${b64url(sig)}`;
}

function readBody(req, limit = 65536) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function testSign(opts, signingKey, req, res) {
  try {
    const body = JSON.parse((await readBody(req)) || '{}');
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: opts.issuer, aud: AUDIENCE, sub: 'pact-test', iat: now, exp: now + 600, ...(body.claims || {}),
    };
    for (const [k, v] of Object.entries(claims)) if (v === null) delete claims[k];
    const token = signJws(signingKey, body.header || {}, claims);
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(token) });
    res.end(token);
  } catch (e) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`bad request: ${e.message}\n`);
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const jwks = loadKeys(opts.keys, opts.kid, opts.alg);
  const signingKey = jwks.keys[0];
  const signAlg = signingKey.alg;

  const clientBase = {
    redirect_uris: [REDIRECT],
    response_types: ['code'],
    id_token_signed_response_alg: signAlg,
  };
  // Public native clients (the CLI): PKCE, no secret, any loopback port.
  const publicClient = (clientId) => ({
    ...clientBase,
    client_id: clientId,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  });
  const provider = new Provider(opts.issuer, {
    clients: [
      {
        ...clientBase,
        client_id: 'pact-test',
        client_secret: 'pact-test-secret',
        grant_types: [
          'client_credentials',
          'authorization_code',
          'refresh_token',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
      },
      publicClient('pact-cli'),
      publicClient('pact'),
    ],
    clientDefaults: { id_token_signed_response_alg: signAlg },
    jwks,
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    // A refresh token for every client allowed the grant, offline_access or not.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Interactive logins (dev interactions): any login is an account of that name.
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, pact_role: opts.userRole }),
    }),
    claims: { openid: ['sub'], pact: ['pact_role'] },
    scopes: ['openid', 'offline_access', 'pact'],
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}; this IdP serves ${RESOURCE}`);
          }
          return {
            scope: 'openid pact',
            audience: AUDIENCE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 600,
            jwt: { sign: { alg: signAlg } },
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      if (token.kind === 'ClientCredentials') {
        return { pact_role: ctx?.oidc?.params?.pact_role || opts.serviceRole };
      }
      return { pact_role: opts.userRole };
    },
    formats: {
      customizers: {
        // sub defaults to the client id for client_credentials; pact_subject overrides it.
        jwt: async (ctx, token, jwt) => {
          const subject = ctx?.oidc?.params?.pact_subject;
          if (token.kind === 'ClientCredentials' && subject) {
            // eslint-disable-next-line no-param-reassign
            jwt.payload.sub = subject;
          }
        },
      },
    },
  });
  provider.registerGrantType(
    'client_credentials',
    clientCredentialsHandler,
    new Set([...clientCredentialsParameters, 'resource', 'pact_role', 'pact_subject']),
    new Set(['resource']),
  );
  if (opts.deviceInterval) {
    // oidc-provider announces no interval; add one to device authorization answers.
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        ctx.body = { ...ctx.body, interval: opts.deviceInterval };
      }
    });
  }
  provider.on('server_error', (ctx, err) => process.stderr.write(`idp: server error: ${err.stack || err}\n`));
  provider.on('grant.error', (ctx, err) => process.stderr.write(`idp: grant error: ${err.message} ${err.error_description || ''}\n`));

  const callback = provider.callback();
  const server = http.createServer((req, res) => {
    const path = (req.url || '').split('?')[0];
    if (path === '/test/sign') {
      if (!opts.testSigning || req.method !== 'POST') {
        res.writeHead(404);
        res.end();
        return;
      }
      testSign(opts, signingKey, req, res);
      return;
    }
    callback(req, res);
  });
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  server.on('error', (e) => {
    process.stderr.write(`idp: ${e.message}\n`);
    process.exit(1);
  });
  server.listen(opts.port, '127.0.0.1', () => {
    process.stderr.write(`idp: keys ${jwks.keys.map((k) => `${k.kid} (${k.alg})`).join(', ')}; test signing ${opts.testSigning ? 'ON' : 'off'}\n`);
    process.stdout.write(`IDP READY ${opts.issuer}\n`);
  });
}

try {
  main();
} catch (e) {
  process.stderr.write(`idp: ${e.stack || e}\n`);
  process.exit(1);
}
