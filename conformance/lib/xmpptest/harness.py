"""Scenario registry and runner shared by every suite.

A suite is a Python file that builds a ``Suite``, decorates scenarios with
``@suite.scenario("RFC 6120 §6.4 ...")`` and ends with ``suite.main()``. A scenario is an
``async def`` (or plain ``def``, run in a thread) taking a ``Context``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .servers import ProsodyServer, Server, StarlingServer

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = REPO / "target" / "release" / "starling"


@dataclass
class Scenario:
    name: str
    func: Callable
    timeout: float
    targets: tuple[str, ...]
    xfail: dict[str, str]


@dataclass
class Result:
    suite: str
    scenario: str
    status: str  # pass | fail | skip | xfail (a known deviation of a reference server)
    duration: float
    detail: str = ""
    notes: list[str] = field(default_factory=list)


class Skip(Exception):
    """Raise from a scenario when it cannot apply to this target (reported, not a failure)."""


class Context:
    """What a scenario gets: servers started on demand, users, notes, the target kind."""

    def __init__(self, suite: "Suite", args):
        self.suite = suite
        self.target: str = args.server
        self.binary: str = args.binary
        self.verbose: bool = args.verbose
        self._servers: dict[str, Server] = {}
        self._server_opts: dict[str, dict] = {}
        self.notes: list[str] = []

    def note(self, msg: str):
        self.notes.append(msg)
        if self.verbose:
            print(f"      · {msg}", flush=True)

    def make_server(self, **opts) -> Server:
        if self.target == "starling":
            return StarlingServer(self.binary, **opts)
        if self.target == "prosody":
            return ProsodyServer(**opts)
        raise ValueError(self.target)

    def server(self, key: str = "main", **opts) -> Server:
        """A server shared by the scenarios that ask for the same key, started on first use,
        restarted (and the crash reported) if it died."""
        s = self._servers.get(key)
        if s is not None and not s.alive():
            # already reported by the scenario during which it died (check_servers_alive)
            print(f"  [conformance] restarting server '{key}', which had died", flush=True)
            s.stop()
            s = None
        if s is None:
            s = self.make_server(name=key, **opts)
            s.users = {}  # type: ignore[attr-defined]
            s.start()
            self._servers[key] = s
        return s

    def add_server(self, key: str, server) -> None:
        """Adopt a server (or helper process with kind/alive/stop/log_tail) started by the
        suite itself, e.g. a federation pair: stopped at the end like the others, checked
        after every scenario, its log printed when a scenario fails."""
        if not hasattr(server, "users"):
            server.users = {}
        self._servers[key] = server

    def drop_server(self, key: str) -> None:
        """Stop an adopted server now and forget it (a suite done with one set-up)."""
        s = self._servers.pop(key, None)
        if s is not None:
            s.stop()

    def has_server(self, key: str) -> bool:
        return key in self._servers

    def user(self, server: Server, name: str | None = None) -> tuple[str, str]:
        """A fresh account on `server`: returns (bare JID, password)."""
        name = name or f"u{secrets.token_hex(4)}"
        password = "pw-" + secrets.token_urlsafe(12)
        server.adduser(name, password)
        server.users[name] = password  # type: ignore[attr-defined]
        return server.jid(name), password

    def stop_all(self):
        for s in self._servers.values():
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"[conformance] error stopping {s.kind}: {e}", flush=True)
        self._servers.clear()

    def check_servers_alive(self):
        for key, s in self._servers.items():
            if not s.alive():
                raise AssertionError(f"server '{key}' is no longer running; log:\n"
                                     f"{s.log_tail()}")

    def server_logs(self, lines: int = 25) -> str:
        out = []
        for k, s in self._servers.items():
            tail = s.log_tail(20000).splitlines()[-lines:]
            out.append(f"--- server '{k}' ({s.kind}) last {len(tail)} log lines ---")
            out.extend(tail)
        return "\n".join(out)


class Suite:
    def __init__(self, name: str, description: str = ""):
        self.name = name
        self.description = description
        self.scenarios: list[Scenario] = []

    def scenario(self, name: str, *, timeout: float = 60.0,
                 targets: tuple[str, ...] = ("starling", "prosody"),
                 xfail: dict[str, str] | None = None):
        """`xfail` maps a reference target (never starling) to why it is known to fail there:
        its failure is then reported as xfail, not counted as a failure."""
        def deco(func):
            self.scenarios.append(Scenario(name, func, timeout, targets, xfail or {}))
            return func
        return deco

    # -- running --------------------------------------------------------------------------------
    async def _run_one(self, sc: Scenario, ctx: Context) -> Result:
        ctx.notes = []
        t0 = time.monotonic()
        status, detail = "pass", ""
        try:
            if inspect.iscoroutinefunction(sc.func):
                await asyncio.wait_for(sc.func(ctx), sc.timeout)
            else:
                await asyncio.wait_for(asyncio.to_thread(sc.func, ctx), sc.timeout)
            ctx.check_servers_alive()
        except Skip as e:
            status, detail = "skip", str(e)
        except asyncio.TimeoutError:
            status, detail = "fail", f"timed out after {sc.timeout}s\n{traceback.format_exc()}"
        except Exception:  # noqa: BLE001 - a scenario failing is a result, not a crash
            status, detail = "fail", traceback.format_exc()
        if status == "fail" and ctx.target in sc.xfail:
            status = "xfail"
            detail = f"known {ctx.target} deviation: {sc.xfail[ctx.target]}\n" + \
                detail.strip().splitlines()[-1]
        elif status == "fail":
            detail += "\n" + ctx.server_logs()
        return Result(self.name, sc.name, status, time.monotonic() - t0, detail,
                      list(ctx.notes))

    async def _run_all(self, args) -> list[Result]:
        ctx = Context(self, args)
        results: list[Result] = []
        pattern = re.compile(args.only, re.I) if args.only else None
        try:
            for sc in self.scenarios:
                if pattern and not pattern.search(sc.name):
                    continue
                if args.server not in sc.targets:
                    continue
                print(f"  ... {sc.name}", flush=True)
                r = await self._run_one(sc, ctx)
                mark = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "xfail": "XFAIL"}[r.status]
                print(f"  {mark} {sc.name} ({r.duration:.2f}s)", flush=True)
                if r.status != "pass" and r.detail:
                    print("    " + r.detail.strip().replace("\n", "\n    "), flush=True)
                results.append(r)
        finally:
            ctx.stop_all()
        return results

    def main(self):
        ap = argparse.ArgumentParser(description=f"conformance suite {self.name}")
        ap.add_argument("--server", choices=["starling", "prosody"],
                        default=os.environ.get("CONFORMANCE_SERVER", "starling"))
        ap.add_argument("--binary", default=str(DEFAULT_BINARY),
                        help="the starling binary (default: target/release/starling)")
        ap.add_argument("--only", help="run only scenarios whose name matches this regex")
        ap.add_argument("--report", help="write results as JSON to this file")
        ap.add_argument("--list", action="store_true", help="list scenarios and exit")
        ap.add_argument("-v", "--verbose", action="store_true")
        args = ap.parse_args()
        if args.list:
            for sc in self.scenarios:
                print(sc.name)
            return
        if args.server == "starling" and not Path(args.binary).exists():
            sys.exit(f"no starling binary at {args.binary} (cargo build --release)")
        print(f"suite {self.name} against {args.server}", flush=True)
        # SIGTERM (CI timeout, run_suites' timeout) must still stop our servers: SystemExit
        # makes asyncio.run cancel the main task, whose `finally` stops them; atexit in
        # servers.py is the backstop.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        results = asyncio.run(self._run_all(args))
        if args.report:
            Path(args.report).write_text(json.dumps([r.__dict__ for r in results], indent=1))
        failed = sum(r.status == "fail" for r in results)
        passed = sum(r.status == "pass" for r in results)
        skipped = sum(r.status in ("skip", "xfail") for r in results)
        print(f"suite {self.name}: {passed} passed, {failed} failed, {skipped} skipped",
              flush=True)
        sys.exit(1 if failed or not results else 0)


def check(cond: Any, msg: str):
    """assert that survives python -O and says what was wrong."""
    if not cond:
        raise AssertionError(msg)
