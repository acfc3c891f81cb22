"""A tiny raw XMPP client on plain Python sockets, for sending bad input and reading exactly
what the server answers. Blocking sockets with timeouts everywhere; the server's stream is
parsed incrementally with expat, so assertions are made on real elements, not substrings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import select
import socket
import ssl
import time
import xml.etree.ElementTree as ET
import xml.parsers.expat

NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"


class RawError(AssertionError):
    pass


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def insecure_context(max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def stream_header(to: str, *, ns: str = NS_CLIENT, stream_ns: str = NS_STREAM,
                  version: str | None = "1.0", decl: bool = True) -> str:
    v = f" version='{version}'" if version is not None else ""
    return (("<?xml version='1.0'?>" if decl else "")
            + f"<stream:stream xmlns='{ns}' xmlns:stream='{stream_ns}' to='{to}'{v}>")


def describe(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def children_in(el: ET.Element, ns: str) -> list[str]:
    return [c.tag.split("}", 1)[1] for c in el if c.tag.startswith("{" + ns + "}")]


class _StreamParser:
    """Incremental parser for one server stream: header attrs, then depth-1 elements."""

    def __init__(self):
        self.p = xml.parsers.expat.ParserCreate(namespace_separator="}")
        self.p.StartElementHandler = self._start
        self.p.EndElementHandler = self._end
        self.p.CharacterDataHandler = self._chars
        self.depth = 0
        self.header: dict | None = None
        self.stack: list[ET.Element] = []
        self.elements: list[ET.Element] = []
        self.closed = False
        self.headerless = False  # the server's first element was not <stream:stream>

    @staticmethod
    def _tag(name: str) -> str:
        return "{" + name if "}" in name else name

    def _start(self, name, attrs):
        tag = self._tag(name)
        attrs = {self._tag(k): v for k, v in attrs.items()}
        self.depth += 1
        if self.depth == 1 and tag == q(NS_STREAM, "stream"):
            self.header = {"tag": tag, **attrs}
            return
        if self.depth == 1:
            self.headerless = True
        el = ET.Element(tag, attrs)
        if self.stack:
            self.stack[-1].append(el)
        self.stack.append(el)

    def _end(self, name):
        self.depth -= 1
        if self.depth == 0 and not self.headerless:
            self.closed = True
            return
        el = self.stack.pop()
        if not self.stack:
            self.elements.append(el)
            if self.depth == 0:
                self.closed = True

    def _chars(self, data):
        if not self.stack:
            return
        el = self.stack[-1]
        if len(el):
            el[-1].tail = (el[-1].tail or "") + data
        else:
            el.text = (el.text or "") + data

    def feed(self, data: bytes):
        try:
            self.p.Parse(data, False)
        except xml.parsers.expat.ExpatError:
            if not self.closed:  # junk after a headerless root is reported by the caller
                raise


class RawStream:
    """One client connection. `transcript` keeps everything received, for failure messages."""

    def __init__(self, host: str, port: int, domain: str, *, direct_tls: bool = False,
                 timeout: float = 15.0, ssl_context: ssl.SSLContext | None = None):
        self.domain = domain
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.transcript = b""
        self.eof = False
        self.reset_error: Exception | None = None
        self.parser = _StreamParser()
        self.tls = False
        if direct_tls:
            self._wrap(ssl_context)

    # -- transport ------------------------------------------------------------------------------
    def _wrap(self, ctx: ssl.SSLContext | None):
        self.sock = (ctx or insecure_context()).wrap_socket(self.sock, server_hostname=self.domain)
        self.tls = True

    def send(self, data: str | bytes):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _recv_some(self, deadline: float) -> bool:
        """Read once; False on EOF/reset/timeout."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            self.reset_error = e
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.transcript += data
        try:
            self.parser.feed(data)
        except xml.parsers.expat.ExpatError as e:
            raise RawError(f"server sent XML we cannot parse ({e}); received so far: "
                           f"{self.transcript[-2000:]!r}")
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading --------------------------------------------------------------------------------
    def next_element(self, timeout: float | None = None) -> ET.Element:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.parser.elements:
            if self.parser.closed or not self._recv_some(deadline):
                if self.parser.elements:
                    break
                why = ("stream closed" if self.parser.closed else
                       "connection closed" if self.eof else "timed out")
                raise RawError(f"expected an element from the server, but {why}; "
                               f"received: {self.transcript[-2000:]!r}")
        return self.parser.elements.pop(0)

    def expect(self, tag: str, timeout: float | None = None) -> ET.Element:
        el = self.next_element(timeout)
        if el.tag != tag:
            raise RawError(f"expected {tag}, got {describe(el)}")
        return el

    def wait_header(self, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.parser.header is None:
            if not self._recv_some(deadline):
                raise RawError(f"no stream header from server; received: {self.transcript!r}")
        return self.parser.header

    def read_until_closed(self, timeout: float | None = None) -> list[ET.Element]:
        """Everything the server sends until it closes its stream or the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.parser.closed and not self.eof:
            if not self._recv_some(deadline):
                if time.monotonic() >= deadline:
                    raise RawError(f"server did not close the stream within the timeout; "
                                   f"received: {self.transcript[-2000:]!r}")
        els, self.parser.elements = self.parser.elements, []
        return els

    def expect_stream_error(self, condition: str, timeout: float | None = None) -> ET.Element:
        """The server must send <stream:error><condition/></stream:error> and close."""
        els = self.read_until_closed(timeout)
        errors = [e for e in els if e.tag == q(NS_STREAM, "error")]
        if not errors:
            raise RawError(f"expected stream error <{condition}/>, got no stream error; "
                           f"received: {self.transcript[-2000:]!r}")
        got = children_in(errors[0], NS_STREAMS_ERR)
        if self.parser.headerless:
            raise RawError(f"server sent a stream error without first opening its stream "
                           f"(RFC 6120 §4.9.1.1): {self.transcript[-2000:]!r}")
        if condition not in got:
            raise RawError(f"expected stream error <{condition}/>, got "
                           f"{describe(errors[0])}")
        return errors[0]

    # -- protocol steps -------------------------------------------------------------------------
    def open(self, to: str | None = None, **kw) -> ET.Element:
        """Send a stream header; return the <stream:features/>."""
        self.parser = _StreamParser()
        self.send(stream_header(to or self.domain, **kw))
        self.wait_header()
        return self.expect(q(NS_STREAM, "features"))

    def starttls(self, ctx: ssl.SSLContext | None = None) -> ET.Element:
        self.open()
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(q(NS_TLS, "proceed"))
        self.sock.settimeout(self.timeout)
        self._wrap(ctx)
        return self.open()

    def sasl_plain(self, user: str, password: str) -> ET.Element:
        payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        return self.next_element()

    def bind(self, resource: str | None = None) -> str:
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>")
        iq = self.expect(q(NS_CLIENT, "iq"))
        jid = iq.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        if iq.get("type") != "result" or jid is None:
            raise RawError(f"bind failed: {describe(iq)}")
        return jid.text

    def login(self, user: str, password: str, resource: str | None = None) -> str:
        """STARTTLS (unless already TLS) + PLAIN + bind; returns the full JID."""
        if not self.tls:
            self.starttls()
        else:
            self.open()
        r = self.sasl_plain(user, password)
        if r.tag != q(NS_SASL, "success"):
            raise RawError(f"SASL PLAIN failed: {describe(r)}")
        self.open()
        return self.bind(resource)


# ---- SCRAM with channel binding (RFC 5802 / 7677 / 5929 / 9266) ------------------------------

def tls_server_end_point(der_cert: bytes) -> bytes:
    """RFC 5929 §4.1: hash of the server certificate (MD5/SHA-1 upgraded to SHA-256)."""
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der_cert)
    algo = cert.signature_hash_algorithm
    name = algo.name if algo is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, der_cert).digest()


class Scram:
    def __init__(self, hash_name: str, user: str, password: str, cb_name: str | None,
                 cb_data: bytes = b""):
        self.h = hash_name
        self.user = user
        self.password = password
        self.gs2 = (f"p={cb_name},," if cb_name else "n,,").encode()
        self.cb_data = cb_data
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.cnonce}".encode()

    def first(self) -> bytes:
        return self.gs2 + self.first_bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
        nonce = attrs[b"r"]
        if not nonce.startswith(self.cnonce.encode()):
            raise RawError("server nonce does not extend ours")
        salt = base64.b64decode(attrs[b"s"])
        iters = int(attrs[b"i"])
        salted = hashlib.pbkdf2_hmac(self.h, self.password.encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", self.h).digest()
        stored = hashlib.new(self.h, client_key).digest()
        without_proof = b"c=" + base64.b64encode(self.gs2 + self.cb_data) + b",r=" + nonce
        auth_msg = self.first_bare + b"," + server_first + b"," + without_proof
        sig = hmac.new(stored, auth_msg, self.h).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        server_key = hmac.new(salted, b"Server Key", self.h).digest()
        self.expected_v = base64.b64encode(hmac.new(server_key, auth_msg, self.h).digest())
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes):
        attrs = dict(kv.split(b"=", 1) for kv in server_final.split(b","))
        if attrs.get(b"v") != self.expected_v:
            raise RawError(f"server signature mismatch: {server_final!r}")


def scram_exchange(send, recv, mech: str, scram: Scram) -> ET.Element:
    """Run a SCRAM exchange over callables; returns the final <success/> or <failure/>."""
    send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>"
         f"{base64.b64encode(scram.first()).decode()}</auth>")
    ch = recv()
    if ch.tag != q(NS_SASL, "challenge"):
        return ch
    final = scram.final(base64.b64decode(ch.text or ""))
    send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>")
    res = recv()
    if res.tag == q(NS_SASL, "success"):
        scram.verify(base64.b64decode(res.text or ""))
    return res


class OpenSSLStream(RawStream):
    """A RawStream whose TLS is pyOpenSSL, which (unlike Python's ssl module) can export
    keying material, needed for RFC 9266 tls-exporter channel binding."""

    def _wrap(self, ctx=None):
        from OpenSSL import SSL
        c = SSL.Context(SSL.TLS_METHOD)
        c.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        self.sock.setblocking(False)  # pyOpenSSL: drive it with select, with deadlines
        conn = SSL.Connection(c, self.sock)
        conn.set_tlsext_host_name(self.domain.encode())
        conn.set_connect_state()
        self.ossl = conn
        self._retry(conn.do_handshake, "TLS handshake")
        self.tls = True

    def _retry(self, op, what):
        from OpenSSL import SSL
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return op()
            except SSL.WantReadError:
                wait = ([self.sock], [])
            except SSL.WantWriteError:
                wait = ([], [self.sock])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RawError(f"{what} timed out")
            select.select(*wait, [], remaining)

    def send(self, data):
        if not self.tls:
            return super().send(data)
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        while view:
            n = self._retry(lambda: self.ossl.send(view[:16384].tobytes()), "TLS send")
            view = view[n:]

    def _recv_some(self, deadline):
        if not self.tls:
            return super()._recv_some(deadline)
        from OpenSSL import SSL
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if self.ossl.pending() == 0:
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                return False
        try:
            data = self.ossl.recv(65536)
        except SSL.WantReadError:
            return True
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error, OSError):
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.transcript += data
        self.parser.feed(data)
        return True

    def exporter(self) -> bytes:
        return self.ossl.export_keying_material(b"EXPORTER-Channel-Binding", 32, None)

    def tls_version(self) -> str:
        return self.ossl.get_protocol_version_name()
