// Test-only OpenID provider for mailgate's integration tests. NEVER a production IdP.
//
// Usage: node server.mjs PORT
//
// Starts the real `oidc-provider` package on http://127.0.0.1:PORT (loopback only) with:
//   - clients `mail-app` and `other-client` (public, native): the mail clients whose tokens
//     mailgate sees; `mailgate` and `dovecot` (confidential, client_secret_basic or post): the
//     resource servers that introspect tokens (HTTP Basic, secrets `mailgate-secret`,
//     `dovecot-secret`);
//   - JWT access tokens for the resource `https://mail.example.com/` (aud = that URL,
//     RS256, `sub` and `email` = the user) and opaque access tokens for
//     `https://mail.example.com/opaque`, which the introspection endpoint answers for;
//   - discovery at /.well-known/openid-configuration, JWKS at /jwks, introspection at
//     /token/introspection, revocation at /token/revocation;
//   - client `mailgate-grants` (confidential, secret `grants-secret`): mailgate as the OAuth
//     client of shared-mailbox grants. Device flow (RFC 8628, /device/auth, interval 1 s),
//     refresh tokens issued whenever the client may refresh, and ROTATED on every use;
//     its access tokens are opaque (Dovecot introspects them) and live GRANT_TTL seconds
//     (default 3600; `/test/config?grant_ttl=N` changes it).
//
// Two routes exist ONLY in this test server, so the harness needs no browser:
//   GET  /test/token?user=U&client=C&kind=jwt|opaque[&ttl=SECONDS]
//        mints an access token for user U issued to client C, exactly as the authorization
//        code grant would (a Grant is saved, then an AccessToken), and answers its value as
//        text/plain;
//   POST /test/rotate
//        makes a new RS256 signing key (new `kid`), signs from now on with it and keeps the
//        previous key in the JWKS (as a real rotation does). The provider is rebuilt; tokens
//        already minted survive because oidc-provider's memory adapter is module-global.
//   POST /test/device/approve?user_code=CODE&account=A
//        what the user does in the browser in the device flow: signs in as A and consents
//        (openid offline_access mail on the opaque resource). The next poll gets the tokens;
//   GET  /test/authorize?client_id=C&redirect_uri=R&code_challenge=X&code_challenge_method=S256
//        &state=T&account=A
//        what the browser does in the authorization code flow: signs in as A, consents, and is
//        sent to R; answers the redirect URL (R?code=...&state=T) as text. The token endpoint
//        then checks the PKCE verifier and R as usual;
//   POST /test/config?grant_ttl=SECONDS
//        the lifetime of access tokens issued to `mailgate-grants` from now on;
//   GET  /test/count
//        {"token": N}: POST requests to the token endpoint so far (refreshes, device polls,
//        code exchanges; not introspection), so a test can count mailgate's refreshes.
//
// Prints `listening <issuer>` once the port is bound; the harness still waits for the
// discovery document.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const JWT_RESOURCE = 'https://mail.example.com/';
const OPAQUE_RESOURCE = 'https://mail.example.com/opaque';

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: `k-${randomBytes(6).toString('hex')}`,
    use: 'sig',
    alg: 'RS256',
  };
}

let keys = [newKey()];
let grantTtl = 3600;
let tokenRequests = 0;
const GRANTS_CLIENT = 'mailgate-grants';

function resourceInfo(resource, ttl) {
  const info = {
    scope: 'mail',
    audience: resource,
    accessTokenTTL: ttl ?? 3600,
  };
  if (resource === OPAQUE_RESOURCE) {
    return { ...info, accessTokenFormat: 'opaque' };
  }
  return { ...info, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
}

function build() {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'mail-app',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        client_id: 'other-client',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        client_id: 'mailgate',
        client_secret: 'mailgate-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: GRANTS_CLIENT,
        client_secret: 'grants-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token', 'authorization_code'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        client_id: 'dovecot',
        client_secret: 'dovecot-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    jwks: { keys },
    findAccount: async (_ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, email: id }),
    }),
    scopes: ['openid', 'email', 'mail'],
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 3600,
      ClientCredentials: 600,
      Grant: 86400,
      RefreshToken: 86400,
      DeviceCode: 600,
    },
    // Issue one whenever the client may refresh (mailgate-grants), offline_access or not, and
    // rotate it on every use, as Microsoft does: the tests check mailgate persists each one.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    extraTokenClaims: async (_ctx, token) => (token.accountId ? { email: token.accountId } : undefined),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      // Any confidential client may introspect (mailgate, dovecot); public ones may not.
      introspection: {
        enabled: true,
        allowedPolicy: (_ctx, client) => client.clientAuthMethod !== 'none',
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => JWT_RESOURCE,
        getResourceServerInfo: (_ctx, resource, client) => (client?.clientId === GRANTS_CLIENT
          ? resourceInfo(OPAQUE_RESOURCE, grantTtl)
          : resourceInfo(resource)),
        useGrantedResource: () => true,
      },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  // RFC 8628 3.2: the server picks the polling interval; 1 s keeps the tests quick.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/device/auth' && ctx.body && typeof ctx.body === 'object') {
      ctx.body.interval = 1;
    }
  });
  return provider;
}

let provider = build();

async function mint(url) {
  const user = url.searchParams.get('user');
  const clientId = url.searchParams.get('client');
  const kind = url.searchParams.get('kind') ?? 'jwt';
  const ttl = url.searchParams.has('ttl') ? Number(url.searchParams.get('ttl')) : undefined;
  if (!user || !clientId || !['jwt', 'opaque'].includes(kind)) {
    return [400, 'need user, client and kind=jwt|opaque'];
  }
  const client = await provider.Client.find(clientId);
  if (!client) return [404, `no client ${clientId}`];
  const resource = kind === 'jwt' ? JWT_RESOURCE : OPAQUE_RESOURCE;
  const grant = new provider.Grant({ accountId: user, clientId });
  grant.addOIDCScope('openid email');
  grant.addResourceScope(resource, 'mail');
  const grantId = await grant.save();
  const token = new provider.AccessToken({
    accountId: user,
    client,
    grantId,
    gty: 'authorization_code',
    scope: 'mail',
  });
  token.resourceServer = new provider.ResourceServer(resource, resourceInfo(resource, ttl));
  const value = await token.save();
  return [200, value];
}

async function approve(url) {
  const userCode = url.searchParams.get('user_code') ?? '';
  const account = url.searchParams.get('account');
  if (!account) return [400, 'need user_code and account'];
  const normalized = userCode.toUpperCase().replace(/\W/g, '');
  const code = await provider.DeviceCode.findByUserCode(normalized);
  if (!code) return [404, 'no such user code'];
  const grant = new provider.Grant({ accountId: account, clientId: code.clientId });
  grant.addOIDCScope('openid offline_access');
  grant.addResourceScope(OPAQUE_RESOURCE, 'mail');
  code.accountId = account;
  code.grantId = await grant.save();
  code.scope = 'openid offline_access mail';
  code.resource = OPAQUE_RESOURCE;
  code.authTime = Math.floor(Date.now() / 1000);
  await code.save();
  return [200, 'approved'];
}

async function authorizeCode(url) {
  const p = (k) => url.searchParams.get(k);
  const account = p('account');
  const client = await provider.Client.find(p('client_id') ?? '');
  if (!client || !account || !p('redirect_uri') || !p('code_challenge')) {
    return [400, 'need client_id, redirect_uri, code_challenge and account'];
  }
  const grant = new provider.Grant({ accountId: account, clientId: client.clientId });
  grant.addOIDCScope('openid offline_access');
  grant.addResourceScope(OPAQUE_RESOURCE, 'mail');
  const grantId = await grant.save();
  const code = new provider.AuthorizationCode({
    accountId: account,
    client,
    grantId,
    redirectUri: p('redirect_uri'),
    codeChallenge: p('code_challenge'),
    codeChallengeMethod: p('code_challenge_method') ?? 'S256',
    scope: 'openid offline_access mail',
    resource: OPAQUE_RESOURCE,
    authTime: Math.floor(Date.now() / 1000),
  });
  const value = await code.save();
  const back = new URL(p('redirect_uri'));
  back.searchParams.set('code', value);
  back.searchParams.set('state', p('state') ?? '');
  return [200, back.toString()];
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', issuer);
  if (url.pathname === '/token' && req.method === 'POST') {
    tokenRequests += 1;
  }
  try {
    if (url.pathname === '/test/device/approve' && req.method === 'POST') {
      const [status, body] = await approve(url);
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
      return;
    }
    if (url.pathname === '/test/authorize' && req.method === 'GET') {
      const [status, body] = await authorizeCode(url);
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
      return;
    }
    if (url.pathname === '/test/config' && req.method === 'POST') {
      grantTtl = Number(url.searchParams.get('grant_ttl') ?? grantTtl);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(String(grantTtl));
      return;
    }
    if (url.pathname === '/test/count' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: tokenRequests }));
      return;
    }
    if (url.pathname === '/test/token' && req.method === 'GET') {
      const [status, body] = await mint(url);
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
      return;
    }
    if (url.pathname === '/test/rotate' && req.method === 'POST') {
      keys = [newKey(), keys[0]];
      provider = build();
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(keys[0].kid);
      return;
    }
  } catch (err) {
    console.error('test route failed', err);
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(err));
    return;
  }
  provider.callback()(req, res);
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

// The harness kills us on drop; also leave when our parent's stdin pipe closes.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
