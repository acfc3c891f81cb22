"""nbxmpp (Gajim's protocol library) as a scriptable agent in its own process: nbxmpp needs a
GLib main loop, the suites run asyncio, so the two talk over pipes in JSON lines.

    python nbx_agent.py '{"jid": ..., "password": ..., "host": ..., "port": ...,
                          "direct_tls": false, "mechs": ["SCRAM-SHA-256"], "resource": "nbx"}'

stdout events: {"event": "connected", "jid": FULL, "tls": ..., "mech": ...}
               {"event": "login-failed", "error": [domain, condition, text]}
               {"event": "message", "from": ..., "to": ..., "type": ..., "body": ...,
                "delay": {"from": ..., "stamp": ...} (only when the message has a XEP-0203 delay)}
               {"event": "disconnected", "error": [...]}
stdin commands: {"cmd": "message", "to": JID, "body": TEXT} | {"cmd": "quit"}

Optional, for the admin and MUC suites (nothing changes for clients that don't use them):
  cfg "presences": true   also emit {"event": "presence", "from", "type", "codes": [110, ...],
                          "affiliation", "role", "nick"} for every presence received
  {"cmd": "message", ..., "type": "groupchat"}   message type (default chat)
  {"cmd": "muc-join", "room": BARE, "nick": NICK, "password": optional}
  {"cmd": "adhoc-list", "to": JID}   -> {"event": "adhoc-list", "nodes": [...]} | adhoc-error
  {"cmd": "adhoc-run", "to": JID, "node": NODE, "fields": {var: [values]}}
        executes the command, submits the fields in the form it returns (if any) and emits
        {"event": "adhoc-done", "status", "notes": [...], "fields": {var: [values]}} | adhoc-error
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
from nbxmpp.simplexml import Node  # noqa: E402
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
        if cfg.get("presences"):
            c.register_handler(StanzaHandler(name="presence", callback=self.on_presence))
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
        ev = {"from": str(stanza.getFrom()), "to": str(stanza.getTo()),
              "type": stanza.getType(), "body": stanza.getBody()}
        delay = stanza.getTag("delay", namespace="urn:xmpp:delay")
        if delay is not None:  # XEP-0203, e.g. on offline messages
            ev["delay"] = {"from": delay.getAttr("from"), "stamp": delay.getAttr("stamp")}
        emit(event="message", **ev)

    def on_stdin(self, source, condition):
        line = sys.stdin.readline()
        if not line:
            self.quit()
            return False
        cmd = json.loads(line)
        if cmd["cmd"] == "message":
            self.client.send_stanza(Message(to=cmd["to"], body=cmd["body"],
                                            typ=cmd.get("type", "chat")))
            emit(event="sent")
        elif cmd["cmd"] == "muc-join":
            p = Presence(to=f"{cmd['room']}/{cmd['nick']}")
            x = p.setTag("x", namespace="http://jabber.org/protocol/muc")
            if cmd.get("password"):
                x.setTagData("password", cmd["password"])
            self.client.send_stanza(p)
            emit(event="sent")
        elif cmd["cmd"] == "adhoc-list":
            self.client.get_module("AdHoc").request_command_list(
                JID.from_string(cmd["to"]), callback=self.on_adhoc_list)
        elif cmd["cmd"] == "adhoc-run":
            self.adhoc_run(cmd)
        elif cmd["cmd"] == "quit":
            self.quit()
            return False
        return True

    def on_presence(self, _client, stanza, _properties):
        x = stanza.getTag("x", namespace="http://jabber.org/protocol/muc#user")
        codes, aff, role = [], None, None
        if x is not None:
            codes = [int(st.getAttr("code")) for st in x.getTags("status")
                     if (st.getAttr("code") or "").isdigit()]
            item = x.getTag("item")
            if item is not None:
                aff, role = item.getAttr("affiliation"), item.getAttr("role")
        emit(event="presence", **{"from": str(stanza.getFrom()), "type": stanza.getType(),
                                  "codes": codes, "affiliation": aff, "role": role})

    @staticmethod
    def _adhoc_error(task):
        try:
            return None, task.finish()
        except Exception as e:  # noqa: BLE001 - reported to the driver
            cond = getattr(e, "condition", None)
            emit(event="adhoc-error", error=str(cond or e), text=str(e))
            return e, None

    def on_adhoc_list(self, task):
        err, cmds = self._adhoc_error(task)
        if err is None:
            emit(event="adhoc-list", nodes=[str(c.node) for c in cmds])

    def adhoc_run(self, cmd):
        from nbxmpp.structs import AdHocCommand
        from nbxmpp.const import AdHocAction
        adhoc = self.client.get_module("AdHoc")
        start = AdHocCommand(jid=JID.from_string(cmd["to"]), node=cmd["node"], name=None)

        def done(task):
            err, res = self._adhoc_error(task)
            if err is None:
                fields = {}
                if res.data is not None:
                    for f in res.data.getTags("field"):
                        fields[f.getAttr("var")] = [v.getData() for v in f.getTags("value")]
                emit(event="adhoc-done", status=res.status.value, fields=fields,
                     notes=[n.text for n in (res.notes or [])])

        def first(task):
            err, res = self._adhoc_error(task)
            if err is not None:
                return
            if res.status.value != "executing":
                return done(task)
            form = Node("x", attrs={"xmlns": "jabber:x:data", "type": "submit"})
            for var, values in cmd.get("fields", {}).items():
                f = form.addChild("field", attrs={"var": var})
                for v in values:
                    f.addChild("value").setData(v)
            adhoc.execute_command(res, action=AdHocAction.COMPLETE, dataform=form,
                                  callback=done)

        # nbxmpp holds task callbacks weakly: keep these closures alive
        self.__dict__.setdefault("_callbacks", []).extend([first, done])
        adhoc.execute_command(start, callback=first)

    def quit(self):
        if self.client.state not in (StreamState.DISCONNECTED, StreamState.DISCONNECTING):
            self.client.disconnect()
            GLib.timeout_add(1000, self.loop.quit)
        else:
            self.loop.quit()
        return False


if __name__ == "__main__":
    Agent(json.loads(sys.argv[1])).run()
