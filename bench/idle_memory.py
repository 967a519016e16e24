"""Process memory per idle connection: the broker against a bare Twisted server.

    .venv/bin/python bench/idle_memory.py [--connections 15000] [--transport tcp]

Opens N connections to each server in turn and reads the server's RSS before
and after. For the broker every connection has said hello (as its own user)
and got its welcome, so each holds a session, a user actor and a heartbeat
slot; the bare server (bench/bare_relay.py) holds N plain Twisted protocols.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time

import cbor2
from _common import free_port, raise_nofile, settle, start_broker, start_script, wait_port

_len = struct.Struct(">I")


def hello(user: str) -> bytes:
    payload = cbor2.dumps({"t": "hello", "user": user, "device": "d"})
    return _len.pack(len(payload)) + payload


def measure(kind: str, n: int) -> float:
    port = free_port()
    proc = start_broker(port) if kind == "broker" else start_script("bare_relay.py", str(port))
    socks = []
    try:
        wait_port(port)
        time.sleep(0.5)
        before = settle(proc.pid)
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            if kind == "broker":
                s.sendall(hello(f"user-{i}"))
                (size,) = _len.unpack(s.recv(4, socket.MSG_WAITALL))
                s.recv(size, socket.MSG_WAITALL)  # the welcome
            socks.append(s)
        after = settle(proc.pid)
        return (after - before) / n
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=15_000)
    args = p.parse_args()
    raise_nofile(20_000)
    bare = measure("bare", args.connections)
    print(f"bare Twisted server  {bare / 1024:6.2f} KiB per idle connection", flush=True)
    broker = measure("broker", args.connections)
    print(f"broker (after hello) {broker / 1024:6.2f} KiB per idle connection", flush=True)
    print(f"broker - bare        {(broker - bare) / 1024:6.2f} KiB")


if __name__ == "__main__":
    main()
