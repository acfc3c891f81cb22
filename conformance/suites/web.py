"""Web transports with real web clients: @xmpp/client (npm) over WebSocket (RFC 7395) chatting
with slixmpp on the TCP port, Converse.js (served by Starling at /) in headless Debian Chromium
driven by playwright-core, and XEP-0156 host-meta discovery.

The Node tests live in conformance/web/*.test.mjs; each runs as `node --test FILE` against a
Starling started here (domain localhost, users alice, bob, carol, dave with password
NAMEpass), with the addresses in STARLING_WS, STARLING_HTTP and STARLING_C2S_PORT.
conformance/run installs node_modules here and in web/ (Converse.js) and Debian's chromium.
Screenshots go to conformance/.work/web/.
"""

import asyncio
import json
import os
import shutil
import signal
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import StarlingServer  # noqa: E402

CONF = Path(__file__).resolve().parents[1]
REPO = CONF.parent
WEB_TESTS = CONF / "web"
ARTIFACTS = CONF / ".work" / "web"
USERS = ("alice", "bob", "carol", "dave")

suite = Suite("web", "WebSocket with @xmpp/client, Converse.js in Chromium, host-meta")


def web_server(ctx) -> StarlingServer:
    if ctx.target != "starling":
        raise Skip("the web suite checks Starling's HTTP listener")
    s = getattr(ctx, "_web_server", None)
    if s is not None:
        return s
    s = StarlingServer(ctx.binary, name="web", http=True, web_root=REPO / "web")
    s.start()
    ctx.add_server("web", s)
    for u in USERS:
        s.adduser(u, f"{u}pass")
    ctx._web_server = s
    return s


async def node_test(ctx, name: str, timeout: float):
    """Run conformance/web/NAME against the shared server; fail with its output."""
    for need in (WEB_TESTS / "node_modules", REPO / "web" / "node_modules" / "converse.js"):
        check(need.exists(), f"{need} is missing: conformance/run installs it (npm ci)")
    node = shutil.which("node")
    check(node, "node is not installed")
    s = web_server(ctx)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ,
               STARLING_WS=f"ws://{s.host}:{s.http_port}/xmpp-websocket",
               STARLING_HTTP=f"http://{s.host}:{s.http_port}",
               STARLING_C2S_PORT=str(s.c2s_port),
               PEER_PYTHON=sys.executable,  # the conformance venv has slixmpp
               ARTIFACTS=str(ARTIFACTS))
    # Node 20 has WebSocket (which @xmpp/websocket uses) behind a flag; 22 has it on.
    proc = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--test", "--test-concurrency=1", name,
        cwd=WEB_TESTS, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)  # its own group: chromium and the slixmpp peer die with it
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        out = b"(timed out)"
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the test left behind
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            await proc.wait()
    text = out.decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith(("# pass", "# fail", "# duration_ms", "ok ", "not ok ")):
            ctx.note(line)
    check(proc.returncode == 0, f"node --test {name} exited {proc.returncode}:\n"
          + "\n".join(text.splitlines()[-60:]))


@suite.scenario("RFC 7395 @xmpp/client over WebSocket chats with slixmpp over TCP", timeout=120)
async def ws_chat(ctx):
    await node_test(ctx, "ws_chat.test.mjs", 100)


@suite.scenario("RFC 7395 Converse.js in headless Chromium: two pages chat through Starling",
                timeout=240)
async def browser(ctx):
    check(Path("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing (apt-get install "
          "chromium; conformance/run does it)")
    await node_test(ctx, "browser.test.mjs", 220)
    for png in ("converse-dave.png", "converse-carol.png"):
        check((ARTIFACTS / png).stat().st_size > 0, f"no screenshot {png}")
    ctx.note(f"screenshots in {ARTIFACTS}")


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=15) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


@suite.scenario("XEP-0156 host-meta (XRD and JRD) lists this server's WebSocket and BOSH URLs")
def host_meta(ctx):
    s = web_server(ctx)
    base = f"http://{s.host}:{s.http_port}"
    status, ctype, body = _get(base + "/.well-known/host-meta")
    check(status == 200, f"host-meta: HTTP {status}")
    root = ET.fromstring(body)
    check(root.tag == "{http://docs.oasis-open.org/ns/xri/xrd-1.0}XRD", f"root {root.tag}")
    links = {ln.get("rel"): ln.get("href") for ln in
             root.findall("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")}
    ctx.note(f"XRD links {links}")
    status, ctype, body = _get(base + "/.well-known/host-meta.json")
    check(status == 200 and "json" in ctype, f"host-meta.json: HTTP {status} {ctype}")
    jlinks = {ln["rel"]: ln["href"] for ln in json.loads(body).get("links", [])}
    check(jlinks == links, f"JRD {jlinks} differs from XRD {links}")
    ws = links.get("urn:xmpp:alt-connections:websocket")
    bosh = links.get("urn:xmpp:alt-connections:xbosh")
    check(ws and ws.startswith("ws") and ws.endswith("/xmpp-websocket"), f"websocket link {ws}")
    check(bosh and bosh.startswith("http") and bosh.endswith("/http-bind"), f"BOSH link {bosh}")
    check(f":{s.http_port}/" in ws and f":{s.http_port}/" in bosh,
          f"links do not point at this listener (port {s.http_port}): {links}")


if __name__ == "__main__":
    suite.main()
