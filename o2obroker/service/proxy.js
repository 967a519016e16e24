// Which upstream of the front proxy a request goes to (nginx njs, js_set).
//
// The rendered configuration holds the routable nodes of every cluster in
// $o2o_registry (JSON: {"default": cluster, "clusters": {name: [node ids]},
// "apps": {business id: cluster}}) and one upstream per cluster, o2o_<c>, and
// per ordered pair of a cluster's nodes, o2o_<c>_<i>_<j>:
// node i, then node j as its backup. A request with a `key` goes to the pair
// of the key's first two nodes in rendezvous order, scored exactly as
// o2obroker.routing.directory._score scores them (the first 8 bytes of
// sha256(key NUL node id), highest first), so it reaches the node
// /api/v1/route names and, when that node fails, its standby. A long-poll
// sid names the node that holds its session: it goes there first. Anything
// else goes to o2o_<c>, every node of the cluster in turn.
//
// The cluster is the one the app registry gives the URL's `app` when there is
// a registry (an unknown or missing app: "!", answered 403, as /api/v1/route
// answers), else the URL's `cluster`, else the default one. No routable node
// in it: "-", answered 503.

var crypto = require("crypto");

var cached = { text: null, table: null };

function table(r) {
  var text = r.variables.o2o_registry;
  if (text !== cached.text) {
    cached.table = JSON.parse(text);
    cached.text = text;
  }
  return cached.table;
}

function first(value) {
  return Array.isArray(value) ? value[0] : value;
}

function score(key, node) {
  return crypto.createHash("sha256").update(key + "\u0000" + node).digest("hex").slice(0, 16);
}

// The id of the node that made a long-poll sid (base64url after the last dot).
function owner(sid) {
  var dot = sid.lastIndexOf(".");
  if (dot < 0 || dot === sid.length - 1) return null;
  try {
    return Buffer.from(sid.slice(dot + 1), "base64url").toString();
  } catch (e) {
    return null;
  }
}

// The upstream of the request, worked out once: nginx asks for it more than once.
function upstream(r) {
  var chosen = r.variables.o2o_chosen;
  if (!chosen) {
    chosen = choose(r);
    r.variables.o2o_chosen = chosen;
  }
  return chosen;
}

function choose(r) {
  var t = table(r);
  var cluster;
  if (t.apps && Object.keys(t.apps).length) {
    var app = first(r.args.app);
    if (!app || !Object.prototype.hasOwnProperty.call(t.apps, app)) return "!";
    cluster = t.apps[app];
  } else {
    cluster = first(r.args.cluster) || t["default"];
  }
  var names = Object.keys(t.clusters);
  var c = names.indexOf(cluster);
  if (c < 0) return "-";
  var nodes = t.clusters[cluster];
  if (nodes.length === 1) return "o2o_" + c;
  var key = first(r.args.key);
  if (key) {
    var best = -1, second = -1, bestScore = "", secondScore = "";
    for (var i = 0; i < nodes.length; i++) {
      var s = score(key, nodes[i]);
      if (best < 0 || s > bestScore) {
        second = best; secondScore = bestScore;
        best = i; bestScore = s;
      } else if (second < 0 || s > secondScore) {
        second = i; secondScore = s;
      }
    }
    return "o2o_" + c + "_" + best + "_" + second;
  }
  var sid = first(r.args.sid);
  if (sid) {
    var i = nodes.indexOf(owner(sid));
    if (i >= 0) return "o2o_" + c + "_" + i + "_" + ((i + 1) % nodes.length);
  }
  return "o2o_" + c;
}

export default { upstream, score };
