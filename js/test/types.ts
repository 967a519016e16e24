// Compiled by tsc (make test): the declarations describe the API as an
// application uses it, and refuse what the client does not take.
import O2OBroker, { O2OBrokerError, type Message, type Receipt, type HistoryPage } from "../index.js";

async function main(): Promise<void> {
  const client = new O2OBroker({ baseUrl: "https://broker.example", token: "jwt", transports: ["ws", "lp"] });
  client
    .on("message", (msg: Message) => console.log(msg.from, msg.seq, msg.body))
    .once("state", (state, transport) => console.log(state.toUpperCase(), transport))
    .on("transport", (t) => console.log(t === "ws" || t === "lp"))
    .on("located", (where) => console.log(where.ws, where.lp))
    .on("error", (e) => console.log(e.code, e.reason));
  const welcome = await client.connect();
  console.log(welcome.session, welcome.hb);
  const receipt: Receipt = await client.send({ to: "bob", body: { text: "hi" } });
  console.log(receipt.status === "delivered");
  await client.send({ room: "store-42", body: { order: 991 }, id: "order-991" });
  const joined = await client.join("store-42");
  console.log(joined.members + 1);
  client.watch(["bob"]);
  client.setPresence("busy", "in a meeting");
  const page: HistoryPage = await client.history({ with: "bob", limit: 20 });
  console.log(page.messages[0]?.mid, page.more);
  await client.history({ room: "store-42", before: "mid" }).catch((e: unknown) => {
    if (e instanceof O2OBrokerError && e.code === 404) return;
    throw e;
  });
  console.log(O2OBroker.supportsWebSocket(), O2OBroker.Error === O2OBrokerError);
  client.close();

  // @ts-expect-error: a message goes to a user or a room
  client.send({ body: 1, to: 3 });
  // @ts-expect-error: no such event
  client.on("mesage", () => {});
  // @ts-expect-error: not a presence state
  client.setPresence("sleeping");
  // @ts-expect-error: not a transport
  new O2OBroker({ transports: ["sse"] });
}

void main;
