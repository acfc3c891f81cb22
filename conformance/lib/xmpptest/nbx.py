"""Drive nbx_agent.py (nbxmpp on a GLib loop, in its own process) from asyncio."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from .servers import Server

AGENT = Path(__file__).with_name("nbx_agent.py")
TIMEOUT = 20.0


class NbxClient:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.jid: str | None = None
        self.info: dict = {}
        self.stderr_tail = b""

    @classmethod
    async def start(cls, server: Server, jid: str, password: str, *, direct_tls=False,
                    mechs=("SCRAM-SHA-256",), resource="nbxmpp",
                    presences=False) -> "NbxClient":
        cfg = dict(jid=jid, password=password, host=server.host,
                   port=server.direct_tls_port if direct_tls else server.c2s_port,
                   direct_tls=direct_tls, mechs=list(mechs), resource=resource,
                   presences=presences)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(AGENT), json.dumps(cfg), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def event(self, timeout: float = TIMEOUT) -> dict:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"nbxmpp agent said nothing within {timeout}s") from None
        if not line:
            err = await self._stderr()
            raise AssertionError(f"nbxmpp agent exited (status {self.proc.returncode}); "
                                 f"stderr:\n{err}")
        return json.loads(line)

    async def expect(self, name: str, timeout: float = TIMEOUT, pred=lambda e: True) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = []
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"nbxmpp: no '{name}' event within {timeout}s; saw {seen}")
            ev = await self.event(remaining)
            if ev["event"] == name and pred(ev):
                return ev
            seen.append(ev)

    async def wait_login(self, timeout: float = TIMEOUT) -> dict:
        ev = await self.event(timeout)
        if ev["event"] != "connected":
            raise AssertionError(f"nbxmpp login did not succeed: {ev}")
        self.jid = ev["jid"]
        self.info = ev
        return ev

    async def send_message(self, to: str, body: str):
        self.proc.stdin.write((json.dumps({"cmd": "message", "to": to, "body": body}) + "\n")
                              .encode())
        await self.proc.stdin.drain()
        await self.expect("sent")

    async def command(self, **cmd):
        """Send one agent command (see nbx_agent.py); read its events with expect()."""
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def _stderr(self) -> str:
        try:
            data = await asyncio.wait_for(self.proc.stderr.read(), 5)
        except asyncio.TimeoutError:
            data = b""
        return data[-4000:].decode("utf-8", "replace")

    async def close(self):
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
