"""A tiny authoritative DNS server on a loopback address, for peers (Prosody) that resolve
names themselves. It answers the records it was given and NXDOMAIN for every other name.

Port 53 is fixed (a resolv.conf line cannot name a port), so it needs root; the address is a
random one in 127.0.0.0/8, so two runs on one machine do not collide.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import dnslib


class DnsServer:
    kind = "dns"

    def __init__(self, records: list[tuple[str, str, object]]):
        """records: (name, type, rdata) with rdata a dnslib RD (dnslib.A, dnslib.SRV, ...)."""
        self.records = [(n.rstrip(".").lower() + ".", t, rd) for n, t, rd in records]
        self.sock: socket.socket | None = None
        self.ip = ""
        self.queries: list[str] = []
        self._thread: threading.Thread | None = None
        self._dir: Path | None = None
        self.resolv_conf: Path | None = None  # "nameserver IP", for resolvers that read one

    def set_records(self, records: list[tuple[str, str, object]]) -> None:
        self.records = [(n.rstrip(".").lower() + ".", t, rd) for n, t, rd in records]

    @staticmethod
    def can_bind() -> bool:
        return os.geteuid() == 0

    def start(self) -> "DnsServer":
        last = None
        for _ in range(20):
            ip = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((ip, 53))
            except OSError as e:
                s.close()
                last = e
                continue
            s.settimeout(0.2)
            self.sock, self.ip = s, ip
            self._dir = Path(tempfile.mkdtemp(prefix="conf-dns-"))
            self.resolv_conf = self._dir / "resolv.conf"
            self.resolv_conf.write_text(f"nameserver {ip}\n")
            self._thread = threading.Thread(target=self._serve, daemon=True, name="dns")
            self._thread.start()
            return self
        raise OSError(f"cannot bind a DNS server on 127.53.x.y:53: {last}")

    def _serve(self):
        sock = self.sock
        while self.sock is not None:
            try:
                data, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            names = {n for n, _, _ in self.records}
            try:
                q = dnslib.DNSRecord.parse(data)
            except Exception:  # noqa: BLE001 - garbage is ignored, as DNS servers do
                continue
            reply = q.reply()
            name = str(q.q.qname).lower()
            qtype = dnslib.QTYPE[q.q.qtype]
            self.queries.append(f"{name} {qtype}")
            for n, t, rd in self.records:
                if n == name and t == qtype:
                    reply.add_answer(dnslib.RR(n, getattr(dnslib.QTYPE, t), ttl=60, rdata=rd))
            if name not in names:
                reply.header.rcode = dnslib.RCODE.NXDOMAIN
            try:
                sock.sendto(reply.pack(), peer)
            except OSError:
                return

    def alive(self) -> bool:
        return self.sock is not None

    def stop(self) -> None:
        sock, self.sock = self.sock, None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sock is not None:
            sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, max_bytes: int = 6000) -> str:
        return ("queries: " + ", ".join(self.queries))[-max_bytes:]
