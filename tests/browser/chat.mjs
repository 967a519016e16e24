// Two browser pages chat with each other and with a binary TCP client ("mobile",
// an echo bot run by the Python test), over WebSocket, over long-poll, and
// through a WebSocket that fails mid-conversation. Run by test_browser.py:
//
//   node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH USER_DATA_DIR
//
// Prints one JSON line with what each page saw; exits non-zero on any failure.
import { chromium } from "playwright-core";

const [base, screenshotPath, userDataDir] = process.argv.slice(2);
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

function check(condition, what) {
  if (!condition) throw new Error("check failed: " + what);
}

async function open(context, user, query = "") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error:`, e.message));
  await page.goto(`${base}/?user=${user}${query}`);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  return page;
}

const transportOf = (page) => page.evaluate(() => window.demo.client.transport);
const messagesOf = (page) => page.evaluate(() => window.demo.messages.filter((m) => m.from));

async function waitFor(page, predicate, arg, what) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: 15000, polling: 50 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}`);
  }
}

const hasText = ([from, text]) =>
  window.demo.messages.some((m) => m.from === from && m.body && (m.body.text === text || (m.body.echo && m.body.echo.text === text)));

/** Type into the demo's chat form, as a person would. */
async function say(page, to, text) {
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#send-button");
}

async function conversation(context, tag, query) {
  const alice = await open(context, `alice-${tag}`, query);
  const bob = await open(context, `bob-${tag}`, query);
  const expected = query.includes("transport=lp") ? "lp" : "ws";
  check((await transportOf(alice)) === expected, `${tag}: alice on ${expected}`);
  check((await transportOf(bob)) === expected, `${tag}: bob on ${expected}`);

  await say(alice, `bob-${tag}`, `hi bob from ${tag}`);
  await waitFor(bob, hasText, [`alice-${tag}`, `hi bob from ${tag}`], `${tag}: bob gets alice's message`);
  await say(bob, `alice-${tag}`, `hi alice from ${tag}`);
  await waitFor(alice, hasText, [`bob-${tag}`, `hi alice from ${tag}`], `${tag}: alice gets bob's answer`);

  // the binary TCP client echoes: text back, and bytes as {"$bytes": ...}
  await say(alice, "mobile", `hello mobile from ${tag}`);
  await waitFor(alice, hasText, ["mobile", `hello mobile from ${tag}`], `${tag}: the mobile client's echo`);
  const echo = (await messagesOf(alice)).find((m) => m.from === "mobile");
  check(echo.body.raw && echo.body.raw.$bytes === "AAH/", `${tag}: mobile bytes arrive as $bytes`);
  await alice.evaluate((tag) => window.demo.client.send({ to: "mobile", body: { tag: tag, blob: { $bytes: "AAEC" } } }), tag);
  return { alice, bob };
}

async function fallback(context) {
  const alice = await open(context, "alice-fb", "&connectTimeoutMs=1500");
  const bob = await open(context, "bob-fb");
  check((await transportOf(alice)) === "ws", "fallback: alice starts on ws");
  await say(bob, "alice-fb", "before the failure");
  await waitFor(alice, hasText, ["bob-fb", "before the failure"], "fallback: first message");

  // the WebSocket breaks and cannot come back: the client must move to long-poll
  await alice.evaluate(() => {
    window.WebSocket = function () { throw new Error("WebSocket blocked by the test"); };
    window.demo.client._conn.ws.close();
  });
  for (let i = 0; i < 10; i++) {
    await bob.evaluate((i) => window.demo.client.send({ to: "alice-fb", body: { text: `during ${i}` } }), i);
  }
  await waitFor(alice, () => window.demo.client.transport === "lp" && window.demo.client.state === "open", null, "fallback: alice on long-poll");
  await waitFor(alice, () => window.demo.messages.filter((m) => m.from === "bob-fb").length >= 11, null, "fallback: every message");
  await say(alice, "bob-fb", "after the failure");
  await waitFor(bob, hasText, ["alice-fb", "after the failure"], "fallback: alice's answer over long-poll");
  // give any duplicate a moment to show up, then count
  await alice.waitForTimeout(500);
  const got = (await messagesOf(alice)).filter((m) => m.from === "bob-fb").map((m) => m.body.text);
  const expected = ["before the failure", ...Array.from({ length: 10 }, (_, i) => `during ${i}`)];
  check(JSON.stringify(got) === JSON.stringify(expected), `fallback: each message once, in order: ${JSON.stringify(got)}`);
  return { received: got.length, transport: await transportOf(alice) };
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: FLAGS,
});
let failed = null;
const result = {};
try {
  const ws = await conversation(context, "ws", "");
  await ws.alice.setViewportSize({ width: 1280, height: 800 });
  await ws.alice.fill("#watch-user", "bob-ws");
  await ws.alice.click("#watch-form button");
  await ws.alice.waitForTimeout(300);
  await ws.alice.screenshot({ path: screenshotPath, fullPage: true });
  result.ws = await messagesOf(ws.alice);
  const lp = await conversation(context, "lp", "&transport=lp");
  result.lp = await messagesOf(lp.alice);
  result.fallback = await fallback(context);
} catch (e) {
  failed = e;
} finally {
  await context.close();
}
if (failed) {
  console.error(failed.stack || String(failed));
  process.exit(1);
}
console.log(JSON.stringify(result));
