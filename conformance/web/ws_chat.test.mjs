// RFC 7395: @xmpp/client logs in over WebSocket and chats with a slixmpp client on the
// TCP port (tcp_peer.py echoes what it gets). Started by conformance/suites/web.py, which passes
// the server's addresses in the environment.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { client, xml } from "@xmpp/client";

const WS = process.env.STARLING_WS;
const C2S_PORT = process.env.STARLING_C2S_PORT;
const PYTHON = process.env.PEER_PYTHON || "python3";

function startPeer() {
  const peer = spawn(PYTHON, [new URL("./tcp_peer.py", import.meta.url).pathname,
    "bob@localhost", "bobpass", "127.0.0.1", C2S_PORT], { stdio: ["ignore", "pipe", "inherit"] });
  const ready = new Promise((resolve, reject) => {
    const lines = createInterface({ input: peer.stdout });
    lines.on("line", (l) => { if (l.trim() === "READY") resolve(); });
    peer.on("exit", (code) => reject(new Error(`slixmpp peer exited with ${code}`)));
  });
  return { peer, ready };
}

function withTimeout(promise, ms, what) {
  let timer;
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  // cleared once settled: a pending timer would keep node --test alive for `ms`
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
}

test("@xmpp/client over WebSocket chats with slixmpp over TCP", async () => {
  const { peer, ready } = startPeer();
  try {
    await withTimeout(ready, 20000, "slixmpp login");
    const xmpp = client({ service: WS, domain: "localhost", resource: "node",
      username: "alice", password: "alicepass" });
    xmpp.on("error", () => {});
    const reply = new Promise((resolve) => {
      xmpp.on("stanza", (st) => {
        if (st.is("message") && st.getChildText("body")) resolve(st);
      });
    });
    const address = await withTimeout(xmpp.start(), 20000, "WebSocket login");
    assert.equal(address.toString(), "alice@localhost/node");
    await xmpp.send(xml("presence"));
    await xmpp.send(xml("message", { to: "bob@localhost", type: "chat" },
      xml("body", {}, "hello over websocket")));
    const st = await withTimeout(reply, 20000, "echo from slixmpp");
    assert.equal(st.attrs.from.split("/")[0], "bob@localhost");
    assert.equal(st.getChildText("body"), "echo: hello over websocket");
    await xmpp.stop();
  } finally {
    peer.kill();
  }
});
