#!/usr/bin/env bash
# A cluster to try on one machine (make cluster): one Redis, three nodes in two
# clusters ("default": n1 and n2, "eu": n3), and nginx in front of them, rendered
# from the node registry and rendered again when a node joins or leaves.
# Everything runs in a temporary directory; Ctrl-C stops it all and removes it.
#
#   PORT=8000 NODE_PORT=8180 REDIS_PORT=6390 etc/local-cluster.sh
set -euo pipefail

BIN=${BIN:-.venv/bin}
PORT=${PORT:-8000}              # the front proxy: the demo page and every API
NODE_PORT=${NODE_PORT:-8180}    # node i listens on HTTP NODE_PORT+i, TCP NODE_PORT+1000+i
REDIS_PORT=${REDIS_PORT:-6390}
NGINX=${NGINX:-nginx}

dir=$(mktemp -d -t o2o-cluster.XXXXXX)
chmod 755 "$dir"  # nginx's workers (another user when started by root) write temp files here
pids=()

stop() {
    trap - EXIT INT TERM
    echo "stopping..." >&2
    # nginx first (clients go), then the watcher and the nodes, Redis last
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_port() {  # wait_port PORT WHAT: until something listens there (30 s at most)
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not start; its log is in $dir" >&2
    exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize no --logfile "$dir/redis.log" &
pids+=($!)
wait_port "$REDIS_PORT" redis-server
redis="redis://127.0.0.1:$REDIS_PORT/0"

printf '[broker]\nnode_heartbeat = 1\ntrusted_proxies = 127.0.0.1\n' >"$dir/node.ini"
clusters=(default default eu)
for i in 1 2 3; do
    "$BIN/twistd" -n --pidfile= --logfile "$dir/n$i.log" o2obroker --config "$dir/node.ini" \
        --node "n$i" --cluster "${clusters[i - 1]}" --redis "$redis" \
        --http "tcp:$((NODE_PORT + i)):interface=127.0.0.1" \
        --tcp "tcp:$((NODE_PORT + 1000 + i)):interface=127.0.0.1" &
    pids+=($!)
    node_pid[i]=$!
done
for i in 1 2 3; do wait_port $((NODE_PORT + i)) "node n$i"; done

proxy=("$BIN/python" -m o2obroker.service.proxy)
options=(--redis "$redis" --standalone --listen "127.0.0.1:$PORT")
listed() { grep -o ' n[123] 127\.0\.0\.1:' "$dir/nginx.conf" | sort -u | wc -l; }
for _ in $(seq 100); do  # until the registry lists all three (a heartbeat or two)
    "${proxy[@]}" render "${options[@]}" --out "$dir/nginx.conf"
    [ "$(listed)" -eq 3 ] && break
    sleep 0.2
done
nginx=("$NGINX" -e "$dir/nginx-error.log" -p "$dir" -c "$dir/nginx.conf")
"${nginx[@]}" -g 'daemon off;' &
pids+=($!)
front=$!
wait_port "$PORT" nginx
"${proxy[@]}" watch "${options[@]}" --out "$dir/nginx.conf" --interval 1 \
    --nginx "${nginx[*]}" 2>>"$dir/watch.log" &
pids+=($!)

cat <<EOF

o2obroker local cluster
  demo page      http://127.0.0.1:$PORT/   (cluster "default": n1 or n2)
  a key's node   curl 'http://127.0.0.1:$PORT/api/v1/route?cluster=eu&key=shop-1'
  through nginx  curl 'http://127.0.0.1:$PORT/healthz?cluster=default&key=shop-1'
  nodes          n1 (pid ${node_pid[1]}), n2 (pid ${node_pid[2]}): cluster default; n3 (pid ${node_pid[3]}): cluster eu
                 HTTP ports $((NODE_PORT + 1))-$((NODE_PORT + 3)), TCP $((NODE_PORT + 1001))-$((NODE_PORT + 1003))
  Redis          $redis
  logs           $dir (removed on exit)
Try kill -9 of a node: its keys go to their standby, and nginx is reloaded without it.
Ctrl-C stops everything.
EOF
wait "$front"
