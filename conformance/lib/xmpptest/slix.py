"""slixmpp (a real, widely used client library) driven from asyncio, with timeouts on every wait."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .servers import Server

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)  # failures are reported by us

TIMEOUT = 20.0


class LoginFailed(Exception):
    def __init__(self, condition: str, detail: str = ""):
        super().__init__(f"login failed: {condition} {detail}".strip())
        self.condition = condition


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, *, mech: str | None = None,
                 direct_tls: bool = False, tls_max: ssl.TLSVersion | None = None,
                 plugins: tuple[str, ...] = ()):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the servers under test use self-signed certificates
        if tls_max is not None:
            ctx.maximum_version = tls_max
        super().__init__(jid, password, ssl_context=ctx)
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.direct_tls = direct_tls
        if mech:
            self.plugin["feature_mechanisms"].use_mech = mech
        for p in ("xep_0030", "xep_0199", "xep_0092", *plugins):
            self.register_plugin(p)
        self.plugin["xep_0199"].timeout = TIMEOUT
        loop = asyncio.get_event_loop()
        self.session_started = loop.create_future()
        # a login that ends after nobody waits any more must not log "never retrieved"
        self.session_started.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.auth_failures: list[str] = []
        self.stream_errors: list[str] = []
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", self._on_failed_all)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.register_handler(Callback("conf messages", MatchXPath("{jabber:client}message"),
                                       lambda m: self.messages.put_nowait(m)))
        self.register_handler(Callback("conf presences", MatchXPath("{jabber:client}presence"),
                                       lambda p: self.presences.put_nowait(p)))

    # -- events ----------------------------------------------------------------------------------
    def _settle(self, exc: Exception | None):
        if not self.session_started.done():
            if exc is None:
                self.session_started.set_result(True)
            else:
                self.session_started.set_exception(exc)

    def _on_start(self, _event):
        self._settle(None)

    def _on_failed_auth(self, failure):
        cond = failure["condition"] if failure is not None else "?"
        self.auth_failures.append(f"{self.mech_used}: {failure}")
        self.first_failure = getattr(self, "first_failure", None) or cond
        # slixmpp goes on with the next mechanism; failed_all_auth ends the attempt

    def _on_failed_all(self, _event):
        self._settle(LoginFailed(getattr(self, "first_failure", None) or "no-mechanism",
                                 "; ".join(self.auth_failures)))

    def _on_stream_error(self, err):
        self.stream_errors.append(err["condition"])
        self._settle(LoginFailed(f"stream-error:{err['condition']}", str(err)))

    def _on_disconnected(self, reason):
        self._settle(LoginFailed("disconnected", str(reason)))

    # -- facts ------------------------------------------------------------------------------------
    @property
    def mech_used(self) -> str | None:
        m = self.plugin["feature_mechanisms"].mech
        return m.name if m is not None else None

    @property
    def mechs_offered(self) -> set[str]:
        return set(self.plugin["feature_mechanisms"].mech_list)

    @property
    def tls_version(self) -> str | None:
        sock = self.socket
        return sock.version() if isinstance(sock, (ssl.SSLSocket, ssl.SSLObject)) else None

    # -- helpers ---------------------------------------------------------------------------------
    async def expect_message(self, pred: Callable = lambda m: True, timeout: float = TIMEOUT):
        return await _expect(self.messages, pred, timeout, "message")

    async def expect_presence(self, pred: Callable = lambda p: True, timeout: float = TIMEOUT):
        return await _expect(self.presences, pred, timeout, "presence")

    async def close(self):
        try:
            if self.transport is not None:
                await asyncio.wait_for(self.disconnect(wait=2), 5)
        except Exception:  # noqa: BLE001
            pass
        self.cancel_connection_attempt()
        self.abort()
        task = getattr(self, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - CancelledError expected
                pass


async def _expect(queue: asyncio.Queue, pred, timeout, what):
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no matching {what} within {timeout}s; saw: "
                                 + "; ".join(str(s) for s in seen))
        try:
            st = await asyncio.wait_for(queue.get(), remaining)
        except asyncio.TimeoutError:
            continue
        if pred(st):
            return st
        seen.append(st)


async def login(server: Server, jid: str, password: str, *, mech: str | None = None,
                direct_tls: bool = False, tls_max: ssl.TLSVersion | None = None,
                plugins: tuple[str, ...] = (), timeout: float = TIMEOUT,
                send_presence: bool = True) -> Client:
    """Connect and log in; returns the client with a bound resource, or raises LoginFailed."""
    c = Client(jid, password, mech=mech, direct_tls=direct_tls, tls_max=tls_max,
               plugins=plugins)
    port = server.direct_tls_port if direct_tls else server.c2s_port
    c.connect(server.host, port)
    try:
        await asyncio.wait_for(asyncio.shield(c.session_started), timeout)
    except asyncio.TimeoutError:
        await c.close()
        raise LoginFailed("timeout", f"no session within {timeout}s")
    except LoginFailed:
        await c.close()
        raise
    if send_presence:
        c.send_presence()
    return c


class clients:
    """async with clients(a, b) as (ca, cb): ... closes them whatever happens."""

    def __init__(self, *coros):
        self.coros = coros
        self.made: list[Client] = []

    async def __aenter__(self):
        try:
            for co in self.coros:
                self.made.append(await co)
        except BaseException:
            await self.__aexit__()
            raise
        return self.made

    async def __aexit__(self, *exc):
        for c in self.made:
            await c.close()
