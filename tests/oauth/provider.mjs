// A real OpenID provider for the end-to-end tests: node-oidc-provider on loopback, with
// client_credentials clients and resource indicators, so that access tokens are JWTs whose `aud`
// is the resource the client asked for. Started by tests/e2e/oauth_provider.py, which installs
// the package and passes its entry point in OIDC_PROVIDER_ENTRY. Prints "READY <issuer>" once
// it serves. Not for production: every secret here is a test value.
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import { pathToFileURL } from "node:url";

const { default: Provider } = await import(pathToFileURL(process.env.OIDC_PROVIDER_ENTRY).href);

const clients = JSON.parse(process.env.OIDC_CLIENTS);
const ttl = Number(process.env.OIDC_ACCESS_TOKEN_TTL || "600");

const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "e2e-key-1", alg: "RS256", use: "sig" };

const server = http.createServer();
server.listen(0, "127.0.0.1", () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      scope: c.scope,
    })),
    scopes: ["mcp:tools", "billing:write", "other"],
    jwks: { keys: [jwk] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A client must name the resource: no token without an audience.
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(resourceIndicator)) {
            throw new Error("only loopback resources in this test provider");
          }
          return {
            scope: "mcp:tools billing:write other",
            audience: resourceIndicator,
            accessTokenTTL: ttl,
            accessTokenFormat: "jwt",
            jwt: { sign: { alg: "RS256" } },
          };
        },
      },
    },
  });
  server.on("request", provider.callback());
  process.stdout.write(`READY ${issuer}\n`);
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
