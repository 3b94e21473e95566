// Starts the Portkey gateway (build/start-server.js of @portkey-ai/gateway) listening on
// 127.0.0.1 only: its CLI takes --port=N but no host, and @hono/node-server then binds every
// interface. Same process, same code; only the listen address changes.
//
//   node bench/peers/portkey-loopback.mjs --port=N --headless
import net from "node:net";
import { createRequire } from "node:module";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length < 2 || args[1] === undefined || typeof args[1] === "function")) {
    if (args[1] === undefined && args.length >= 2) args.splice(1, 1, "127.0.0.1");
    else args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};

const require = createRequire(import.meta.url);
const pkg = require.resolve("@portkey-ai/gateway/package.json");
await import(new URL("build/start-server.js", "file://" + pkg.replace(/package\.json$/, "")).href);
