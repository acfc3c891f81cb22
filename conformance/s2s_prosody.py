#!/usr/bin/env python3
"""Federation interop: Starling <-> a private Debian Prosody over loopback.

Standalone for now (the shared conformance harness is not on main yet); each check
names what it exercises. Needs: prosody (apt-get install -y prosody), openssl,
slixmpp and dnslib (pip), root (for the DNS server's port 53), and a built starling binary.

    python3 conformance/s2s_prosody.py [--starling target/debug/starling]

Layout (no real DNS is consulted):
  prosody.test  on 127.0.0.3 (c2s 15222, s2s 15269). Prosody resolves starling.example
                with libunbound pointed (`unbound.resolvconf`) at a tiny DNS server this
                script runs on 127.0.0.4:53, which publishes
                `_xmpp-server._tcp.starling.example` SRV -> starling.example:15269 and
                starling.example A -> 127.0.0.2. Why not PEERS.md's hoststxt and .test:
                a hosts file cannot carry SRV records, so the peer would have to be on
                port 5269, which another process may hold on every address; and libunbound
                answers NXDOMAIN for all of .test itself (RFC 6761 default local zone), so
                Starling's domain is under .example, which it forwards to our server.
  starling.example on 127.0.0.2 (c2s 15222, s2s 15269); Starling reaches prosody.test
                through `[s2s.routes]`.
Both have self-signed certificates, so dialback (XEP-0220) is what authenticates.
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import slixmpp
import threading

import dnslib

STARLING_IP, PROSODY_IP, DNS_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
C2S_PORT, S2S_PORT = 15222, 15269
S_DOMAIN, P_DOMAIN = "starling.example", "prosody.test"
PW = "interop-pw-1"
TIMEOUT = 20


def wait_port(ip: str, port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {ip}:{port}")


def start_dns() -> socket.socket:
    """Answers the few names Prosody asks about; NXDOMAIN for everything else."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_IP, 53))

    def serve():
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            try:
                q = dnslib.DNSRecord.parse(data)
            except Exception:  # noqa: BLE001 - garbage is ignored, as DNS servers do
                continue
            reply = q.reply()
            name = str(q.q.qname).lower()
            qtype = dnslib.QTYPE[q.q.qtype]
            if name == f"_xmpp-server._tcp.{S_DOMAIN}." and qtype == "SRV":
                reply.add_answer(dnslib.RR(name, dnslib.QTYPE.SRV, ttl=60, rdata=dnslib.SRV(
                    priority=0, weight=0, port=S2S_PORT, target=f"{S_DOMAIN}.")))
            elif name == f"{S_DOMAIN}." and qtype == "A":
                reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=60,
                                           rdata=dnslib.A(STARLING_IP)))
            elif name != f"{S_DOMAIN}.":
                reply.header.rcode = dnslib.RCODE.NXDOMAIN
            sock.sendto(reply.pack(), peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def self_signed(d: Path, domain: str) -> tuple[Path, Path]:
    crt, key = d / f"{domain}.crt", d / f"{domain}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={domain}",
         "-addext", f"subjectAltName=DNS:{domain},DNS:*.{domain}",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True)
    return crt, key


def start_prosody(d: Path) -> subprocess.Popen:
    data = d / "data"
    data.mkdir()
    crt, key = self_signed(d, P_DOMAIN)
    resolv = d / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_IP}\n")
    cfg = d / "prosody.cfg.lua"
    cfg.write_text(textwrap.dedent(f"""\
        run_as_root = true
        pidfile = "{d / 'prosody.pid'}"
        data_path = "{data}"
        plugin_paths = {{}}
        admins = {{}}
        modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping",
                             "presence", "message", "iq" }}
        interfaces = {{ "{PROSODY_IP}" }}
        local_interfaces = {{ "{PROSODY_IP}" }}
        c2s_ports = {{ {C2S_PORT} }}
        s2s_ports = {{ {S2S_PORT} }}
        c2s_direct_tls_ports = {{}}
        http_ports = {{}}
        https_ports = {{}}
        component_ports = {{}}
        network_backend = "epoll"
        network_settings = {{ nagle = false }}
        unbound = {{ resolvconf = "{resolv}", hoststxt = false }}
        authentication = "internal_hashed"
        storage = "internal"
        c2s_require_encryption = true
        s2s_require_encryption = true
        s2s_secure_auth = false
        log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{d / 'prosody.log'}" }} }}
        certificates = "{d}"
        ssl = {{ certificate = "{crt}", key = "{key}" }}

        VirtualHost "{P_DOMAIN}"
            ssl = {{ certificate = "{crt}", key = "{key}" }}
        """))
    subprocess.run(["prosodyctl", "--config", str(cfg), "register", "pat", P_DOMAIN, PW],
                   check=True, capture_output=True)
    p = subprocess.Popen(["prosody", "-F", "--config", str(cfg)],
                         stdout=open(d / "prosody.out", "w"), stderr=subprocess.STDOUT)
    wait_port(PROSODY_IP, S2S_PORT, p, "prosody")
    return p


def start_starling(d: Path, binary: str) -> subprocess.Popen:
    data = d / "data"
    cfg = d / "starling.toml"
    cfg.write_text(textwrap.dedent(f"""\
        domain = "{S_DOMAIN}"
        data_dir = "{data}"
        log_level = "debug"
        [c2s]
        listen = ["{STARLING_IP}:{C2S_PORT}"]
        direct_tls_listen = []
        [s2s]
        listen = ["{STARLING_IP}:{S2S_PORT}"]
        system_roots = false
        [s2s.routes]
        "{P_DOMAIN}" = "{PROSODY_IP}:{S2S_PORT}"
        [http]
        listen = []
        """))
    p = subprocess.Popen([binary, "--config", str(cfg), "serve"],
                         stdout=open(d / "starling.out", "w"), stderr=subprocess.STDOUT)
    wait_port(STARLING_IP, C2S_PORT, p, "starling")
    subprocess.run([binary, "--config", str(cfg), "adduser", f"alice@{S_DOMAIN}",
                    "--password", PW], check=True, capture_output=True)
    return p


class Agent(slixmpp.ClientXMPP):
    """A client that records what it receives."""

    def __init__(self, jid: str, host: str):
        super().__init__(jid, PW)
        self.host = host
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(("message", m)))
        self.add_event_handler("presence", lambda p: self.inbox.put_nowait(("presence", p)))
        self.register_plugin("xep_0199")
        # Self-signed test certificates.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE

    async def start(self) -> None:
        done = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _: done.done() or done.set_result(True))
        self.add_event_handler("failed_auth", lambda _: done.done() or done.set_exception(
            RuntimeError(f"{self.boundjid} failed to log in")))
        self.connect(host=self.host, port=C2S_PORT)
        await asyncio.wait_for(done, TIMEOUT)
        self.send_presence()

    async def expect(self, kind: str, pred) -> object:
        deadline = time.time() + TIMEOUT
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"{self.boundjid}: no matching {kind} in time")
            k, st = await asyncio.wait_for(self.inbox.get(), left)
            if k == kind and pred(st):
                return st


async def scenarios() -> list[tuple[str, str]]:
    results = []
    alice = Agent(f"alice@{S_DOMAIN}/interop", STARLING_IP)
    pat = Agent(f"pat@{P_DOMAIN}/interop", PROSODY_IP)
    await alice.start()
    await pat.start()

    async def check(name, coro):
        try:
            await coro
            results.append((name, "PASS"))
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            results.append((name, f"FAIL: {e!r}"))

    async def chat(src, dst, text):
        src.send_message(mto=dst.boundjid.full, mbody=text, mtype="chat")
        m = await dst.expect("message", lambda m: m["body"] == text)
        assert m["from"].full == src.boundjid.full, m["from"]

    async def ping(src, target):
        await src.plugin["xep_0199"].ping(jid=target, timeout=TIMEOUT)

    async def presence(src, dst):
        src.send_presence(pto=dst.boundjid.bare, pstatus="interop")
        await dst.expect("presence", lambda p: p["from"].bare == src.boundjid.bare
                         and p["status"] == "interop")

    # RFC 6120 §8 / XEP-0220: Starling -> Prosody opens Starling's outgoing stream and
    # makes Prosody verify our dialback key against our authoritative side.
    await check("chat starling -> prosody (RFC 6120 §8, XEP-0220)", chat(alice, pat, "s->p 1"))
    await check("chat prosody -> starling (RFC 6120 §8, XEP-0220)", chat(pat, alice, "p->s 1"))
    await check(f"IQ ping to remote server {P_DOMAIN} (XEP-0199)", ping(alice, P_DOMAIN))
    await check(f"IQ ping to remote server {S_DOMAIN} (XEP-0199)", ping(pat, S_DOMAIN))
    await check("IQ ping to remote client pat (XEP-0199)", ping(alice, pat.boundjid.full))
    await check("IQ ping to remote client alice (XEP-0199)", ping(pat, alice.boundjid.full))
    await check("directed presence starling -> prosody (RFC 6121 §4.6)", presence(alice, pat))
    await check("directed presence prosody -> starling (RFC 6121 §4.6)", presence(pat, alice))
    alice.disconnect()
    pat.disconnect()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starling", default=str(Path(__file__).resolve().parent.parent
                                             / "target" / "debug" / "starling"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for tool in ("prosody", "prosodyctl", "openssl"):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    d = Path(tempfile.mkdtemp(prefix="starling-s2s-"))
    (d / "prosody").mkdir()
    (d / "starling").mkdir()
    procs = []
    dns = start_dns()
    try:
        procs.append(start_prosody(d / "prosody"))
        procs.append(start_starling(d / "starling", args.starling))
        results = asyncio.run(scenarios())
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        dns.close()
        if args.keep:
            print(f"logs kept in {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    failed = 0
    for name, outcome in results:
        print(f"{outcome[:4]}  {name}" + (f"  {outcome[5:]}" if outcome != "PASS" else ""))
        failed += outcome != "PASS"
    print(f"{len(results) - failed}/{len(results)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
