// Preloaded with `node --import ./loopback-listen.mjs ...` by the end-to-end tests.
//
// server-everything's HTTP transports call `app.listen(PORT)`, which binds every interface and
// has no host option. This makes any server that listens on a bare port bind 127.0.0.1 instead
// (PORT=0 lets the OS choose one, with no race), and prints the address it really bound as one
// line on stderr, which is what the tests wait for:
//
//     loopback-listen: listening on 127.0.0.1:PORT
import net from "node:net";

const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const bare = typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]));
  if (bare && (args.length === 1 || typeof args[1] === "function")) {
    args.splice(1, 0, "127.0.0.1");
  }
  this.once("listening", () => {
    const address = this.address();
    if (address && typeof address === "object") {
      process.stderr.write(`loopback-listen: listening on ${address.address}:${address.port}\n`);
    }
  });
  return listen.apply(this, args);
};
