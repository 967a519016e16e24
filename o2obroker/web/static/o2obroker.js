/*
 * o2obroker.js: the browser client of o2obroker. No dependencies.
 *
 *   const client = new O2OBroker({ baseUrl: "https://broker.example", token: jwt });
 *   client.on("message", (msg) => console.log(msg.from, msg.body));
 *   await client.connect();
 *   const receipt = await client.send({ to: "bob", body: { text: "hi" } });
 *
 * This one file is the global script the broker serves at /o2obroker.js, a
 * CommonJS module, and (through js/build.mjs) the ES module of the npm
 * package. doc/web.md describes every option and event.
 *
 * How it works, in short: it asks /getFreeHostAddress which node to use and
 * how, then talks the protocol of doc/protocol.md over a WebSocket (JSON,
 * batched) or, where WebSockets are missing, broken or stalled, over HTTP
 * long-poll, and probes the WebSocket again beside a live long-poll session.
 * Every call is kept in one ordered outbox until the broker has it, so calls
 * made before the session opens or across a reconnect go out once, in order.
 * It acknowledges what it has handed to the page, keeps the device name and
 * the last processed seq per tab (sessionStorage), and resumes from that seq
 * after a reconnect or a reload; messages seen twice are dropped by mid.
 */
(function (root, factory) {
  var O2OBroker = factory(root);
  if (typeof module === "object" && module && module.exports) module.exports = O2OBroker;
  else root.O2OBroker = O2OBroker;
})(typeof window !== "undefined" ? window : globalThis, function (root) {
  /* begin factory */
  "use strict";

  var DEDUPE_KEEP = 5000;
  // polls in a row that got no answer before a long-poll session counts as lost
  var LP_FAILED_POLLS = 3;
  // errors that a retry cannot fix: bad frame, bad token, unknown app, replaced
  var FATAL = { 400: true, 401: true, 403: true, 409: true };
  var OPEN = 1; // WebSocket.OPEN
  // the client's states and the moves between them ("state" events); the
  // transport under an open session may change without leaving "open"
  var STATES = {
    closed: { connecting: true }, // connect()
    connecting: { open: true, closed: true }, // a welcome; or close(), a refusal, no welcome in time
    open: { connecting: true, closed: true }, // the connection is lost; or close(), a refusal
  };

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

  /** An error of the broker (its error frame is in `frame`) or of the client. */
  function O2OBrokerError(code, reason, frame) {
    var e = new Error(reason);
    Object.setPrototypeOf(e, O2OBrokerError.prototype);
    e.name = "O2OBrokerError";
    e.code = code;
    e.reason = reason;
    e.frame = frame || { t: "error", code: code, reason: reason };
    return e;
  }
  O2OBrokerError.prototype = Object.create(Error.prototype, {
    constructor: { value: O2OBrokerError, writable: true, configurable: true },
  });

  function errorOf(frame) {
    return O2OBrokerError(frame.code, frame.reason || "error " + frame.code, frame);
  }

  /** The token's `sub`, to keep one stored device per user and tab. */
  function subjectOf(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return String(JSON.parse(root.atob(part)).sub || "");
    } catch (e) {
      return "";
    }
  }

  function sessionStorageOf() {
    try {
      return root.sessionStorage || null; // throws in sandboxed frames
    } catch (e) {
      return null;
    }
  }

  /** Frames as JSON bodies of at most `limit` bytes each (one frame at least). */
  function chunks(frames, limit) {
    var out = [];
    var part = [];
    var size = 2;
    for (var i = 0; i < frames.length; i++) {
      var text = JSON.stringify(frames[i]);
      if (part.length && size + text.length + 1 > limit) {
        out.push(part);
        part = [];
        size = 2;
      }
      part.push(text);
      size += text.length + 1;
    }
    if (part.length) out.push(part);
    return out.map(function (p) { return p.length === 1 ? p[0] : "[" + p.join(",") + "]"; });
  }

  function O2OBroker(options) {
    options = options || {};
    var origin = root.location && root.location.origin !== "null" ? root.location.origin : "";
    this.baseUrl = (options.baseUrl || origin).replace(/\/$/, "");
    this.token = options.token || null;
    this.user = options.user || null;
    this.app = options.app || null;
    this.transports = options.transports || ["ws", "lp"];
    this.room = options.room || null;
    this.key = options.key || null; // routed clusters: /api/v1/route?app=&key=
    this.cluster = options.cluster || null;
    this._redirect = null; // a 503's better node, for the next attempt
    this.wsRetryMs = options.wsRetryMs || 60000;
    this.connectTimeoutMs = options.connectTimeoutMs || 5000;
    this.welcomeTimeoutMs = options.welcomeTimeoutMs || 10000;
    this.pingTimeoutMs = options.pingTimeoutMs || 5000;
    this.backoffMs = options.backoffMs || 500;
    this.maxBackoffMs = options.maxBackoffMs || 30000;
    this.presence = { state: options.state || "online", status: options.status || "" };
    this.transport = null; // "ws" or "lp" once open
    this.state = "closed";
    this.lastSeq = 0; // highest seq handed to the page
    this.hb = 30;
    this.welcome = null;
    this.where = null;
    this._handlers = {};
    this._seen = new Map(); // mid -> true, the most recent DEDUPE_KEEP
    this._outbox = []; // calls the broker has not taken yet, in call order
    this._sends = new Map(); // send id -> its outbox entry, until the receipt
    this._waiting = []; // join, leave, history: {type, key, resolve, reject}
    this._watched = new Set(); // restored after a reconnect
    this._rooms = new Set();
    this._ids = 0;
    this._closed = true;
    this._conn = null; // the connection that carries the session
    this._probe = null; // a WebSocket tried beside a long-poll session
    this._wsBroken = false;
    this._failures = 0;
    this._timers = {};
    this._ackedSeq = 0;
    this._hadSession = false;
    this._connecting = null;

    // per tab: the same device and seq after a reload, a new device in a duplicated tab
    this._storage = options.storage === undefined ? sessionStorageOf() : options.storage;
    this._storageKey = "o2obroker:" + this.baseUrl + ":" + (this.user || (this.token ? subjectOf(this.token) : ""));
    var kept = this._load();
    if (options.device) {
      this.device = options.device;
    } else if (kept && !kept.live) {
      this.device = kept.device;
    } else {
      this.device = "web-" + randomHex(4);
    }
    if (kept && kept.device === this.device && !kept.live && kept.last > 0) {
      this.lastSeq = this._ackedSeq = kept.last;
      this._hadSession = true;
    }
    this._save(true);
    if (typeof root.addEventListener === "function" && this._storage) {
      var self = this;
      this._onPageHide = function (e) { self._pageHide(e); };
      this._onPageShow = function (e) { if (e.persisted) self._pageShow(); };
      root.addEventListener("pagehide", this._onPageHide);
      root.addEventListener("pageshow", this._onPageShow);
    }
  }

  O2OBroker.Error = O2OBrokerError;

  O2OBroker.supportsWebSocket = function () {
    return typeof root.WebSocket === "function" || typeof root.WebSocket === "object";
  };

  var P = O2OBroker.prototype;

  // -- events -----------------------------------------------------------------

  P.on = function (name, fn) {
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    return this;
  };

  P.once = function (name, fn) {
    var self = this;
    var wrapper = function () {
      self.off(name, wrapper);
      fn.apply(null, arguments);
    };
    wrapper.listener = fn;
    return this.on(name, wrapper);
  };

  P.off = function (name, fn) {
    var list = this._handlers[name] || [];
    for (var i = 0; i < list.length; i++) {
      if (list[i] === fn || list[i].listener === fn) {
        list.splice(i, 1);
        break;
      }
    }
    return this;
  };

  P._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._handlers[name] || []).slice().forEach(function (fn) {
      try { fn.apply(null, args); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  P._setState = function (state) {
    if (this.state === state) return;
    if (!STATES[this.state][state]) throw new Error("o2obroker: no way from " + this.state + " to " + state);
    this.state = state;
    this._emit("state", state, this.transport);
  };

  // -- storage per tab ----------------------------------------------------------

  P._load = function () {
    if (!this._storage) return null;
    try {
      var kept = JSON.parse(this._storage.getItem(this._storageKey) || "null");
      return kept && typeof kept.device === "string" ? kept : null;
    } catch (e) {
      return null;
    }
  };

  P._save = function (live) {
    if (!this._storage) return;
    try {
      this._storage.setItem(this._storageKey, JSON.stringify({ device: this.device, last: this.lastSeq, live: live }));
    } catch (e) { /* full or refused: the next reload is a new device */ }
  };

  /** The page goes away (or into the back-forward cache): end the session now. */
  P._pageHide = function (event) {
    this._save(false);
    var conn = this._conn;
    if (!conn || this._closed) return;
    this._conn = null;
    if (conn.kind === "lp" && conn.sid && root.navigator && root.navigator.sendBeacon) {
      // a beacon outlives the page: the device goes offline now, not after the poll timeout
      root.navigator.sendBeacon(this._lpUrl(conn, "close", { sid: conn.sid }), "");
    }
    this._drop(conn, true);
    this._dropProbe();
    this._suspended = true;
    if (event && event.persisted) this._setState("connecting");
  };

  P._pageShow = function () {
    this._save(true);
    if (!this._suspended) return;
    this._suspended = false;
    if (!this._closed) this._attempt();
  };

  // -- connecting -------------------------------------------------------------

  /**
   * Connect; resolves with the welcome frame. Rejects with an O2OBroker.Error
   * on an error a retry cannot fix (bad token, unknown app) and when no
   * welcome came within welcomeTimeoutMs; the client is then closed.
   */
  P.connect = function () {
    if (this._connecting) return this._connecting;
    if (!this._closed && this.state === "open") return Promise.resolve(this.welcome);
    var self = this;
    this._closed = false;
    this._failures = 0;
    this._save(true);
    this._setState("connecting");
    this._connecting = new Promise(function (resolve, reject) {
      self._onWelcome = resolve;
      self._onRefused = reject;
    });
    this._timer("welcome", this.welcomeTimeoutMs, function () {
      self._fail(O2OBrokerError(408, "no welcome within " + self.welcomeTimeoutMs + " ms"));
    });
    this._attempt();
    return this._connecting;
  };

  P._wants = function (kind) {
    if (kind === "ws" && !O2OBroker.supportsWebSocket()) return false;
    return this.transports.indexOf(kind) >= 0;
  };

  /** One try at a session: WebSocket first unless it is broken or advised against. */
  P._attempt = function () {
    var self = this;
    this._clearTimer("retry");
    if (this._closed || this._conn || this._suspended) return;
    this._locate().then(function (where) {
      if (self._closed || self._conn || self._suspended) return;
      self.where = where;
      var lp = self._wants("lp");
      if (self._wants("ws") && !(lp && (self._wsBroken || where.transport === "lp"))) self._openWs(false);
      else if (lp) self._openLp();
    });
  };

  /** Try again after a backoff with jitter: 0.5 to 1 times base × 2^failures, capped. */
  P._retryLater = function () {
    if (this._closed) return;
    var self = this;
    var ceiling = Math.min(this.maxBackoffMs, this.backoffMs * Math.pow(2, this._failures));
    this._failures = Math.min(this._failures + 1, 30);
    this._timer("retry", ceiling * (0.5 + Math.random() / 2), function () { self._attempt(); });
  };

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k]) parts.push(k + "=" + encodeURIComponent(params[k]));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  /** app, cluster and key as URL parameters: front proxies pick a cluster and node by them. */
  P._routeQuery = function () {
    return query({ app: this.app, cluster: this.cluster, key: this.key });
  };

  /**
   * A long-poll URL: path, then its own parameters (kept even when 0, as pos), then the
   * route's, on every request, so that a proxy hashing `key` sends each to the same node.
   */
  P._lpUrl = function (lp, path, params) {
    var parts = [];
    Object.keys(params || {}).forEach(function (k) {
      parts.push(k + "=" + encodeURIComponent(params[k]));
    });
    var route = this._routeQuery().slice(1);
    if (route) parts.push(route);
    return lp.url + "/" + path + (parts.length ? "?" + parts.join("&") : "");
  };

  /**
   * Ask the broker which node to use; falls back to baseUrl itself. With a key,
   * /api/v1/route names the key's node and its standby: after a failed attempt on
   * that node the standby is tried, as the node may be dead before the registry says so.
   * A 503's redirect goes first, once.
   */
  P._locate = function () {
    var self = this;
    var redirect = this._redirect;
    this._redirect = null;
    var url = this.key
      ? this.baseUrl + "/api/v1/route" + query({ app: this.app, cluster: this.cluster, key: this.key })
      : this.baseUrl + "/getFreeHostAddress" + query({ room: this.room });
    var fallback = {
      ws: this.baseUrl.replace(/^http/, "ws") + "/ws",
      lp: this.baseUrl + "/lp",
      transport: "ws",
    };
    var found;
    if (redirect && (redirect.ws || redirect.lp)) {
      found = Promise.resolve({ ws: redirect.ws || fallback.ws, lp: redirect.lp || fallback.lp, transport: "ws" });
    } else if (typeof root.fetch !== "function") {
      found = Promise.resolve(fallback);
    } else {
      found = root.fetch(url, { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : fallback; })
        .catch(function () { return fallback; })
        .then(function (answer) { return answer.standby === undefined ? answer : self._routed(answer); });
    }
    return found.then(function (where) {
      where.ws = where.ws + self._routeQuery();
      self._emit("located", where);
      return where;
    });
  };

  /**
   * A route answer as a place to connect: the key's node, or its standby when that node
   * is the one the last attempt failed on (the registry has not seen it die yet). Once
   * the registry drops it, the answer's node is the key's new node, the old standby.
   */
  P._routed = function (answer) {
    var failed = this._failures > 0 && this.where && this.where.node === answer.node.id;
    var target = failed && answer.standby ? answer.standby : answer.node;
    return { node: target.id, ws: target.ws, lp: target.lp, tcp: target.tcp, transport: "ws", route: answer };
  };

  P._hello = function () {
    var hello = { t: "hello", v: 1, device: this.device, state: this.presence.state, status: this.presence.status };
    if (this.token) hello.token = this.token;
    else if (this.user) hello.user = this.user;
    if (this.app) hello.app = this.app;
    if (this._hadSession) hello.resume = { last: this.lastSeq };
    return hello;
  };

  /** A connection got its welcome: it carries the session from now on. */
  P._welcomed = function (conn, welcome) {
    var old = this._conn;
    if (conn === this._probe) {
      // the probe's hello replaced the long-poll session on the broker: leave it quietly
      this._probe = null;
      this._wsBroken = false;
      if (old) this._drop(old, false);
    }
    this._conn = conn;
    this._clearTimer("welcome");
    this._clearTimer("retry");
    this._failures = 0;
    this.welcome = welcome;
    this.hb = welcome.hb || this.hb;
    this._maxBody = Math.max(1024, Math.floor((welcome.max_frame || 1048576) / 2));
    if (this._hadSession && !welcome.resumed && this.lastSeq > 0) this._emit("resync", welcome);
    if (welcome.last < this.lastSeq) this.lastSeq = this._ackedSeq = 0; // the store was reset
    this._hadSession = true;
    this._ackedSeq = Math.min(this._ackedSeq, this.lastSeq);
    if (this.transport !== conn.kind) {
      this.transport = conn.kind;
      this._emit("transport", conn.kind);
    }
    if (conn.kind === "ws") this._startWatchdog(conn);
    else this._scheduleProbe();
    // what the last session had, then every call the broker has not taken yet
    var frames = [];
    if (this._watched.size) frames.push({ t: "watch", users: Array.from(this._watched) });
    this._rooms.forEach(function (room) { frames.push({ t: "join", room: room }); });
    this._writeOutbox(frames);
    this._setState("open");
    if (this._onWelcome) {
      var resolve = this._onWelcome;
      this._onWelcome = this._onRefused = null;
      this._connecting = null;
      resolve(welcome);
    }
    if (this.lastSeq > this._ackedSeq) this._ackSoon();
  };

  /** The connection that carried the session is gone; find another. */
  P._lost = function (conn) {
    if (conn !== this._conn) return;
    this._conn = null;
    this._drop(conn, false);
    this._stopWatchdog();
    if (this._closed || this._suspended) return;
    this._setState("connecting");
    this._retryLater();
  };

  /** Stop listening to a connection; its session is over or replaced. */
  P._drop = function (conn, bye) {
    conn.dead = true;
    if (conn.kind === "ws") {
      var ws = conn.ws;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        if (bye && ws.readyState === OPEN) ws.send(JSON.stringify({ t: "bye" }));
        ws.close();
      } catch (e) { /* gone */ }
      clearTimeout(conn.timeout);
    } else {
      if (conn.abort) conn.abort.abort();
    }
  };

  /** An error a retry cannot fix (or no welcome in time): stop, and tell every caller. */
  P._fail = function (error) {
    var reject = this._onRefused;
    this._onWelcome = this._onRefused = null;
    this._connecting = null;
    this._shutdown(false, error);
    this._emit("error", error.frame);
    if (reject) reject(error);
  };

  // -- WebSocket --------------------------------------------------------------

  P._openWs = function (probe) {
    var self = this;
    var conn = { kind: "ws", ws: null, welcomed: false, helloSent: false, lastRx: 0, pingAt: 0 };
    try {
      conn.ws = new root.WebSocket(this.where.ws);
    } catch (e) {
      // no WebSocket here (blocked, or a bad address): long-poll goes on
      if (probe) this._scheduleProbe();
      else this._wsFailed(conn);
      return;
    }
    if (probe) this._probe = conn;
    else this._pendingWs = conn;
    var ws = conn.ws;
    conn.timeout = setTimeout(function () { self._wsFailed(conn); }, this.connectTimeoutMs);
    ws.onopen = function () {
      var hello = self._hello();
      hello.batch = true;
      conn.helloSent = true;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (event) {
      var data;
      try {
        data = JSON.parse(event.data);
      } catch (e) {
        return; // not ours: the broker only sends JSON on this socket
      }
      conn.lastRx = Date.now();
      conn.pingAt = 0;
      self._receive(conn, Array.isArray(data) ? data : [data]);
    };
    ws.onclose = function () {
      if (conn.welcomed) self._lost(conn);
      else self._wsFailed(conn);
    };
    ws.onerror = function () { /* onclose follows */ };
  };

  /** A WebSocket that never got its welcome. */
  P._wsFailed = function (conn) {
    if (conn.dead) return;
    if (conn.ws) this._drop(conn, false);
    conn.dead = true;
    if (this._closed) return;
    if (conn === this._probe) {
      this._probe = null;
      if (conn.helloSent && this._conn && this._conn.kind === "lp") {
        // its hello may have replaced the long-poll session: resume on a new one
        this._lost(this._conn);
      } else {
        this._scheduleProbe();
      }
      return;
    }
    if (this._pendingWs === conn) this._pendingWs = null;
    if (this._wants("lp")) {
      this._wsBroken = true;
      this._openLp();
    } else {
      this._retryLater();
    }
  };

  P._dropProbe = function () {
    this._clearTimer("probe");
    if (this._probe) {
      this._drop(this._probe, false);
      this._probe = null;
    }
    if (this._pendingWs) {
      this._drop(this._pendingWs, false);
      this._pendingWs = null;
    }
  };

  /** While on long-poll, try a WebSocket again every wsRetryMs (with jitter). */
  P._scheduleProbe = function () {
    if (!this._wants("ws") || this._closed) return;
    var self = this;
    this._timer("probe", this.wsRetryMs * (0.8 + Math.random() * 0.4), function () {
      var conn = self._conn;
      if (self._closed || !conn || conn.kind !== "lp" || self._probe) return;
      self._openWs(true);
    });
  };

  /**
   * The broker pings after hb seconds of silence. A socket silent for longer
   * than hb plus a margin gets a ping of ours; with no answer within
   * pingTimeoutMs it counts as stalled and the session moves to long-poll.
   */
  P._startWatchdog = function (conn) {
    var self = this;
    conn.lastRx = Date.now();
    conn.pingAt = 0;
    this._stopWatchdog();
    this._watchdog = setInterval(function () {
      if (conn.dead || conn !== self._conn) return self._stopWatchdog();
      var now = Date.now();
      if (conn.pingAt) {
        if (now - conn.pingAt > self.pingTimeoutMs) {
          self._wsBroken = self._wants("lp");
          self._lost(conn);
        }
      } else if (now - conn.lastRx > self.hb * 1000 + 1000) {
        conn.pingAt = now;
        self._write([{ t: "ping" }]);
      }
    }, 250);
  };

  P._stopWatchdog = function () {
    if (this._watchdog) clearInterval(this._watchdog);
    this._watchdog = null;
  };

  // -- long-poll --------------------------------------------------------------

  P._openLp = function () {
    var self = this;
    var lp = { kind: "lp", sid: null, pos: 0, url: this.where.lp, out: [], inflight: null, welcomed: false };
    this._pendingLp = lp;
    this._post(this._lpUrl(lp, "open"), JSON.stringify(this._hello())).then(function (answer) {
      if (lp.dead || self._closed) return;
      self._pendingLp = null;
      var frames = (answer.body && answer.body.frames) || [];
      if (!answer.ok || !frames.length || frames[0].t !== "welcome") {
        var error = frames.filter(function (f) { return f.t === "error"; })[0];
        if (error && FATAL[error.code]) return self._fail(errorOf(error));
        lp.dead = true;
        return self._retryLater();
      }
      lp.sid = answer.body.sid;
      lp.pos = answer.body.pos;
      self._receive(lp, frames);
      if (self._conn === lp) self._poll(lp);
    }, function () {
      if (lp.dead) return;
      lp.dead = true;
      self._pendingLp = null;
      self._retryLater(); // unreachable: back off
    });
  };

  P._poll = function (lp) {
    var self = this;
    if (lp.dead) return;
    var ack = this.lastSeq;
    var params = { sid: lp.sid, pos: lp.pos };
    if (ack > this._ackedSeq) params.ack = ack;
    var url = this._lpUrl(lp, "poll", params);
    lp.abort = typeof root.AbortController === "function" ? new root.AbortController() : null;
    root.fetch(url, { cache: "no-store", signal: lp.abort ? lp.abort.signal : undefined }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    }).then(function (answer) {
      if (lp.dead) return;
      if (answer.status !== 200) {
        // 404: the session is gone (expired, replaced); a new one resumes where it was
        if (!self._handingOver(lp)) self._lost(lp);
        return;
      }
      lp.failures = 0;
      if (ack > self._ackedSeq) self._ackedSeq = ack;
      lp.pos = answer.body.pos;
      self._receive(lp, answer.body.frames);
      if (!lp.dead) self._poll(lp);
    }, function () {
      // the response was lost: the same pos asks for the same frames again
      if (lp.dead) return;
      lp.failures = (lp.failures || 0) + 1;
      if (lp.failures >= LP_FAILED_POLLS) {
        // the node does not answer (killed, cut off): a new session, on the standby or
        // wherever the route says now, resumes after the last message handed over
        if (!self._handingOver(lp)) self._lost(lp);
        return;
      }
      setTimeout(function () { self._poll(lp); }, Math.min(5000, 250 * Math.pow(2, lp.failures)));
    });
  };

  /** True while a WebSocket probe's hello is replacing this long-poll session. */
  P._handingOver = function (lp) {
    return lp === this._conn && this._probe !== null && this._probe.helloSent;
  };

  /** Long-poll sends: one POST in flight, carrying every frame queued behind it, so order holds. */
  P._lpFlush = function (lp) {
    if (lp.dead || lp.inflight || !lp.out.length || lp.flushing) return;
    var self = this;
    lp.flushing = true;
    // gather what this turn queues into the same POST
    Promise.resolve().then(function () {
      lp.flushing = false;
      if (lp.dead || lp.inflight || !lp.out.length) return;
      var batch = [];
      var size = 2;
      while (lp.out.length && (!batch.length || size < self._maxBody)) {
        var item = lp.out.shift();
        batch.push(item);
        size += item.text.length + 1;
      }
      lp.inflight = batch;
      var body = "[" + batch.map(function (i) { return i.text; }).join(",") + "]";
      self._post(self._lpUrl(lp, "send", { sid: lp.sid }), body).then(function (answer) {
        if (lp.dead) return;
        if (answer.status === 404 || answer.status === 403) {
          // the session is gone: the outbox still holds these for the next one
          if (!self._handingOver(lp)) self._lost(lp);
          return;
        }
        lp.inflight = null;
        if (answer.status >= 500 || answer.status === 408) {
          // a proxy or an overloaded node: the same frames again, a little later
          lp.out = batch.concat(lp.out);
          setTimeout(function () { self._lpFlush(lp); }, 1000);
          return;
        }
        batch.forEach(function (item) { if (item.entry && !item.entry.send) self._taken(item.entry); });
        if (answer.body && answer.body.frames) self._receive(lp, answer.body.frames);
        self._lpFlush(lp);
      }, function () {
        // lost on the way: post the same frames again, ahead of the rest (sends dedupe by id)
        if (lp.dead) return;
        lp.inflight = null;
        lp.out = batch.concat(lp.out);
        setTimeout(function () { self._lpFlush(lp); }, 500);
      });
    });
  };

  P._post = function (url, text) {
    return root.fetch(url, {
      method: "POST",
      // text/plain keeps cross-origin requests simple (no preflight); the body is JSON
      headers: { "Content-Type": "text/plain;charset=UTF-8" },
      body: text,
      cache: "no-store",
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        return { ok: r.ok, status: r.status, body: body };
      });
    });
  };

  // -- frames in --------------------------------------------------------------

  P._receive = function (conn, frames) {
    if (conn.dead) return;
    var advanced = false;
    frames: for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      if (!conn.welcomed) {
        if (f.t === "welcome") {
          conn.welcomed = true;
          if (conn.kind === "ws") {
            clearTimeout(conn.timeout);
            if (this._pendingWs === conn) this._pendingWs = null;
          }
          this._emit("frame", f);
          this._welcomed(conn, f);
        } else if (f.t === "error") {
          this._refused(conn, f);
          return;
        }
        continue;
      }
      if (conn !== this._conn || conn.dead) break;
      this._emit("frame", f);
      switch (f.t) {
        case "msg":
          // processed once handed to the page: a close() from its handler acks it too
          if (f.seq > this.lastSeq) {
            this.lastSeq = f.seq;
            advanced = true;
          }
          if (this._seen.has(f.mid)) break;
          this._seen.set(f.mid, true);
          if (this._seen.size > DEDUPE_KEEP) this._seen.delete(this._seen.keys().next().value);
          this._emit("message", f);
          break;
        case "ping":
          this._write([{ t: "pong" }]);
          break;
        case "receipt":
          this._settleSend(f.id, f, null);
          this._emit("receipt", f);
          break;
        case "error":
          if (this._brokerError(conn, f)) break frames;
          break;
        case "joined":
        case "left":
          this._answer(f.t, f.room, f, null);
          this._emit(f.t, f);
          break;
        case "history":
          this._answer("history", f.ref, f, null);
          break;
        case "presence":
          this._emit("presence", f);
          break;
        case "bye":
          if (conn.kind === "ws") this._lost(conn);
          break frames;
        default:
          break;
      }
    }
    if (advanced && !this._closed) {
      this._save(true);
      this._ackSoon();
    }
  };

  /** An error frame before the welcome: fatal, or a reason to try elsewhere. */
  P._refused = function (conn, f) {
    if (FATAL[f.code]) return this._fail(errorOf(f));
    // 503 (overloaded, draining) and the like: this connection is over, try again later,
    // at the better node when the 503 names one
    if (f.code === 503 && f.redirect) this._redirect = f.redirect;
    if (conn.kind === "ws") this._drop(conn, false);
    if (conn === this._probe) {
      this._probe = null;
      this._scheduleProbe();
    } else {
      if (this._pendingWs === conn) this._pendingWs = null;
      conn.dead = true;
      this._retryLater();
    }
  };

  /** An error frame on an open session; true when that session is over. */
  P._brokerError = function (conn, f) {
    if (f.code === 409 && conn.kind === "lp" && this._handingOver(conn)) {
      conn.replaced = true; // our own WebSocket probe took the session: expected, not an error
      conn.dead = true;
      return true;
    }
    // an error that rejects a caller's promise is told there, not again as an event
    var answered = false;
    if (f.ref !== undefined && this._sends.has(f.ref)) {
      this._settleSend(f.ref, null, f);
      answered = true;
    } else if (f.ref !== undefined) {
      answered = this._rejectRequest(f.ref, f); // a join, leave or history names its id
    }
    if (f.code === 401 || f.code === 409) {
      this._fail(errorOf(f)); // token expired, or this device connected elsewhere
      return true;
    }
    // a node that drains (or is overloaded) closes the session next, naming a better
    // node: the next attempt goes there first
    if (f.code === 503 && f.redirect) this._redirect = f.redirect;
    if (!answered) this._emit("error", f);
    return false;
  };

  P._ackSoon = function () {
    var conn = this._conn;
    if (!conn || conn.kind !== "ws") return; // long-poll acks ride on the next poll
    var self = this;
    if (this._timers.ack !== undefined) return;
    this._timer("ack", 0, function () {
      if (self.lastSeq > self._ackedSeq && self._write([{ t: "ack", seq: self.lastSeq }])) {
        self._ackedSeq = self.lastSeq;
      }
    });
  };

  // -- frames out -------------------------------------------------------------

  /** Write frames on the open session now; false when there is none. */
  P._write = function (frames, entries) {
    var conn = this._conn;
    if (!conn || conn.dead || this.state === "closed") return false;
    if (conn.kind === "ws") {
      if (conn.ws.readyState !== OPEN) return false;
      var limit = this._maxBody || 524288;
      chunks(frames, limit).forEach(function (text) { conn.ws.send(text); });
      // a WebSocket keeps order and loses nothing while it lives: the broker has them
      // (frames of the session itself, a restored watch or join, have no entry)
      if (entries) entries.forEach(function (e) { if (e && !e.send) this._taken(e); }, this);
      return true;
    }
    if (!conn.sid) return false;
    for (var i = 0; i < frames.length; i++) {
      conn.out.push({ text: JSON.stringify(frames[i]), entry: entries ? entries[i] : null });
    }
    this._lpFlush(conn);
    return true;
  };

  /** On a new session: the frames given, then every call still in the outbox, in order. */
  P._writeOutbox = function (first) {
    var frames = first.slice();
    var entries = first.map(function () { return null; });
    this._outbox.forEach(function (e) {
      if (!e.done) {
        frames.push(e.frame);
        entries.push(e);
      }
    });
    if (frames.length) this._write(frames, entries);
  };

  /** Keep a call until the broker has it; write it now if a session is open. */
  P._call = function (frame, send) {
    var entry = { frame: frame, send: send, done: false };
    this._outbox.push(entry);
    if (this.state === "open" && this._conn) this._write([frame], [entry]);
    return entry;
  };

  /** The broker has this call (a send: its receipt or error came). */
  P._taken = function (entry) {
    if (entry.done) return;
    entry.done = true;
    var f = entry.frame;
    if (f.t === "watch") f.users.forEach(function (u) { this._watched.add(u); }, this);
    else if (f.t === "unwatch") f.users.forEach(function (u) { this._watched.delete(u); }, this);
    else if (f.t === "join") this._rooms.add(f.room);
    else if (f.t === "leave") this._rooms.delete(f.room);
    var box = this._outbox;
    var n = 0;
    while (n < box.length && box[n].done) n++;
    if (n) box.splice(0, n);
    if (box.length > 64 && box.length > 4 * this._sends.size) {
      this._outbox = box.filter(function (e) { return !e.done; });
    }
  };

  P._settleSend = function (id, receipt, error) {
    var entry = this._sends.get(id);
    if (!entry) return;
    this._sends.delete(id);
    this._taken(entry);
    if (error) entry.reject(errorOf(error));
    else entry.resolve(receipt);
  };

  /** Settle the oldest request waiting for this answer; false if none waits. */
  P._answer = function (type, key, frame, error) {
    for (var i = 0; i < this._waiting.length; i++) {
      var w = this._waiting[i];
      if (w.type === type && (key === undefined || w.key === key)) {
        this._waiting.splice(i, 1);
        if (error) w.reject(errorOf(error));
        else w.resolve(frame);
        return true;
      }
    }
    return false;
  };

  /** Reject the request whose frame had this id (an error's ref); false if none waits. */
  P._rejectRequest = function (ref, error) {
    for (var i = 0; i < this._waiting.length; i++) {
      if (this._waiting[i].id === ref) {
        this._waiting.splice(i, 1)[0].reject(errorOf(error));
        return true;
      }
    }
    return false;
  };

  /** A frame's id: unique among this user's devices, within the broker's 64 bytes. */
  P._newId = function (kind) {
    if (this._idPrefix === undefined) {
      var bytes = typeof root.TextEncoder === "function" ? new root.TextEncoder().encode(this.device).length : this.device.length * 3;
      this._idPrefix = bytes <= 32 ? this.device : randomHex(8); // a long device name would not fit
    }
    return kind + this._idPrefix + "-" + Date.now().toString(36) + "-" + (++this._ids);
  };

  P._request = function (type, key, frame) {
    var self = this;
    return new Promise(function (resolve, reject) {
      self._waiting.push({ type: type, key: key, id: frame.id, resolve: resolve, reject: reject });
      self._call(frame, false);
    });
  };

  /**
   * Send a message: {to: user} or {room: name}, with a body.
   * Resolves with the receipt, rejects with the broker's error. A send made
   * before the session opens or while it is down goes out, in order and
   * with the same id (so never twice), once a session is open.
   */
  P.send = function (message) {
    var id = message.id || this._newId("");
    var frame = { t: "send", id: id, body: message.body === undefined ? null : message.body };
    if (message.room) frame.room = message.room;
    else frame.to = message.to;
    var self = this;
    return new Promise(function (resolve, reject) {
      var entry = { frame: frame, send: true, done: false, resolve: resolve, reject: reject };
      self._sends.set(id, entry);
      self._outbox.push(entry);
      if (self.state === "open" && self._conn) self._write([frame], [entry]);
    });
  };

  /** Join a room; resolves with the joined frame ({members: N}). Rooms are joined again after a reconnect. */
  P.join = function (room) { return this._request("joined", room, { t: "join", room: room, id: this._newId("j-") }); };
  /** Leave a room; resolves with the left frame. */
  P.leave = function (room) { return this._request("left", room, { t: "leave", room: room, id: this._newId("l-") }); };
  /** Get presence frames for these users now and on every change (kept across reconnects). */
  P.watch = function (users) { this._call({ t: "watch", users: users.slice() }, false); };
  P.unwatch = function (users) { this._call({ t: "unwatch", users: users.slice() }, false); };
  /** One presence frame per user, now. */
  P.probe = function (users) { this._call({ t: "probe", users: users.slice() }, false); };
  /** Report this device's presence: "online", "away", "busy" or "offline" (invisible). */
  P.setPresence = function (state, status) {
    this.presence = { state: state, status: status || "" };
    this._call({ t: "presence", state: state, status: status || "" }, false);
  };

  /**
   * A page of the archive, newest first: history({with: "bob"}) or
   * history({room: "r"}), with optional before (a mid) and limit (≤ 100).
   * Resolves with {messages, more}; rejects with 404 "no archive" when the
   * broker keeps none, 403 for a room this user is not in.
   */
  P.history = function (query) {
    var id = this._newId("h-");
    var frame = { t: "history", id: id };
    if (query.room) frame.room = query.room;
    else frame["with"] = query["with"];
    if (query.before) frame.before = query.before;
    if (query.limit) frame.limit = query.limit;
    return this._request("history", id, frame).then(function (f) {
      return { messages: f.messages || [], more: !!f.more };
    });
  };

  /** End the session ("bye") and stop reconnecting; calls not yet taken are rejected. */
  P.close = function () {
    this._save(false);
    var reject = this._onRefused;
    this._onWelcome = this._onRefused = null;
    this._connecting = null;
    var error = O2OBrokerError(499, "closed by the client");
    this._shutdown(true, error);
    if (reject) reject(error);
  };

  P._shutdown = function (bye, error) {
    if (bye && this.lastSeq > this._ackedSeq && this._conn && this._conn.kind === "ws" &&
        this._write([{ t: "ack", seq: this.lastSeq }])) {
      // the ack waiting on its timer goes before the bye, or the broker sends these again
      this._ackedSeq = this.lastSeq;
    }
    this._closed = true;
    this._suspended = false;
    Object.keys(this._timers).forEach(this._clearTimer, this);
    this._stopWatchdog();
    this._dropProbe();
    var conn = this._conn || this._pendingLp;
    this._conn = this._pendingLp = null;
    if (conn) {
      if (bye && conn.kind === "lp" && conn.sid) {
        this._post(this._lpUrl(conn, "close", { sid: conn.sid }), "").catch(function () {});
      }
      this._drop(conn, bye);
    }
    this._setState("closed");
    var outbox = this._outbox;
    var waiting = this._waiting;
    this._outbox = [];
    this._waiting = [];
    this._sends = new Map();
    outbox.forEach(function (e) { if (e.send && !e.done) e.reject(error); });
    waiting.forEach(function (w) { w.reject(error); });
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

  return O2OBroker;
  /* end factory */
});
