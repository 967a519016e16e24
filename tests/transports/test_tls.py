"""Slow-consumer protection under TLS (``ssl:`` endpoints), on real loopback sockets.

The TLS wrapper has none of a plain socket's buffers: what is unsent is
counted from the producer calls that every Twisted transport makes.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.ssl import CertificateOptions

from o2obroker.transports.tcp import BinaryFactory
from o2obroker.wire import encode_cbor, frame
from tests.transports.test_slow_consumer import LoopbackCase, Reader, tcp_frames, ws_frames


def self_signed(directory: str) -> tuple[str, str]:
    """A key and a certificate for 127.0.0.1, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TlsSlowConsumerTests(LoopbackCase):
    """The readers connect over TLS; the sender over plain TCP.

    150 sends of 60 KB: the kernel's buffers on loopback take about 50 of
    them before the node's own count starts.
    """

    async def setUp(self) -> None:
        super().setUp()
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert = self_signed(directory)
        tls = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        self.tls_tcp = await serverFromString(reactor, tls).listen(BinaryFactory(self.node.gateway))
        self.tls_http = await serverFromString(reactor, tls).listen(self.site)
        self.addCleanup(self.tls_tcp.stopListening)
        self.addCleanup(self.tls_http.stopListening)

    async def reader(
        self, port: int, opening: bytes, upgraded: bytes = b"", ready: bytes = b"welcome"
    ) -> Reader:
        # the same readers, on the TLS ports (the test never checks the certificate)
        tls_port = {
            self.tcp.getHost().port: self.tls_tcp.getHost().port,
            self.http.getHost().port: self.tls_http.getHost().port,
        }[port]
        r = Reader(opening, upgraded, ready)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", tls_port, CertificateOptions())
        await connectProtocol(endpoint, r)
        self.readers.append(r)
        await r.welcomed
        return r

    async def test_binary_tcp_over_tls(self) -> None:
        reader = await self.tcp_reader("slow")
        await self.flood_and_check(reader, tcp_frames, "tcp", 1, sends=150)

    async def test_websocket_over_tls(self) -> None:
        reader = await self.ws_reader("slow")
        await self.flood_and_check(reader, ws_frames, "ws", 0, sends=150)

    async def test_unsent_is_measured_under_tls(self) -> None:
        hello = {"t": "hello", "user": "slow", "device": "phone"}
        await self.reader(self.tcp.getHost().port, frame(encode_cbor(hello)))
        [session] = [s for group in self.node.gateway.session_groups() for s in group]
        conn = session.conn
        self.assertEqual(conn.unsent(), 0)
        conn.send({"t": "pong", "pad": "x" * 200_000})  # under max_queue (256 KiB)
        self.assertGreater(conn.unsent(), 200_000)
        self.assertFalse(conn._closing)
