// What a web developer's page meets in real use, tried in Chromium against
// the broker that test_browser.py runs. Each scenario is one run:
//
//   node tests/browser/scenarios.mjs SCENARIO USER_DATA_DIR CONFIG_JSON
//
// CONFIG_JSON names the addresses of the run ({"base": ..., ...}). Prints one JSON line with what was seen; exits non-zero on a failure.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [scenario, userDataDir, configJson] = process.argv.slice(2);
const DEADLINE_MS = 75000;
const config = JSON.parse(configJson);
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// The pages are tests/browser/harness.html, which the test serves from the
// broker's own origin (a page of the application, as far as Chromium knows).
const HARNESS = readFileSync(new URL("./harness.html", import.meta.url), "utf8");

function check(condition, what) {
  if (!condition) throw new Error("check failed: " + what);
}

async function open(context, base, { script = false } = {}) {
  const page = await context.newPage();
  if (script) {
    // a broker that does not answer cannot serve the page or its script
    await page.route(`${base}/harness.html`, (route) =>
      route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: HARNESS }),
    );
    await page.route(`${base}/o2obroker.js`, (route) => route.fulfill({ path: "o2obroker/web/static/o2obroker.js" }));
  }
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${base}/harness.html`);
  return page;
}

async function waitFor(page, predicate, arg, what, timeout = 20000) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 50 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}`);
  }
}

const range = (n) => Array.from({ length: n }, (_, i) => i + 1);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
function assertNumbered(log, n, what) {
  check(same(log, range(n)), `${what}: 1..${n} once each, in order; got ${log.length}: ${JSON.stringify(log).slice(0, 300)}`);
}

const scenarios = {};

/**
 * Calls made before connect() (join, watch, setPresence, probe, 200 sends) wait and
 * go out in order; on long-poll the sends are batched into few POSTs and
 * arrive in order; history() settles (rejected while the broker has no archive).
 */
scenarios.order = async (context) => {
  const bob = await open(context, config.base);
  await bob.evaluate(() => make({ user: "bob-order" }).connect());
  check((await bob.evaluate(() => client.transport)) === "ws", "bob on ws");
  const alice = await open(context, config.base);
  const posts = [];
  alice.on("request", (r) => { if (r.url().includes("/lp/send")) posts.push(r.url()); });
  const early = await alice.evaluate(async () => {
    var c = make({ user: "alice-order", transports: ["lp"] });
    var joined = c.join("order-room");
    c.watch(["bob-order"]);
    c.setPresence("busy", "queued before the session");
    c.probe(["nobody-order"]);
    var sends = [];
    for (var i = 1; i <= 200; i++) sends.push(c.send({ to: "bob-order", body: { n: i } }));
    await c.connect();
    var j = await joined;
    var receipts = await Promise.all(sends);
    // and 200 more while open, in one loop: they queue behind the POST in flight
    for (var k = 201; k <= 400; k++) sends.push(c.send({ to: "bob-order", body: { n: k } }));
    receipts = await Promise.all(sends);
    return { members: j.members, receipts: receipts.length, transport: c.transport };
  });
  check(early.members === 1 && early.receipts === 400 && early.transport === "lp", JSON.stringify(early));
  await waitFor(bob, () => log.length >= 400, null, "bob gets 400 messages");
  await bob.waitForTimeout(200);
  assertNumbered(await bob.evaluate(() => log), 400, "bob");
  await waitFor(alice, () => presence.some((p) => p.user === "bob-order" && p.state === "online"), null, "alice's queued watch");
  await waitFor(alice, () => presence.some((p) => p.user === "nobody-order" && p.state === "offline"), null, "alice's queued probe");
  const history = await alice.evaluate(() =>
    client.history({ with: "bob-order", limit: 5 }).then(
      (page) => ({ ok: true, count: page.messages.length }),
      (e) => ({ ok: false, code: e.code, name: e.name, isError: e instanceof O2OBroker.Error }),
    ));
  check(history.ok || (history.isError && typeof history.code === "number"), "history settles: " + JSON.stringify(history));
  // the connection drops (as a network does) and bob changes meanwhile: the watch is
  // sent again on the next session, so alice's view is current after the gap
  await alice.route("**/lp/**", (route) => route.abort());
  await alice.evaluate(() => client._lost(client._conn));
  await bob.evaluate(() => client.setPresence("away", "out for lunch"));
  await alice.waitForTimeout(800);
  await alice.unroute("**/lp/**");
  await waitFor(alice, () => presence.some((p) => p.user === "bob-order" && p.state === "away"), null, "the watch restored");
  // more than max_frame (1 MiB) queued at once: split over several POSTs, still in order
  await alice.evaluate(() => {
    var text = "x".repeat(60000);
    var sends = [];
    for (var n = 401; n <= 420; n++) sends.push(client.send({ to: "bob-order", body: { n: n, text: text } }));
    return Promise.all(sends);
  });
  await waitFor(bob, () => log.length >= 420, null, "bob gets 420 messages");
  assertNumbered(await bob.evaluate(() => log), 420, "bob, with the large ones");
  // the history refusal rejected its promise: no error event besides
  const errors = await alice.evaluate(() => errors);
  check(errors.length === 0, "no error events: " + JSON.stringify(errors));
  return { posts: posts.length, history };
};

/**
 * A WebSocket session with a watch and a room drops: the next WebSocket
 * session watches and joins again, opens, and takes new calls at once.
 */
scenarios.restore = async (context) => {
  const bob = await open(context, config.base);
  await bob.evaluate(() => make({ user: "bob-restore" }).connect());
  const alice = await open(context, config.base);
  await alice.evaluate(async () => {
    window.joins = [];
    const c = make({ user: "alice-restore" });
    c.on("joined", (f) => joins.push(f.room));
    await c.connect();
    c.watch(["bob-restore"]);
    await c.join("restore-room");
  });
  await waitFor(alice, () => presence.some((p) => p.user === "bob-restore" && p.state === "online"), null, "alice watches bob");
  const before = await alice.evaluate(() => [client.transport, client.device]);
  check(before[0] === "ws", "alice on ws: " + before);
  // the socket drops as a network would drop it
  await alice.evaluate(() => { window.states = []; client.on("state", (s) => states.push(s)); client._conn.ws.close(); });
  await waitFor(alice, () => states.join() === "connecting,open", null, "alice open again", 10000);
  await waitFor(alice, () => joins.length === 2, null, "the room joined again");
  // a call on the new session goes out at once, and the watch is live on it
  const receipt = await alice.evaluate(() => client.send({ to: "bob-restore", body: { n: 1 } }).then((r) => r.status));
  check(receipt === "delivered", "a send after the reconnect: " + receipt);
  await bob.evaluate(() => client.setPresence("away", "back soon"));
  await waitFor(alice, () => presence.some((p) => p.user === "bob-restore" && p.state === "away"), null, "the watch restored");
  // a join or leave the broker refuses rejects its own promise (the error names its id)
  const refused = await alice.evaluate(() => {
    const settled = (p) => Promise.race([
      p.then(() => "resolved", (e) => e.code),
      new Promise((resolve) => setTimeout(() => resolve("pending"), 3000)),
    ]);
    return Promise.all([settled(client.join("r".repeat(129))), settled(client.leave("")), settled(client.join("restore-room"))]);
  });
  check(same(refused, [400, 400, "resolved"]), "refused join and leave: " + JSON.stringify(refused));
  // a device name of the broker's largest size still makes ids that fit its 64 bytes
  const long = await alice.evaluate(async () => {
    const c = new O2OBroker({ baseUrl: location.origin, user: "carol-restore", device: "d".repeat(64), storage: null });
    await c.connect();
    const r = await c.send({ to: "bob-restore", body: { n: 2 } });
    const j = await c.join("restore-room");
    const h = await c.history({ with: "bob-restore" }).then(() => "page", (e) => e.code);
    c.close();
    return [r.status, j.members, h];
  });
  check(same(long, ["delivered", 2, 404]), "a 64-byte device: " + JSON.stringify(long));
  // close() right after messages arrive: their ack goes before the bye, so the same
  // device (no stored seq to resume from) is not sent them again
  const again = await alice.evaluate(async () => {
    const opts = { baseUrl: location.origin, user: "dave-restore", device: "d-ack", storage: null };
    const first = new O2OBroker(opts);
    let got = 0;
    const closed = new Promise((resolve) => first.on("message", () => {
      got += 1;
      if (got === 3) { first.close(); resolve(); }
    }));
    await first.connect();
    for (let n = 1; n <= 3; n++) await client.send({ to: "dave-restore", body: { n: n } });
    await closed;
    await new Promise((resolve) => setTimeout(resolve, 300));
    const second = new O2OBroker(opts);
    let repeated = 0;
    second.on("message", () => { repeated += 1; });
    await second.connect();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    second.close();
    return [got, repeated];
  });
  check(same(again, [3, 0]), "messages acked before the bye: " + JSON.stringify(again));
  const errors = await alice.evaluate(() => errors);
  check(errors.length === 0, "no error events: " + JSON.stringify(errors));
  return { transports: await alice.evaluate(() => transports), joins: await alice.evaluate(() => joins) };
};

/** A WebSocket stalls: ping, long-poll, then back to WebSocket; 500 messages each way. */
scenarios.stall = async (context) => {
  const bob = await open(context, config.base);
  await bob.evaluate(() => make({ user: "bob-stall" }).connect());
  const alice = await open(context, config.proxy);
  const closes = [];
  alice.on("request", (r) => { if (r.url().includes("/lp/close")) closes.push(r.url()); });
  await alice.evaluate(() =>
    make({ user: "alice-stall", wsRetryMs: 3000, pingTimeoutMs: 1000, connectTimeoutMs: 2000 }).connect());
  const first = await alice.evaluate(() => [client.transport, transports, errors]);
  check(first[0] === "ws", "alice starts on ws: " + JSON.stringify(first));
  // when each message and each change of transport reached the page
  await alice.evaluate(() => {
    window.arrivals = [];
    window.switches = [];
    client.on("message", () => arrivals.push(Date.now()));
    client.on("transport", (t) => switches.push([t, Date.now()]));
  });
  const fromAlice = alice.evaluate(() => numbered("bob-stall", 500, 30));
  const fromBob = bob.evaluate(() => numbered("alice-stall", 500, 30));
  await alice.waitForTimeout(1000);
  const stalled = await (await fetch(config.control + "/stall", { method: "POST" })).json();
  check(stalled.stalled >= 1, "the proxy stalled alice's WebSocket");
  const t0 = Date.now();
  await waitFor(alice, () => client.transport === "lp" && client.state === "open", null, "alice on long-poll");
  const detected = Date.now() - t0;
  await waitFor(alice, () => transports.join() === "ws,lp,ws", null, "alice back on WebSocket");
  const sent = { alice: await fromAlice, bob: await fromBob };
  check(sent.alice.rejected === 0 && sent.bob.rejected === 0, "every send has a receipt: " + JSON.stringify(sent));
  await waitFor(bob, () => log.length >= 500, null, "bob gets 500");
  await waitFor(alice, () => log.length >= 500, null, "alice gets 500");
  await alice.waitForTimeout(300);
  assertNumbered(await bob.evaluate(() => log), 500, "bob");
  assertNumbered(await alice.evaluate(() => log), 500, "alice");
  const errors = await alice.evaluate(() => errors);
  check(errors.length === 0, "no error events on alice: " + JSON.stringify(errors));
  // the long-poll session ended when the WebSocket's hello took it over: nothing to close after that
  check(closes.length === 0, "no /lp/close on the upgrade: " + closes);
  // no pause in delivery around the upgrade: the longest wait between two messages
  // from a second before the WebSocket took over until two seconds after
  const upgrade = await alice.evaluate(() => {
    const at = switches[switches.length - 1][1];
    const near = arrivals.filter((t) => t >= at - 1000 && t <= at + 2000);
    const gaps = near.slice(1).map((t, i) => t - near[i]);
    return { count: near.length, gapMs: Math.max(0, ...gaps), sending: arrivals[arrivals.length - 1] - at };
  });
  return { detectedMs: detected, transports: await alice.evaluate(() => transports), upgrade };
};

/** Reloads under traffic resume as the same device: nothing lost, nothing twice. */
scenarios.reload = async (context) => {
  const result = {};
  for (const transport of ["ws", "lp"]) {
    const name = `alice-reload-${transport}`;
    const bob = await open(context, config.base);
    await bob.evaluate(() => make({ user: "bob-reload" }).connect());
    const alice = await open(context, config.base);
    const device = await alice.evaluate(([u, t]) => start(u, t), [name, transport]);
    check((await alice.evaluate(() => client.transport)) === transport, `${transport}: alice on ${transport}`);
    const sending = bob.evaluate((to) => numbered(to, 300, 10), name);
    const devices = [];
    for (let i = 0; i < 3; i++) {
      await alice.waitForTimeout(600);
      await alice.reload();
      devices.push(await alice.evaluate(([u, t]) => start(u, t), [name, transport]));
    }
    const sent = await sending;
    check(sent.rejected === 0, `${transport}: bob's sends all have receipts`);
    await waitFor(alice, () => log.length >= 300, null, `${transport}: alice gets 300 across reloads`);
    await alice.waitForTimeout(300);
    assertNumbered(await alice.evaluate(() => log), 300, `${transport}: alice across reloads`);
    check(devices.every((d) => d === device), `${transport}: the same device after reloads: ${device} ${devices}`);
    // a duplicated tab (its sessionStorage is a copy) is a device of its own, beside this one
    const [copy] = await Promise.all([
      context.waitForEvent("page"),
      alice.evaluate(() => window.open(location.href)),
    ]);
    await copy.waitForLoadState();
    const copied = await copy.evaluate(([u, t]) => start(u, t), [name, transport]);
    await alice.waitForTimeout(500);
    check(copied !== device, `${transport}: a duplicated tab gets its own device`);
    const clash = [...(await alice.evaluate(() => errors)), ...(await copy.evaluate(() => errors))];
    check(clash.length === 0 && (await alice.evaluate(() => client.state)) === "open", `${transport}: no 409 between the tabs: ${JSON.stringify(clash)}`);
    await copy.close();
    // a closed tab goes offline at once (a beacon ends a long-poll session), not after the poll timeout
    await bob.evaluate((u) => client.watch([u]), name);
    await waitFor(bob, (u) => presence.some((p) => p.user === u && p.state === "online"), name, `${transport}: bob sees alice online`);
    const t0 = await bob.evaluate(() => Date.now());
    await alice.goto("about:blank");
    await waitFor(bob, (u) => presence.some((p) => p.user === u && p.state === "offline"), name, `${transport}: alice offline`, 4000);
    const offlineMs = (await bob.evaluate((u) => presence.find((p) => p.user === u && p.state === "offline").at, name)) - t0;
    result[transport] = { device, offlineMs };
    await bob.close();
    await alice.close();
  }
  return result;
};

/** connect() rejects: a bad token, no token, and a broker that does not answer. */
scenarios.refuse = async (context) => {
  const page = await open(context, config.tokenBase);
  const tries = await page.evaluate(async () => {
    async function attempt(options) {
      var t0 = Date.now();
      var c = new O2OBroker(Object.assign({ baseUrl: location.origin, storage: null }, options));
      var errors = 0;
      c.on("error", function () { errors += 1; });
      var early = c.join("r");
      try {
        await c.connect();
        return { ok: true };
      } catch (e) {
        var joined = await early.then(() => "resolved", (j) => j.code);
        return { code: e.code, ms: Date.now() - t0, state: c.state, errors: errors, join: joined };
      }
    }
    return {
      badWs: await attempt({ token: "not.a.token" }),
      badLp: await attempt({ token: "not.a.token", transports: ["lp"] }),
      none: await attempt({ transports: ["lp"] }),
    };
  });
  // a token that allows room "a" only: each refused join rejects its own promise, before and after the welcome
  tries.rooms = await page.evaluate(async (token) => {
    var c = new O2OBroker({ baseUrl: location.origin, token: token, storage: null });
    var errors = 0;
    c.on("error", function () { errors += 1; });
    var settle = (p) => p.then((j) => j.members, (e) => e.code);
    var early = [c.join("b"), c.join("a"), c.join("c")].map(settle);
    await c.connect();
    var late = [c.join("d"), c.join("a")].map(settle);
    var got = await Promise.all(early.concat(late));
    c.close();
    return { got: got, errors: errors };
  }, config.roomsToken);
  check(same(tries.rooms, { got: [403, 1, 403, 403, 1], errors: 0 }), "rooms: " + JSON.stringify(tries.rooms));
  // an unknown app (403, protocol.md section 3; this broker has no app registry, so the
  // routes answer the hello as one would): rejected at once, over either transport.
  // The client names its app in the WebSocket and long-poll URLs too (?app=...), hence the query.
  const apps = await open(context, config.tokenBase);
  const unknownApp = { t: "error", code: 403, reason: "unknown app" };
  await apps.routeWebSocket(/\/ws(\?.*)?$/, (ws) => ws.onMessage(() => { ws.send(JSON.stringify([unknownApp])); ws.close(); }));
  await apps.route(/\/lp\/open\?app=nope$/, (route) => route.fulfill({ status: 403, contentType: "application/json", body: JSON.stringify({ frames: [unknownApp] }) }));
  for (const transports of [["ws", "lp"], ["lp"]]) {
    tries["app-" + transports[0]] = await apps.evaluate(async (transports) => {
      var t0 = Date.now();
      var c = new O2OBroker({ baseUrl: location.origin, token: "t", app: "nope", transports: transports, storage: null });
      var errors = 0;
      c.on("error", function () { errors += 1; });
      var early = c.join("r");
      return c.connect().then(() => ({ ok: true }), async (e) => ({
        code: e.code, ms: Date.now() - t0, state: c.state, errors: errors, join: await early.catch((j) => j.code),
      }));
    }, transports);
  }
  for (const [what, t] of Object.entries(tries)) {
    if (what === "rooms") continue;
    if (what.startsWith("app-")) {
      check(t.code === 403 && t.state === "closed" && t.ms < 3000 && t.errors === 1 && t.join === 403, `${what}: ${JSON.stringify(t)}`);
      continue;
    }
    check(t.code === 401 && t.state === "closed" && t.ms < 3000 && t.errors === 1 && t.join === 401, `${what}: ${JSON.stringify(t)}`);
  }
  const dead = await open(context, config.deadBase, { script: true });
  // every request of the client, timed in the page itself: when it starts and when it fails
  tries.unreachable = await dead.evaluate(async () => {
    var calls = [];
    var realFetch = window.fetch;
    window.fetch = function (url, init) {
      var call = { url: String(url), at: Date.now(), done: 0 };
      calls.push(call);
      var p = realFetch.call(window, url, init);
      var done = function () { call.done = Date.now(); };
      p.then(done, done); // runs before the client's own handlers
      return p;
    };
    var t0 = Date.now();
    var c = new O2OBroker({ baseUrl: location.origin, storage: null, welcomeTimeoutMs: 3000 });
    var located = 0;
    c.on("located", function () { located += 1; });
    var result;
    try {
      await c.connect();
      result = { ok: true };
    } catch (e) {
      result = { code: e.code, ms: Date.now() - t0, state: c.state };
    }
    var tried = calls.length;
    await new Promise(function (resolve) { setTimeout(resolve, 1500); });
    // an attempt starts at /getFreeHostAddress; the wait before it runs from the failure before it
    var waits = [];
    calls.forEach(function (call, i) {
      if (i > 0 && call.url.indexOf("/getFreeHostAddress") >= 0) waits.push(call.at - calls[i - 1].done);
    });
    result.attempts = waits.length + 1;
    result.located = located;
    result.waits = waits;
    result.after = calls.length - tried;
    return result;
  });
  const u = tries.unreachable;
  check(u.code === 408 && u.ms >= 2900 && u.ms < 5000 && u.state === "closed", "unreachable: " + JSON.stringify(u));
  // retries back off (0.5-1 x 500 ms, x 1000 ms, x 2000 ms ...), and stop with the rejection
  check(u.attempts >= 3 && u.attempts <= 4 && u.located === u.attempts && u.after === 0, "attempts: " + JSON.stringify(u));
  check(u.waits.every((w, i) => w >= 250 * 2 ** i && w <= 500 * 2 ** i + 250), "backoff: " + JSON.stringify(u));
  return tries;
};

/**
 * history() against the contract (the broker answers in its place here: the
 * socket is routed, and history frames get an archive page or 404 "no
 * archive"); the demo shows a conversation's archive when it is opened.
 */
scenarios.history = async (context) => {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  const asked = [];
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      const data = JSON.parse(message);
      const frames = Array.isArray(data) ? data : [data];
      const rest = [];
      for (const f of frames) {
        if (f.t !== "history") {
          rest.push(f);
          continue;
        }
        asked.push(f);
        if (f.with === "bob-hist") {
          ws.send(JSON.stringify([{ t: "history", ref: f.id, more: true, messages: [
            { t: "msg", mid: "m2", from: "bob-hist", to: "alice-hist", body: { text: "second" }, ts: 1763800000200 },
            { t: "msg", mid: "m1", from: "alice-hist", to: "bob-hist", body: { text: "first" }, ts: 1763800000100 },
          ] }]));
        } else {
          ws.send(JSON.stringify([{ t: "error", code: 404, reason: "no archive", ref: f.id }]));
        }
      }
      if (rest.length) server.send(JSON.stringify(rest));
    });
  });
  await page.goto(`${config.base}/?user=alice-hist`);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  check((await page.evaluate(() => demo.client.transport)) === "ws", "on the routed WebSocket");
  const api = await page.evaluate(async () => {
    const got = await demo.client.history({ with: "bob-hist", limit: 2 });
    const none = await demo.client.history({ room: "quiet" }).catch((e) => e);
    return { texts: got.messages.map((m) => m.body.text), more: got.more, none: [none instanceof O2OBroker.Error, none.code, none.reason] };
  });
  check(same(api, { texts: ["second", "first"], more: true, none: [true, 404, "no archive"] }), "history(): " + JSON.stringify(api));
  // the demo: opening a conversation shows its archive, oldest first; none, and it stays quiet
  await page.fill("#to", "#quiet");
  await page.dispatchEvent("#to", "change");
  await page.fill("#to", "bob-hist");
  await page.dispatchEvent("#to", "change");
  await waitFor(page, () => document.querySelectorAll("#messages li.past").length === 2, null, "the archive in the demo");
  const shown = await page.evaluate(() => [...document.querySelectorAll("#messages li.past .text")].map((e) => e.textContent));
  check(same(shown, ["first", "second"]), "oldest first: " + JSON.stringify(shown));
  const rooms = asked.filter((f) => f.room === "quiet").length;
  check(asked.length === 4 && rooms === 2 && asked[0].limit === 2, "asked: " + JSON.stringify(asked));
  return { asked: asked.length, shown };
};

/**
 * A client with a key asks /api/v1/route, connects to the key's node (another
 * node than the page's), and when that node dies goes to the standby the
 * route named, where a message sent after the move arrives.
 */
scenarios.route = async (context) => {
  const page = await open(context, config.base);
  const first = await page.evaluate(async (key) => {
    var c = (window.routed = new O2OBroker({ baseUrl: location.origin, user: "alice-route", storage: null, key: key, backoffMs: 200 }));
    window.got = [];
    window.located = [];
    c.on("located", function (w) { window.located.push(w); });
    c.on("message", function (m) { window.got.push(m.body); });
    var welcome = await c.connect();
    return { node: welcome.node, ws: window.located[0].ws, route: window.located[0].route };
  }, config.key);
  const killed = await fetch(config.control + "/kill", { method: "POST" });
  check(killed.ok, "the test killed the key's node");
  await waitFor(page, () => window.routed.state === "open" && window.routed.welcome.node !== window.located[0].route.node.id, null, "the standby's welcome", 15000);
  const then = await page.evaluate(async () => {
    await window.routed.send({ to: "alice-route", body: { n: 1 } });
    return { node: window.routed.welcome.node, tries: window.located.length };
  });
  await waitFor(page, () => window.got.length === 1, null, "the message on the standby");
  await page.evaluate(() => window.routed.close());
  return { first: first.node, ws: first.ws, standby: first.route.standby.id, then: then.node, got: await page.evaluate(() => window.got) };
};

/**
 * Three real nodes on one Redis: a client with a key connects to the key's
 * node over config.transport; the test (config.control /go) then streams
 * messages to it and, mid-way, kills that node with SIGKILL or drains it (a
 * 503 naming another node). The client moves to the standby or the
 * redirect's target and resumes: every message that got a receipt is handed
 * to the page once, in the order sent. Every long-poll request carries the
 * route's parameters (a front proxy hashes each by key).
 */
scenarios.clusterRoute = async (context) => {
  // the page of an application on its own origin; the nodes are elsewhere
  const page = await open(context, config.control);
  const lpUrls = [];
  page.on("request", (r) => { if (r.url().includes("/lp/")) lpUrls.push(r.url()); });
  const first = await page.evaluate(async ([base, key, token, transport]) => {
    var c = (window.routed = new O2OBroker({ baseUrl: base, token: token, key: key, storage: null, backoffMs: 200, transports: [transport] }));
    window.got = [];
    window.located = [];
    window.nodes = [];
    c.on("located", function (w) { window.located.push(w); });
    c.on("message", function (m) { window.got.push({ mid: m.mid, seq: m.seq }); });
    c.on("state", function (s) { if (s === "open") window.nodes.push(c.welcome.node); });
    var welcome = await c.connect();
    return { node: welcome.node, transport: c.transport, route: window.located[0].route };
  }, [config.base, config.key, config.token, config.transport]);
  check(first.transport === config.transport, "on " + config.transport + ": " + first.transport);
  const go = await fetch(config.control + "/go", { method: "POST" });
  check(go.ok, "the test's traffic and " + config.action);
  const { receipted } = await go.json();
  await waitFor(page, (n) => window.got.length >= n, receipted.length, `${receipted.length} messages`, 30000);
  const seen = await page.evaluate(() => ({ got: window.got, node: window.routed.welcome.node, nodes: window.nodes, last: window.located[window.located.length - 1] }));
  await page.evaluate(() => window.routed.close());
  check(same(seen.got.map((m) => m.mid), receipted), "each receipted message once, in order: " + JSON.stringify(seen.got.map((m) => m.mid)).slice(0, 300));
  const seqs = seen.got.map((m) => m.seq);
  check(same(seqs, [...seqs].sort((a, b) => a - b)), "in seq order");
  const bare = lpUrls.filter((u) => !u.includes("key=" + encodeURIComponent(config.key)));
  // a 503's redirect is followed as it is, without asking for the route again
  const redirected = seen.last.route === undefined;
  return { first: first.node, standby: first.route.standby.id, then: seen.node, nodes: seen.nodes, lp: lpUrls.length, bare, got: seen.got.length, redirected };
};

/**
 * history() and the demo against a broker that keeps an archive (nothing
 * stands in for it here): a conversation between a WebSocket page and a
 * long-poll page and a room, paged back by before from both sides; the room
 * refused to a non-member; the demo shows the last 20 messages of a
 * conversation and of a room when it is opened, on WebSocket and on long-poll.
 */
scenarios.archive = async (context) => {
  const alice = await open(context, config.base);
  await alice.evaluate(() => start("alice-arc", "ws"));
  const bob = await open(context, config.base);
  await bob.evaluate(() => start("bob-arc", "lp"));
  const carol = await open(context, config.base);
  await carol.evaluate(() => start("carol-arc", "ws"));
  check((await alice.evaluate(() => client.transport)) === "ws", "alice on ws");
  check((await bob.evaluate(() => client.transport)) === "lp", "bob on lp");
  // 25 messages both ways, each receipt awaited so the archive's order is known
  for (let n = 1; n <= 25; n++) {
    const [from, to] = n % 3 === 0 ? [bob, "alice-arc"] : [alice, "bob-arc"];
    const r = await from.evaluate(([to, n]) => client.send({ to, body: { n, text: "m" + n } }), [to, n]);
    check(r.status === "delivered", `m${n}: ${JSON.stringify(r)}`);
  }
  for (const page of [alice, bob]) await page.evaluate(() => client.join("arc-room"));
  for (const [page, n] of [[alice, 101], [bob, 102], [alice, 103]]) {
    await page.evaluate((n) => client.send({ room: "arc-room", body: { n, text: "r" + n } }), n);
  }
  const pages = (page, query) =>
    page.evaluate(async (query) => {
      const seen = [];
      const more = [];
      let before = null;
      for (;;) {
        const p = await client.history(before ? Object.assign({ before }, query) : query);
        for (const m of p.messages) {
          if (m.t !== "msg" || "seq" in m || !m.mid || !m.ts) throw new Error("not a msg: " + JSON.stringify(m));
          seen.push(m.body.n);
        }
        more.push(p.more);
        if (!p.more) return { seen, more };
        before = p.messages[p.messages.length - 1].mid;
      }
    }, query);
  const newestFirst = range(25).reverse();
  const fromAlice = await pages(alice, { with: "bob-arc", limit: 10 });
  check(same(fromAlice, { seen: newestFirst, more: [true, true, false] }), "alice's pages: " + JSON.stringify(fromAlice));
  const fromBob = await pages(bob, { with: "alice-arc", limit: 10 });
  check(same(fromBob, fromAlice), "bob's pages over long-poll: " + JSON.stringify(fromBob));
  const room = await pages(bob, { room: "arc-room" });
  check(same(room, { seen: [103, 102, 101], more: [false] }), "the room: " + JSON.stringify(room));
  const stranger = await carol.evaluate(() =>
    client.history({ room: "arc-room" }).then(
      (p) => ({ page: p }),
      (e) => ({ code: e.code, reason: e.reason, isError: e instanceof O2OBroker.Error }),
    ),
  );
  check(same(stranger, { code: 403, reason: "not a member of this room", isError: true }), "carol: " + JSON.stringify(stranger));
  const nobody = await carol.evaluate(() => client.history({ with: "alice-arc" }));
  check(same(nobody, { messages: [], more: false }), "carol has no conversation with alice: " + JSON.stringify(nobody));

  // the demo, as a person opens a conversation in it: a new device of each user
  const shown = {};
  for (const [user, transport, to, want] of [
    ["alice-arc", "", "bob-arc", range(25).slice(5).map((n) => "m" + n)],
    ["bob-arc", "&transport=lp", "alice-arc", range(25).slice(5).map((n) => "m" + n)],
  ]) {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error("page error:", e.message));
    await page.goto(`${config.base}/?user=${user}${transport}`);
    await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
    check((await page.evaluate(() => demo.client.transport)) === (transport ? "lp" : "ws"), `${user}'s demo transport`);
    await page.fill("#to", to);
    await page.dispatchEvent("#to", "change");
    await waitFor(page, () => document.querySelectorAll("#messages li.past").length > 0, null, `${user}: the archive in the demo`);
    // then the room, whose three messages come before the conversation's
    await page.fill("#to", "#arc-room");
    await page.dispatchEvent("#to", "change");
    const all = () => [...document.querySelectorAll("#messages li")].map((e) => [e.dataset.mid, e.querySelector(".text").textContent, e.classList.contains("past")]);
    const rooms = ["r101", "r102", "r103"];
    await waitFor(page, (rooms) => {
      const texts = [...document.querySelectorAll("#messages li .text")].map((e) => e.textContent);
      return rooms.every((r) => texts.includes(r));
    }, rooms, `${user}: the room in the demo`);
    const items = await page.evaluate(all);
    const mids = items.map((i) => i[0]);
    check(new Set(mids).size === mids.length, `${user}: each message once: ${JSON.stringify(items)}`);
    const texts = items.map((i) => i[1]);
    // what the new device resumed from the inbox may already be on the page; the archive adds the rest
    check(same(texts.filter((t) => t[0] === "m").sort(), want.slice().sort()), `${user}: the last 20: ${JSON.stringify(texts)}`);
    check(same(texts.filter((t) => t[0] === "r").sort(), rooms), `${user}: the room's: ${JSON.stringify(texts)}`);
    const past = items.filter((i) => i[2]).map((i) => i[1]);
    const numbers = (prefix) => past.filter((t) => t[0] === prefix).map((t) => Number(t.slice(1)));
    const ascending = (a) => same(a, a.slice().sort((x, y) => x - y));
    // opened last, the room's page goes on top; each page oldest first
    const lastRoom = past.map((t) => t[0]).lastIndexOf("r");
    check(lastRoom < past.indexOf(past.find((t) => t[0] === "m")) || lastRoom === -1, `${user}: the room on top: ${JSON.stringify(past)}`);
    check(ascending(numbers("m")) && ascending(numbers("r")) && numbers("m").length > 0, `${user}: oldest first: ${JSON.stringify(past)}`);
    shown[user] = past.length;
    await page.close();
  }
  return { pages: fromAlice.more.length, room: room.seen.length, shown };
};

/** The package's ES module, imported by a page as a bundler-free application would. */
scenarios.esm = async (context) => {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.route(`${config.base}/esm/o2obroker.js`, (route) =>
    route.fulfill({ path: config.module, contentType: "text/javascript; charset=utf-8" }),
  );
  await page.goto(`${config.base}/harness.html`);
  return page.evaluate(async () => {
    const { default: O2OBroker, O2OBrokerError } = await import("/esm/o2obroker.js");
    const a = new O2OBroker({ user: "esm-a", storage: null });
    const b = new O2OBroker({ user: "esm-b", storage: null });
    await a.connect();
    await b.connect();
    const got = new Promise((resolve) => b.once("message", resolve));
    const receipt = await a.send({ to: "esm-b", body: { text: "from a module" } });
    const msg = await got;
    a.close();
    b.close();
    return {
      transport: a.transport,
      status: receipt.status,
      text: msg.body.text,
      error: O2OBrokerError === O2OBroker.Error,
      // the page's global O2OBroker is the served script's, not the module's
      separate: window.O2OBroker !== O2OBroker,
    };
  });
};

/** The demo page at phone and desktop widths: no sideways scroll, live rooms, receipts, a favicon. */
scenarios.demo = async (context) => {
  const result = {};
  const openDemo = async (user, width) => {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`[${user}] page error:`, e.message));
    await page.setViewportSize({ width, height: 800 });
    await page.goto(`${config.base}/?user=${user}`);
    await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
    return page;
  };
  const phone = await openDemo("alice-demo", 375);
  const desk = await openDemo("bob-demo", 1280);
  const widths = (page) => page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);

  for (const [page, other] of [[phone, "bob-demo"], [desk, "alice-demo"]]) {
    await page.fill("#join-room", "demo-room");
    await page.click("#join-form button");
    await page.fill("#watch-user", other);
    await page.click("#watch-form button");
  }
  // alice joined first: her count must go from 1 to 2 without her doing anything
  await waitFor(phone, () => (document.querySelector("#rooms [data-room='demo-room'] .state") || {}).textContent === "2 members",
    null, "a live member count");
  // a sent message shows its receipt: delivered to a live user, stored for one who is offline
  await phone.fill("#to", "bob-demo");
  await phone.fill("#text", "Donaudampfschifffahrtsgesellschaftskapitänswitwenrentenversicherungsanstalt".repeat(4));
  await phone.click("#send-button");
  await phone.fill("#to", "nobody-demo");
  await phone.fill("#text", "are you there?");
  await phone.click("#send-button");
  await waitFor(phone, () => {
    const s = [...document.querySelectorAll("#messages li.mine .status")].map((e) => e.textContent);
    return s.length === 2 && s[0] === "delivered" && s[1] === "stored";
  }, null, "delivered and stored on sent messages");
  await waitFor(desk, () => window.demo.messages.some((m) => m.from === "alice-demo"), null, "bob gets the long word");
  await desk.fill("#to", "alice-demo");
  await desk.fill("#text", "a reply with a long-word-".repeat(3) + "x".repeat(120));
  await desk.click("#send-button");
  await waitFor(phone, () => window.demo.messages.some((m) => m.from === "bob-demo"), null, "alice gets the reply");
  await phone.waitForTimeout(300);
  for (const [name, page] of [["phone", phone], ["desktop", desk]]) {
    const [scroll, inner] = await widths(page);
    check(scroll <= inner, `${name}: page ${scroll} px wide in a ${inner} px viewport`);
    const off = await page.evaluate(() =>
      [...document.querySelectorAll("button, input, select")].filter((e) => {
        const r = e.getBoundingClientRect();
        return r.width > 0 && (r.left < 0 || r.right > window.innerWidth);
      }).map((e) => e.id || e.textContent));
    check(off.length === 0, `${name}: controls off screen: ${off}`);
    await page.screenshot({ path: `${config.screenshots}/demo-${name}.png`, fullPage: true });
    result[name] = { scrollWidth: scroll, viewport: inner };
  }
  const icon = await phone.evaluate(async () => {
    const link = document.querySelector("link[rel=icon]");
    const r = await fetch(link.href);
    return { status: r.status, type: r.headers.get("content-type") };
  });
  check(icon.status === 200 && icon.type.startsWith("image/svg+xml"), "favicon: " + JSON.stringify(icon));
  result.icon = icon;
  return result;
};

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: FLAGS,
});
let failed = null;
let result = null;
// every scenario ends well inside the test's own timeout, and closes its browser
let deadline;
const overdue = new Promise((_, reject) => {
  deadline = setTimeout(() => reject(new Error(`${scenario}: not done within ${DEADLINE_MS} ms`)), DEADLINE_MS);
});
try {
  result = await Promise.race([scenarios[scenario](context), overdue]);
} catch (e) {
  failed = e;
} finally {
  clearTimeout(deadline);
  await context.close();
}
if (failed) {
  console.error(failed.stack || String(failed));
  process.exit(1);
}
console.log(JSON.stringify(result));
