// The demo page: sign in, presence, chat with users and rooms, live node figures.
// Everything goes through o2obroker.js, as an application of your own would.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(location.search);
  var demo = (window.demo = { client: null, messages: [], presence: {}, rooms: {}, speakers: {} });

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

  function messageItem(msg, mine) {
    var li = el("li", { "class": mine ? "mine" : "", "data-mid": msg.mid || "" });
    var where = msg.room ? "#" + msg.room : mine ? "→ " + msg.to : "";
    var meta = el("div", { "class": "meta" }, (msg.from || "me") + " " + where + " · " +
      new Date(msg.ts || Date.now()).toLocaleTimeString());
    if (mine) meta.appendChild(el("span", { "class": "status" }, "sending"));
    li.appendChild(meta);
    li.appendChild(el("div", { "class": "text" }, show(msg.body)));
    return li;
  }

  function addMessage(msg, mine) {
    demo.messages.push(msg);
    var li = messageItem(msg, mine);
    $("messages").appendChild(li);
    $("messages").scrollTop = $("messages").scrollHeight;
    return li;
  }

  /** Opening a conversation shows its last messages, where the broker keeps an archive. */
  function loadHistory(to) {
    if (!to || !demo.client) return;
    var query = to.charAt(0) === "#" ? { room: to.slice(1), limit: 20 } : { "with": to, limit: 20 };
    demo.client.history(query).then(function (page) {
      var list = $("messages");
      var first = list.firstChild;
      page.messages.slice().reverse().forEach(function (msg) {
        if (list.querySelector('[data-mid="' + CSS.escape(msg.mid) + '"]')) return;
        var li = messageItem(msg, false);
        li.classList.add("past");
        list.insertBefore(li, first);
      });
    }, function () { /* no archive on this broker (404), or not a member: nothing to show */ });
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
      var n = demo.rooms[room];
      var li = el("li", { "data-room": room });
      li.appendChild(el("span", {}, "#" + room));
      li.appendChild(el("span", { "class": "state" }, n + (n === 1 ? " member" : " members")));
      ul.appendChild(li);
    });
  }

  // The broker tells a member count to the one who joins; joining again is
  // harmless and answers with the count now, so the page asks every few
  // seconds, and at once when someone new speaks in a room.
  function refreshRooms() {
    if (!demo.client || demo.client.state !== "open") return;
    Object.keys(demo.rooms).forEach(function (room) { demo.client.join(room).catch(function () {}); });
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
    client.on("message", function (msg) {
      addMessage(msg, false);
      if (msg.room && demo.rooms[msg.room] !== undefined && !demo.speakers[msg.room + "/" + msg.from]) {
        demo.speakers[msg.room + "/" + msg.from] = true;
        demo.client.join(msg.room).catch(function () {});
      }
    });
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
    var li = addMessage(message, true);
    var status = li.querySelector(".status");
    demo.client.send(message).then(function (receipt) {
      li.setAttribute("data-mid", receipt.mid);
      status.textContent = receipt.status; // delivered, stored (recipient offline) or accepted (room)
      status.className = "status " + receipt.status;
    }, function (err) {
      status.textContent = "failed: " + err.message;
      status.className = "status failed";
    });
  });

  $("to").addEventListener("change", function () { loadHistory($("to").value.trim()); });

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
    demo.client.join(room).catch(function (err) { console.warn("join refused", err.message); });
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
  setInterval(refreshRooms, 5000);

  // ?user=alice (&transport=lp) signs in at once
  if (params.get("user")) {
    $("user").value = params.get("user");
    $("no-ws").checked = params.get("transport") === "lp";
    connect(params.get("user"), params.get("token") || "", params.get("transport") === "lp");
  }
})();
