// Run from an application folder where the packed o2obroker package is
// installed (test_browser.PackageTests): the ES module and the CommonJS
// module load, leave no global behind, and talk to the broker (node has no
// WebSocket here, so over long-poll).
//
//   node package_check.mjs BASE_URL
import { createRequire } from "node:module";
import O2OBroker, { O2OBrokerError } from "o2obroker";

const require = createRequire(import.meta.url);
const Required = require("o2obroker");
const base = process.argv[2];

function check(condition, what) {
  if (!condition) throw new Error("check failed: " + what);
}

check(typeof O2OBroker === "function" && typeof Required === "function", "both modules give the class");
check(O2OBroker.Error === O2OBrokerError, "the error class is exported");
check(typeof O2OBroker.prototype.once === "function" && typeof Required.prototype.history === "function", "the API");
check(globalThis.O2OBroker === undefined, "no global from a module");

const a = new O2OBroker({ baseUrl: base, user: "node-a", storage: null });
const b = new Required({ baseUrl: base, user: "node-b", storage: null });
await a.connect();
await b.connect();
const got = new Promise((resolve) => b.once("message", resolve));
const receipt = await a.send({ to: "node-b", body: { text: "from node" } });
const msg = await got;
const refused = await new O2OBroker({ baseUrl: base, storage: null, transports: ["lp"] }).connect().catch((e) => e);
a.close();
b.close();
console.log(JSON.stringify({
  transport: a.transport,
  status: receipt.status,
  text: msg.body.text,
  refused: refused instanceof O2OBrokerError ? refused.code : String(refused),
}));
