/*
 * o2obroker.js: the browser client of o2obroker. No dependencies.
 *
 *   const client = new O2OBroker({ baseUrl: "https://broker.example", token: jwt });
 *   client.on("message", (msg) => console.log(msg.from, msg.body));
 *   await client.connect();
 *   const receipt = await client.send({ to: "bob", body: { text: "hi" } });
 *
 * It asks /getFreeHostAddress which node to use and how, then talks the
 * protocol of PROTOCOL.md over a WebSocket (JSON, batched) or, where
 * WebSockets are missing or broken, over HTTP long-poll. It answers pings,
 * acknowledges what it has handed to the page, and after any reconnect
 * resumes from the last seq it processed, so no message is lost; messages
 * that arrive twice (a resume re-sends what was not acknowledged yet) are
 * dropped by their mid, so none is seen twice. When the WebSocket cannot
 * connect or misses its heartbeats the client moves to long-poll, and tries
 * the WebSocket again every `wsRetryMs`.
 *
 * Options:
 *   baseUrl    the broker's HTTP address (default: this page's origin)
 *   token      a JWT for auth = token;  user: a user id for auth = none (development)
 *   device     this device's name (default: "web-" + random, kept for the client's life)
 *   transports ["ws", "lp"] by default; ["lp"] never tries WebSockets
 *   room       passed to /getFreeHostAddress to pick a node
 *   wsRetryMs  how long to stay on long-poll before trying the WebSocket again (60000)
 *   connectTimeoutMs  a WebSocket that is not open by then counts as broken (5000)
 *   state, status     the initial presence of this device
 *
 * Events (client.on(name, fn)):
 *   message   a msg frame, once per mid, in inbox order
 *   presence  a presence frame
 *   receipt, joined, left, error   the frames of that type
 *   frame     every frame, before it is dispatched
 *   state     (state, transport): "connecting" | "open" | "closed"
 *   transport the transport now in use: "ws" or "lp"
 *   resync    the broker could not resume without a gap: reload your data
 */
(function (root) {
  "use strict";

  var DEDUPE_KEEP = 5000;

  function randomHex(n) {
    var bytes = new Uint8Array(n);
    if (root.crypto && root.crypto.getRandomValues) {
      root.crypto.getRandomValues(bytes);
    } else {
      for (var i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    var out = "";
    for (var j = 0; j < n; j++) out += (bytes[j] < 16 ? "0" : "") + bytes[j].toString(16);
    return out;
  }

  function O2OBroker(options) {
    options = options || {};
    this.baseUrl = (options.baseUrl || (root.location ? root.location.origin : "")).replace(/\/$/, "");
    this.token = options.token || null;
    this.user = options.user || null;
    this.device = options.device || "web-" + randomHex(4);
    this.transports = options.transports || ["ws", "lp"];
    this.room = options.room || null;
    this.wsRetryMs = options.wsRetryMs || 60000;
    this.connectTimeoutMs = options.connectTimeoutMs || 5000;
    this.presence = { state: options.state || "online", status: options.status || "" };
    this.transport = null; // "ws" or "lp" once open
    this.state = "closed";
    this.lastSeq = 0; // highest seq handed to the page
    this.hb = 30;
    this.welcome = null;
    this._handlers = {};
    this._seen = new Map(); // mid -> true, the most recent DEDUPE_KEEP
    this._pending = new Map(); // send id -> {frame, resolve, reject}
    this._waiting = []; // other requests: {type, room, resolve}
    this._ids = 0;
    this._closed = true;
    this._ws = null;
    this._lp = null;
    this._timers = {};
    this._ackedSeq = 0;
    this._hadSession = false;
    this._trying = null; // a WebSocket being tried while long-poll carries the session
  }

  O2OBroker.supportsWebSocket = function () {
    return typeof root.WebSocket === "function" || typeof root.WebSocket === "object";
  };

  var P = O2OBroker.prototype;

  // -- events -----------------------------------------------------------------

  P.on = function (name, fn) {
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    return this;
  };

  P.off = function (name, fn) {
    var list = this._handlers[name] || [];
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
    return this;
  };

  P._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._handlers[name] || []).slice().forEach(function (fn) {
      try { fn.apply(null, args); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  P._setState = function (state) {
    if (this.state !== state) {
      this.state = state;
      this._emit("state", state, this.transport);
    }
  };

  // -- connecting -------------------------------------------------------------

  /** Connect; resolves with the welcome frame. */
  P.connect = function () {
    var self = this;
    this._closed = false;
    this._setState("connecting");
    return this._locate().then(function (where) {
      self.where = where;
      var wantWs = self.transports.indexOf("ws") >= 0 && O2OBroker.supportsWebSocket();
      var onlyLp = self.transports.indexOf("lp") >= 0 && !wantWs;
      return new Promise(function (resolve) {
        self._onWelcome = resolve;
        if (onlyLp || (where.transport === "lp" && self.transports.indexOf("lp") >= 0)) {
          self._startLp();
          if (wantWs) self._scheduleWsRetry();
        } else {
          self._startWs(true);
        }
      });
    });
  };

  /** Ask the broker which node to use; falls back to baseUrl itself. */
  P._locate = function () {
    var self = this;
    var url = this.baseUrl + "/getFreeHostAddress" + (this.room ? "?room=" + encodeURIComponent(this.room) : "");
    var fallback = {
      ws: this.baseUrl.replace(/^http/, "ws") + "/ws",
      lp: this.baseUrl + "/lp",
      transport: "ws",
    };
    if (typeof root.fetch !== "function") return Promise.resolve(fallback);
    return root.fetch(url, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : fallback; })
      .catch(function () { return fallback; })
      .then(function (where) { self._emit("located", where); return where; });
  };

  P._hello = function () {
    var hello = { t: "hello", v: 1, device: this.device, state: this.presence.state, status: this.presence.status };
    if (this.token) hello.token = this.token;
    else if (this.user) hello.user = this.user;
    if (this._hadSession) hello.resume = { last: this.lastSeq };
    return hello;
  };

  // -- WebSocket --------------------------------------------------------------

  P._startWs = function (fallBack) {
    var self = this;
    var ws;
    try {
      ws = new root.WebSocket(this.where.ws);
    } catch (e) {
      if (fallBack) this._wsBroken();
      return;
    }
    var opened = false;
    var welcomed = false;
    if (!fallBack) this._trying = ws;
    var failed = function () {
      if (self._trying === ws) self._trying = null;
      if (self._closed) return;
      if (fallBack) self._wsBroken();
      else if (!self._lp && !self._ws) self._startLp(); // a trial failed: long-poll goes on
    };
    var timeout = setTimeout(function () {
      if (welcomed) return;
      ws.onclose = null;
      try { ws.close(); } catch (e) { /* gone */ }
      failed();
    }, this.connectTimeoutMs);
    ws.onopen = function () {
      opened = true;
      var hello = self._hello();
      hello.batch = true;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (event) {
      var data = JSON.parse(event.data);
      var frames = Array.isArray(data) ? data : [data];
      self._lastRx = Date.now();
      if (!welcomed && frames.length && frames[0].t === "welcome") {
        welcomed = true;
        clearTimeout(timeout);
        if (self._trying === ws) self._trying = null;
        self._adoptWs(ws);
      }
      if (self._ws !== ws) return;
      self._frames(frames);
    };
    ws.onclose = function () {
      clearTimeout(timeout);
      if (self._ws === ws) {
        self._ws = null;
        self._stopWatchdog();
        if (!self._closed) {
          self._setState("connecting");
          // an established socket broke: try once more, then long-poll
          self._startWs(true);
        }
      } else if (!welcomed) {
        failed();
      }
    };
    ws.onerror = function () { /* onclose follows */ };
    return ws;
  };

  P._adoptWs = function (ws) {
    this._stopLp();
    this._clearTimer("wsRetry");
    this._ws = ws;
    this.transport = "ws";
    this._emit("transport", "ws");
    this._startWatchdog();
  };

  P._wsBroken = function () {
    if (this._closed) return;
    if (this.transports.indexOf("lp") < 0) {
      // no long-poll allowed: keep trying the WebSocket
      var self = this;
      this._timer("wsRetry", 2000, function () { self._startWs(true); });
      return;
    }
    if (!this._lp) this._startLp();
    this._scheduleWsRetry();
  };

  P._scheduleWsRetry = function () {
    var self = this;
    this._timer("wsRetry", this.wsRetryMs, function () {
      if (self._closed || self._ws) return;
      // a trial: on its welcome it takes over from long-poll, else long-poll goes on
      self._startWs(false);
      self._scheduleWsRetry();
    });
  };

  /** The broker pings after hb seconds of silence; silence for 2 x hb means the socket is dead. */
  P._startWatchdog = function () {
    var self = this;
    this._lastRx = Date.now();
    this._stopWatchdog();
    this._watchdog = setInterval(function () {
      var silent = Date.now() - self._lastRx;
      if (silent > 2 * self.hb * 1000 + 1000) {
        var ws = self._ws;
        self._ws = null;
        self._stopWatchdog();
        if (ws) { ws.onclose = null; try { ws.close(); } catch (e) { /* gone */ } }
        self._setState("connecting");
        self._wsBroken();
      } else if (silent > self.hb * 1000) {
        self._write({ t: "ping" });
      }
    }, Math.max(250, this.hb * 250));
  };

  P._stopWatchdog = function () {
    if (this._watchdog) clearInterval(this._watchdog);
    this._watchdog = null;
  };

  // -- long-poll --------------------------------------------------------------

  P._startLp = function () {
    var self = this;
    var lp = { sid: null, pos: 0, stopped: false, url: this.where.lp };
    this._lp = lp;
    this.transport = "lp";
    this._emit("transport", "lp");
    this._post(lp.url + "/open", this._hello()).then(function (answer) {
      if (lp.stopped) return;
      if (!answer.ok) {
        self._frames(answer.body.frames || []);
        self._lp = null;
        if (!self._closed) self._timer("lpRetry", 3000, function () { self._startLp(); });
        return;
      }
      lp.sid = answer.body.sid;
      lp.pos = answer.body.pos;
      self._frames(answer.body.frames);
      self._poll(lp);
    }, function () {
      if (lp.stopped) return;
      self._lp = null;
      if (!self._closed) self._timer("lpRetry", 3000, function () { self._startLp(); });
    });
  };

  P._stopLp = function () {
    var lp = this._lp;
    if (!lp) return;
    lp.stopped = true;
    this._lp = null;
    if (lp.sid) this._post(lp.url + "/close?sid=" + encodeURIComponent(lp.sid), null).catch(function () {});
  };

  P._poll = function (lp) {
    var self = this;
    if (lp.stopped) return;
    var url = lp.url + "/poll?sid=" + encodeURIComponent(lp.sid) + "&pos=" + lp.pos;
    var ack = this.lastSeq;
    if (ack > this._ackedSeq) url += "&ack=" + ack;
    root.fetch(url, { cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    }).then(function (answer) {
      if (lp.stopped) return;
      if (answer.status === 404) {
        // the session is gone (expired, replaced): a new one resumes where this one was
        self._lp = null;
        // (unless a WebSocket trial replaced it: the trial decides what comes next)
        if (!self._closed && !self._ws && !self._trying) self._startLp();
        return;
      }
      if (ack > self._ackedSeq) self._ackedSeq = ack;
      lp.pos = answer.body.pos;
      self._frames(answer.body.frames);
      self._poll(lp);
    }, function () {
      // the response was lost: the same pos asks for the same frames again
      if (!lp.stopped) setTimeout(function () { self._poll(lp); }, 1000);
    });
  };

  P._post = function (url, obj) {
    return root.fetch(url, {
      method: "POST",
      // text/plain keeps cross-origin requests simple (no preflight); the body is JSON
      headers: { "Content-Type": "text/plain;charset=UTF-8" },
      body: obj === null ? "" : JSON.stringify(obj),
      cache: "no-store",
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, status: r.status, body: body }; });
    });
  };

  // -- frames in --------------------------------------------------------------

  P._frames = function (frames) {
    var newest = this.lastSeq;
    for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      this._emit("frame", f);
      switch (f.t) {
        case "welcome":
          this.welcome = f;
          this.hb = f.hb || this.hb;
          this._hadSession = true;
          if (!f.resumed && this.lastSeq > 0) this._emit("resync", f);
          if (f.last < this.lastSeq) this.lastSeq = newest = 0; // the store was reset
          this._setState("open");
          this._resend();
          if (this._onWelcome) { this._onWelcome(f); this._onWelcome = null; }
          break;
        case "msg":
          if (f.seq > newest) newest = f.seq;
          if (this._seen.has(f.mid)) break;
          this._seen.set(f.mid, true);
          if (this._seen.size > DEDUPE_KEEP) this._seen.delete(this._seen.keys().next().value);
          this._emit("message", f);
          break;
        case "ping":
          this._write({ t: "pong" });
          break;
        case "receipt":
          this._settle(f.id, f, null);
          this._emit("receipt", f);
          break;
        case "error":
          if (f.ref && this._pending.has(f.ref)) this._settle(f.ref, null, f);
          this._emit("error", f);
          break;
        case "joined":
        case "left":
          this._answer(f.t, f.room, f);
          this._emit(f.t, f);
          break;
        case "presence":
          this._emit("presence", f);
          break;
        default:
          break;
      }
    }
    if (newest > this.lastSeq) {
      this.lastSeq = newest;
      this._ackSoon();
    }
  };

  P._ackSoon = function () {
    if (this.transport !== "ws") return; // long-poll acks ride on the next poll
    var self = this;
    this._timer("ack", 0, function () {
      if (self.lastSeq > self._ackedSeq && self._write({ t: "ack", seq: self.lastSeq })) {
        self._ackedSeq = self.lastSeq;
      }
    });
  };

  // -- frames out -------------------------------------------------------------

  /** Write one frame now if a session is open; false when there is none. */
  P._write = function (frame) {
    if (this._ws && this._ws.readyState === 1) {
      this._ws.send(JSON.stringify(frame));
      return true;
    }
    var lp = this._lp;
    if (lp && lp.sid && !lp.stopped) {
      var self = this;
      this._post(lp.url + "/send?sid=" + encodeURIComponent(lp.sid), frame).then(function (answer) {
        if (answer.body && answer.body.frames) self._frames(answer.body.frames);
      }, function () { /* a send without receipt is sent again on the next welcome */ });
      return true;
    }
    return false;
  };

  P._resend = function () {
    var self = this;
    this._pending.forEach(function (p) { self._write(p.frame); });
    if (this.lastSeq > this._ackedSeq) this._ackSoon();
  };

  P._settle = function (id, receipt, error) {
    var p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    if (error) p.reject(Object.assign(new Error(error.reason), { frame: error }));
    else p.resolve(receipt);
  };

  P._answer = function (type, room, frame) {
    for (var i = 0; i < this._waiting.length; i++) {
      var w = this._waiting[i];
      if (w.type === type && w.room === room) {
        this._waiting.splice(i, 1);
        w.resolve(frame);
        return;
      }
    }
  };

  /**
   * Send a message: {to: user} or {room: name}, with a body.
   * Resolves with the receipt; a send made while disconnected goes out (with
   * the same id, so never twice) as soon as a session is open again.
   */
  P.send = function (message) {
    var id = message.id || this.device + "-" + Date.now().toString(36) + "-" + (++this._ids);
    var frame = { t: "send", id: id, body: message.body === undefined ? null : message.body };
    if (message.room) frame.room = message.room;
    else frame.to = message.to;
    var self = this;
    return new Promise(function (resolve, reject) {
      self._pending.set(id, { frame: frame, resolve: resolve, reject: reject });
      if (self.state === "open") self._write(frame);
    });
  };

  P._request = function (type, frame) {
    var self = this;
    return new Promise(function (resolve) {
      self._waiting.push({ type: type, room: frame.room, resolve: resolve });
      self._write(frame);
    });
  };

  /** Join a room; resolves with the joined frame ({members: N}). */
  P.join = function (room) { return this._request("joined", { t: "join", room: room }); };
  /** Leave a room. */
  P.leave = function (room) { return this._request("left", { t: "leave", room: room }); };
  /** Get presence frames for these users now and on every change. */
  P.watch = function (users) { this._write({ t: "watch", users: users }); };
  P.unwatch = function (users) { this._write({ t: "unwatch", users: users }); };
  /** One presence frame per user, now. */
  P.probe = function (users) { this._write({ t: "probe", users: users }); };
  /** Report this device's presence: "online", "away", "busy" or "offline" (invisible). */
  P.setPresence = function (state, status) {
    this.presence = { state: state, status: status || "" };
    this._write({ t: "presence", state: state, status: status || "" });
  };

  /** End the session ("bye") and stop reconnecting. */
  P.close = function () {
    this._closed = true;
    Object.keys(this._timers).forEach(this._clearTimer, this);
    this._stopWatchdog();
    if (this._ws) {
      var ws = this._ws;
      this._ws = null;
      try { ws.send(JSON.stringify({ t: "bye" })); ws.close(); } catch (e) { /* gone */ }
    }
    this._stopLp();
    this._setState("closed");
  };

  // -- timers -----------------------------------------------------------------

  P._timer = function (name, ms, fn) {
    this._clearTimer(name);
    var self = this;
    this._timers[name] = setTimeout(function () { delete self._timers[name]; fn(); }, ms);
  };

  P._clearTimer = function (name) {
    if (this._timers[name] !== undefined) clearTimeout(this._timers[name]);
    delete this._timers[name];
  };

  root.O2OBroker = O2OBroker;
  if (typeof module === "object" && module.exports) module.exports = O2OBroker;
})(typeof window !== "undefined" ? window : globalThis);
