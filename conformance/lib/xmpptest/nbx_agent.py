"""nbxmpp (Gajim's protocol library) as a scriptable agent in its own process: nbxmpp needs a
GLib main loop, the suites run asyncio, so the two talk over pipes in JSON lines.

    python nbx_agent.py '{"jid": ..., "password": ..., "host": ..., "port": ...,
                          "direct_tls": false, "mechs": ["SCRAM-SHA-256"], "resource": "nbx"}'

stdout events: {"event": "connected", "jid": FULL, "tls": ..., "mech": ...}
               {"event": "login-failed", "error": [domain, condition, text]}
               {"event": "message", "from": ..., "to": ..., "type": ..., "body": ...}
               {"event": "disconnected", "error": [...]}
stdin commands: {"cmd": "message", "to": JID, "body": TEXT} | {"cmd": "quit"}
"""

import json
import sys

import gi

gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

from nbxmpp.client import Client  # noqa: E402
from nbxmpp.const import ConnectionProtocol, ConnectionType, StreamState  # noqa: E402
from nbxmpp.protocol import JID, Message, Presence  # noqa: E402
from nbxmpp.structs import StanzaHandler  # noqa: E402


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.loop = GLib.MainLoop()
        self.connected = False
        jid = JID.from_string(cfg["jid"])
        c = Client()
        c.set_username(jid.localpart)
        c.set_domain(jid.domain)
        c.set_password(cfg["password"])
        c.set_resource(cfg.get("resource") or "nbxmpp")
        ctype = ConnectionType.DIRECT_TLS if cfg.get("direct_tls") else ConnectionType.START_TLS
        c.set_custom_host(f"{cfg['host']}:{cfg['port']}", ConnectionProtocol.TCP, ctype)
        c.set_ignore_tls_errors(True)  # self-signed certificate under test
        if cfg.get("mechs"):
            c.set_mechs(set(cfg["mechs"]))
        c.set_sm_disabled(True)
        c.subscribe("connected", self.on_connected)
        c.subscribe("connection-failed", self.on_failed)
        c.subscribe("disconnected", self.on_disconnected)
        c.register_handler(StanzaHandler(name="message", callback=self.on_message))
        self.client = c
        GLib.io_add_watch(GLib.IOChannel.unix_new(sys.stdin.fileno()),
                          GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP,
                          self.on_stdin)
        GLib.timeout_add_seconds(int(cfg.get("lifetime", 120)), self.quit)

    def run(self):
        self.client.connect()
        self.loop.run()

    def on_connected(self, client, _signal):
        self.connected = True
        client.send_stanza(Presence())
        mech = getattr(getattr(client._sasl, "_mechanism", None), "name", None)
        emit(event="connected", jid=str(client.get_bound_jid()),
             tls=client.is_stream_secure, mech=mech,
             direct_tls=client.current_connection_type == ConnectionType.DIRECT_TLS)

    def on_failed(self, client, _signal):
        emit(event="login-failed", error=[str(x) if x is not None else None
                                          for x in client.get_error()])
        self.quit()

    def on_disconnected(self, client, _signal):
        err = [str(x) if x is not None else None for x in client.get_error()]
        if not self.connected:
            emit(event="login-failed", error=err)
        else:
            emit(event="disconnected", error=err)
        self.quit()

    def on_message(self, _client, stanza, _properties):
        emit(event="message", **{"from": str(stanza.getFrom()), "to": str(stanza.getTo()),
                                 "type": stanza.getType(), "body": stanza.getBody()})

    def on_stdin(self, source, condition):
        line = sys.stdin.readline()
        if not line:
            self.quit()
            return False
        cmd = json.loads(line)
        if cmd["cmd"] == "message":
            self.client.send_stanza(Message(to=cmd["to"], body=cmd["body"], typ="chat"))
            emit(event="sent")
        elif cmd["cmd"] == "quit":
            self.quit()
            return False
        return True

    def quit(self):
        if self.client.state not in (StreamState.DISCONNECTED, StreamState.DISCONNECTING):
            self.client.disconnect()
            GLib.timeout_add(1000, self.loop.quit)
        else:
            self.loop.quit()
        return False


if __name__ == "__main__":
    Agent(json.loads(sys.argv[1])).run()
