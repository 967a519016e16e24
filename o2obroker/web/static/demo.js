// The demo page: sign in, presence, chat with users and rooms, live node figures.
// Everything goes through o2obroker.js, as an application of your own would.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(location.search);
  var demo = (window.demo = { client: null, messages: [], presence: {}, rooms: {} });

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function show(text) {
    if (text === null || text === undefined) return "";
    if (typeof text === "string") return text;
    if (typeof text === "object" && typeof text.text === "string") return text.text;
    return JSON.stringify(text);
  }

  function setBadge(state, transport) {
    var conn = $("conn");
    conn.textContent = state === "open" ? "connected as " + demo.client.user : state;
    conn.className = "badge " + (state === "open" ? "on" : "off");
    $("transport").textContent = transport === "ws" ? "WebSocket" : transport === "lp" ? "long-poll" : "";
  }

  function addMessage(msg, mine) {
    demo.messages.push(msg);
    var li = el("li", { "class": mine ? "mine" : "", "data-mid": msg.mid || "" });
    var where = msg.room ? "#" + msg.room : mine ? "→ " + msg.to : "";
    li.appendChild(el("div", { "class": "meta" }, (msg.from || "me") + " " + where + " · " +
      new Date(msg.ts || Date.now()).toLocaleTimeString()));
    li.appendChild(el("div", { "class": "text" }, show(msg.body)));
    $("messages").appendChild(li);
    $("messages").scrollTop = $("messages").scrollHeight;
  }

  function renderPresence() {
    var ul = $("presence");
    ul.textContent = "";
    Object.keys(demo.presence).sort().forEach(function (user) {
      var p = demo.presence[user];
      var li = el("li", { "data-user": user });
      li.appendChild(el("span", {}, user + (p.status ? " – " + p.status : "")));
      li.appendChild(el("span", { "class": "state " + p.state }, p.state));
      ul.appendChild(li);
    });
  }

  function renderRooms() {
    var ul = $("rooms");
    ul.textContent = "";
    Object.keys(demo.rooms).sort().forEach(function (room) {
      var li = el("li", {});
      li.appendChild(el("span", {}, "#" + room));
      li.appendChild(el("span", { "class": "state" }, demo.rooms[room] + " members"));
      ul.appendChild(li);
    });
  }

  function connect(user, token, longPollOnly) {
    var client = new O2OBroker({
      baseUrl: location.origin,
      user: token ? null : user,
      token: token || null,
      transports: longPollOnly ? ["lp"] : ["ws", "lp"],
      wsRetryMs: Number(params.get("wsRetryMs")) || 60000,
      connectTimeoutMs: Number(params.get("connectTimeoutMs")) || 5000,
    });
    client.user = user;
    demo.client = client;
    client.on("state", setBadge);
    client.on("transport", function (t) { setBadge(client.state, t); });
    client.on("message", function (msg) { addMessage(msg, false); });
    client.on("presence", function (p) { demo.presence[p.user] = p; renderPresence(); });
    client.on("joined", function (f) { demo.rooms[f.room] = f.members; renderRooms(); });
    client.on("error", function (f) { console.warn("broker error", f); });
    $("signin").classList.add("hidden");
    $("app").classList.remove("hidden");
    return client.connect().then(function (welcome) {
      document.body.dataset.ready = "1";
      return welcome;
    });
  }

  $("signin-form").addEventListener("submit", function (e) {
    e.preventDefault();
    connect($("user").value.trim(), $("token").value.trim(), $("no-ws").checked);
  });

  $("send-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var to = $("to").value.trim();
    var text = $("text").value;
    var message = to.charAt(0) === "#" ? { room: to.slice(1), body: { text: text } } : { to: to, body: { text: text } };
    $("text").value = "";
    demo.client.send(message).then(function (receipt) {
      addMessage(Object.assign({ mid: receipt.mid, ts: receipt.ts }, message), true);
    }, function (err) { console.warn("send failed", err.message); });
  });

  $("watch-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var user = $("watch-user").value.trim();
    if (!user) return;
    $("watch-user").value = "";
    demo.presence[user] = demo.presence[user] || { user: user, state: "offline", status: "" };
    renderPresence();
    demo.client.watch([user]);
  });

  $("join-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var room = $("join-room").value.trim();
    if (!room) return;
    $("join-room").value = "";
    demo.client.join(room);
  });

  $("my-state").addEventListener("change", function () {
    demo.client.setPresence($("my-state").value, "");
  });

  // -- live figures of the node, from /metrics ----------------------------------

  var last = null;
  function metric(text, name, label) {
    var re = new RegExp("^" + name + (label ? "\\{" + label + "\\}" : "") + " ([0-9.e+-]+)$", "m");
    var m = text.match(re);
    return m ? Number(m[1]) : 0;
  }

  function figures() {
    fetch("metrics", { cache: "no-store" }).then(function (r) { return r.text(); }).then(function (text) {
      var now = Date.now();
      var sample = {
        t: now,
        ws: metric(text, "o2o_connections", 'transport="ws"'),
        lp: metric(text, "o2o_connections", 'transport="lp"'),
        tcp: metric(text, "o2o_connections", 'transport="tcp"'),
        in: metric(text, "o2o_messages_in_total"),
        out: metric(text, "o2o_messages_out_total"),
      };
      $("f-ws").textContent = sample.ws;
      $("f-lp").textContent = sample.lp;
      $("f-tcp").textContent = sample.tcp;
      if (last) {
        var dt = (now - last.t) / 1000;
        $("f-in").textContent = ((sample.in - last.in) / dt).toFixed(1);
        $("f-out").textContent = ((sample.out - last.out) / dt).toFixed(1);
      }
      last = sample;
    }).catch(function () { /* the node is restarting: try again on the next tick */ });
  }

  function advice() {
    fetch("getFreeHostAddress", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (a) {
      $("f-node").textContent = a.node;
      $("f-advice").textContent = a.transport === "lp" ? "long-poll" : "WebSocket";
    }).catch(function () {});
  }

  figures();
  advice();
  setInterval(figures, 2000);
  setInterval(advice, 10000);

  // ?user=alice (&transport=lp) signs in at once
  if (params.get("user")) {
    $("user").value = params.get("user");
    $("no-ws").checked = params.get("transport") === "lp";
    connect(params.get("user"), params.get("token") || "", params.get("transport") === "lp");
  }
})();
