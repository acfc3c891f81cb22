"""Administration from a client: XEP-0050 ad-hoc commands and the XEP-0133 service
administration set, driven by slixmpp (xep_0050/xep_0133) and nbxmpp (its AdHoc module).
Every effect is checked from the outside: the new user logs in, the deleted one cannot, the
announcement reaches every resource, the counts match who is really online.

Run alone:  conformance/.venv/bin/python conformance/suites/admin.py [--only REGEX] [-v]
"""

import asyncio
import os
import secrets
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from slixmpp.exceptions import IqError  # noqa: E402

from xmpptest.harness import Suite, check  # noqa: E402
from xmpptest.nbx import NbxClient  # noqa: E402
from xmpptest.slix import LoginFailed, clients, login  # noqa: E402

suite = Suite("admin", "XEP-0050 ad-hoc commands and XEP-0133 service administration")

NS_COMMANDS = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin#"
ADMIN_NAME = "admin"
PLUGINS = ("xep_0004", "xep_0050", "xep_0133")
T = 15  # every IQ and wait
ADMIN_NODES = ["add-user", "delete-user", "disable-user", "reenable-user", "end-user-session",
               "change-user-password", "get-user-roster", "get-user-lastlogin",
               "get-registered-users-num", "get-registered-users-list", "get-online-users-num",
               "get-online-users-list", "get-active-users-num", "get-active-users", "announce",
               "set-motd", "edit-motd", "delete-motd"]
MULTI = {"accountjids": "jid-multi", "announcement": "text-multi", "motd": "text-multi"}


def admin_server(ctx, key="admin"):
    """A Starling whose `admins` is admin@<domain>, and that admin's password."""
    server = ctx.server(key, admins=(f"{ADMIN_NAME}@localhost",))
    if ADMIN_NAME not in server.users:
        ctx.user(server, ADMIN_NAME)
    return server, server.jid(ADMIN_NAME), server.users[ADMIN_NAME]


def adm(server, jid, pw, resource="console"):
    return login(server, f"{jid}/{resource}", pw, plugins=PLUGINS)


class CmdError(Exception):
    def __init__(self, condition, iq):
        super().__init__(f"{condition}: {iq}")
        self.condition = condition
        self.iq = iq


async def send(c, node, **kw):
    try:
        return await c.plugin["xep_0050"].send_command(
            c.boundjid.domain, node if "#" in node or ":" in node else ADMIN + node,
            timeout=T, **kw)
    except IqError as e:
        raise CmdError(e.iq["error"]["condition"], e.iq) from None


def submit_form(c, fields):
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/admin")
    for var, value in fields.items():
        if var in MULTI:
            form.add_field(var=var, ftype=MULTI[var],
                           value=value if isinstance(value, list) else [value])
        else:
            form.add_field(var=var, value=value)
    return form


async def run(c, node, fields=None):
    """Execute a command; if it answers with a form, complete it with `fields`. Returns the
    final <command/> (status, form values, notes); raises CmdError on an IQ error."""
    res = await send(c, node)
    cmd = res["command"]
    if cmd["status"] == "executing":
        res = await send(c, node, action="complete", sessionid=cmd["sessionid"],
                         payload=submit_form(c, fields or {}))
        cmd = res["command"]
    check(cmd["status"] == "completed", f"{node}: status {cmd['status']}: {res}")
    return cmd


def values(cmd):
    return cmd["form"].get_values() if cmd.xml.find("{jabber:x:data}x") is not None else {}


def notes(cmd):
    return [text for _kind, text in cmd["notes"]]


async def refused(c, node, fields, condition):
    try:
        cmd = await run(c, node, fields)
    except CmdError as e:
        check(e.condition == condition, f"{node} {fields}: expected {condition}, got {e}")
        return e.iq
    raise AssertionError(f"{node} {fields} was accepted: {cmd}")


async def can_login(server, jid, pw):
    c = await login(server, jid, pw)
    await c.close()


async def cannot_login(server, jid, pw):
    try:
        c = await login(server, jid, pw, timeout=T)
    except LoginFailed as e:
        return e.condition
    await c.close()
    raise AssertionError(f"{jid} could still log in")


async def until(cond, what, timeout=T):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def session_ended(c, what):
    # The server closes the stream (a stream error, then the TCP connection).
    await until(lambda: c.transport is None, f"{what}: session of {c.boundjid} not ended")


async def poll_cmd(c, node, var, want, what):
    """Run a read-only command until its field `var` equals `want` (the server updates its
    session table asynchronously after a client leaves)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + T
    while True:
        got = values(await run(c, node, {"max_items": "none"}))[var]
        if got == want:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"{what}: {node} {var} = {got!r}, expected {want!r}")
        await asyncio.sleep(0.1)


# ---- XEP-0050 listing and XEP-0133 access control --------------------------------------------

@suite.scenario("XEP-0050 §2.2 admin lists the XEP-0133 commands; a non-admin sees none and "
                "is refused (forbidden) every one", targets=("starling",))
async def listing_and_forbidden(ctx):
    server, ajid, apw = admin_server(ctx)
    ujid, upw = ctx.user(server)
    async with clients(adm(server, ajid, apw), adm(server, ujid, upw)) as (a, u):
        items = await c_items(a)
        ctx.note(f"admin sees {len(items)} commands")
        missing = [n for n in ADMIN_NODES if ADMIN + n not in items]
        check(not missing, f"admin's list lacks {missing}; got {sorted(items)}")
        check(all(jid == server.domain for jid in items.values()),
              f"commands not on the server's JID: {items}")
        mine = await c_items(u)
        ctx.note(f"non-admin sees {sorted(mine)}")
        check(not [n for n in mine if n.startswith(ADMIN)],
              f"non-admin sees admin commands: {sorted(mine)}")
        for node in ADMIN_NODES:
            try:
                res = await send(u, node)
                raise AssertionError(f"non-admin executed {node}: {res}")
            except CmdError as e:
                check(e.condition == "forbidden", f"{node} for a non-admin: {e}")
        # and the non-admin's attempts changed nothing
        await can_login(server, ajid, apw)


async def c_items(c):
    res = await c.plugin["xep_0050"].get_commands(c.boundjid.domain, timeout=T)
    return {node: jid for jid, node, _name in res["disco_items"]["items"]}


# ---- accounts ---------------------------------------------------------------------------------

@suite.scenario("XEP-0133 §4.1 add-user: the new account logs in with slixmpp; adding it again "
                "is a conflict", targets=("starling",))
async def add_user(ctx):
    server, ajid, apw = admin_server(ctx)
    new = server.jid("new" + secrets.token_hex(4))
    pw = "pw-" + secrets.token_urlsafe(10)
    await cannot_login(server, new, pw)
    async with clients(adm(server, ajid, apw)) as (a,):
        cmd = await run(a, "add-user", {"accountjid": new, "password": pw,
                                        "password-verify": pw})
        ctx.note(f"notes: {notes(cmd)}")
        c = await login(server, f"{new}/fresh", pw)
        try:
            check(c.boundjid.full == f"{new}/fresh", f"bound {c.boundjid}")
        finally:
            await c.close()
        await refused(a, "add-user", {"accountjid": new, "password": "other",
                                      "password-verify": "other"}, "conflict")
    await can_login(server, new, pw)  # the refused second add did not change the password


@suite.scenario("XEP-0133 §4.2 delete-user ends the live session and the account cannot log "
                "in any more", targets=("starling",))
async def delete_user(ctx):
    server, ajid, apw = admin_server(ctx)
    vjid, vpw = ctx.user(server)
    async with clients(adm(server, ajid, apw), login(server, vjid, vpw)) as (a, v):
        cmd = await run(a, "delete-user", {"accountjids": [vjid]})
        ctx.note(f"notes: {notes(cmd)}")
        await session_ended(v, "delete-user")
        ctx.note(f"victim's stream errors: {v.stream_errors}")
    cond = await cannot_login(server, vjid, vpw)
    ctx.note(f"login after delete: {cond}")
    async with clients(adm(server, ajid, apw)) as (a,):
        users = values(await run(a, "get-registered-users-list", {"max_items": "none"}))
        check(vjid not in users["registereduserjids"], f"{vjid} still listed: {users}")


@suite.scenario("XEP-0133 §4.3/§4.4 disable-user ends sessions and refuses login; "
                "reenable-user lets the same password in again", targets=("starling",))
async def disable_reenable(ctx):
    server, ajid, apw = admin_server(ctx)
    vjid, vpw = ctx.user(server)
    async with clients(adm(server, ajid, apw), login(server, vjid, vpw)) as (a, v):
        await run(a, "disable-user", {"accountjids": [vjid]})
        await session_ended(v, "disable-user")
        cond = await cannot_login(server, vjid, vpw)
        ctx.note(f"login while disabled: {cond}")
        await run(a, "reenable-user", {"accountjids": [vjid]})
        await can_login(server, vjid, vpw)


@suite.scenario("XEP-0133 §4.7 change-user-password ends the user's sessions; the old "
                "password fails, the new one works", targets=("starling",))
async def change_password(ctx):
    server, ajid, apw = admin_server(ctx)
    vjid, vpw = ctx.user(server)
    new = "pw-" + secrets.token_urlsafe(10)
    async with clients(adm(server, ajid, apw), login(server, f"{vjid}/one", vpw),
                       login(server, f"{vjid}/two", vpw)) as (a, v1, v2):
        await run(a, "change-user-password", {"accountjid": vjid, "password": new})
        await session_ended(v1, "change-user-password")
        await session_ended(v2, "change-user-password")
        check(a.transport is not None, "the admin's own session ended")
    await cannot_login(server, vjid, vpw)
    await can_login(server, vjid, new)


@suite.scenario("XEP-0133 §4.5 end-user-session: a full JID ends that session only, a bare "
                "JID every session; the account still logs in", targets=("starling",))
async def end_session(ctx):
    server, ajid, apw = admin_server(ctx)
    vjid, vpw = ctx.user(server)
    async with clients(adm(server, ajid, apw), login(server, f"{vjid}/one", vpw),
                       login(server, f"{vjid}/two", vpw), login(server, f"{vjid}/three", vpw)
                       ) as (a, v1, v2, v3):
        await run(a, "end-user-session", {"accountjids": [f"{vjid}/one"]})
        await session_ended(v1, "end-user-session (full JID)")
        # the others still work: a ping round-trip proves it
        for c in (v2, v3):
            res = await c.plugin["xep_0199"].send_ping(server.domain, timeout=T)
            check(res["type"] == "result", f"{c.boundjid} lost: {res}")
        await run(a, "end-user-session", {"accountjids": [vjid]})
        await session_ended(v2, "end-user-session (bare JID)")
        await session_ended(v3, "end-user-session (bare JID)")
    await can_login(server, vjid, vpw)


# ---- statistics -----------------------------------------------------------------------------

@suite.scenario("XEP-0133 §4.15-§4.18 registered and online users, number and list, match "
                "reality (slixmpp)", targets=("starling",))
async def counts(ctx):
    server, ajid, apw = admin_server(ctx, key="counts")  # a server of its own: exact counts
    u1, p1 = ctx.user(server)
    u2, p2 = ctx.user(server)
    u3, _p3 = ctx.user(server)  # registered, never online
    registered = sorted(server.jid(n) for n in server.users)
    async with clients(adm(server, ajid, apw), login(server, f"{u1}/a", p1),
                       login(server, f"{u1}/b", p1), login(server, u2, p2)) as (a, c1a, c1b, c2):
        num = values(await run(a, "get-registered-users-num"))
        check(num.get("registeredusersnum") == str(len(registered)),
              f"registered num {num}, expected {len(registered)}")
        lst = values(await run(a, "get-registered-users-list", {"max_items": "none"}))
        check(sorted(lst["registereduserjids"]) == registered,
              f"registered list {lst}, expected {registered}")
        online = sorted([ajid, u1, u2])
        await poll_cmd(a, "get-online-users-num", "onlineusersnum", str(len(online)),
                       "3 accounts online (one with two resources)")
        lst = values(await run(a, "get-online-users-list", {"max_items": "none"}))
        check(sorted(lst["onlineuserjids"]) == online, f"online list {lst}, expected {online}")
        check(u3 not in lst["onlineuserjids"], "an offline account listed online")
        # max_items truncates (with a note)
        short = await run(a, "get-registered-users-list", {"max_items": "25"})
        check(len(values(short)["registereduserjids"]) == len(registered), f"{short}")
        ctx.note(f"registered {len(registered)}, online {online}")
        # one resource leaving keeps u1 online; both leaving takes it off
        await c1a.close()
        await c2.close()
        await poll_cmd(a, "get-online-users-num", "onlineusersnum", "2", "u2 left")
        lst = values(await run(a, "get-online-users-list", {"max_items": "none"}))
        check(sorted(lst["onlineuserjids"]) == sorted([ajid, u1]), f"after logout: {lst}")
        await c1b.close()
        await poll_cmd(a, "get-online-users-list", "onlineuserjids", [ajid], "u1 left")


# ---- messages to users ------------------------------------------------------------------------

def headline_with(body):
    return lambda m: m["type"] == "headline" and body in m["body"]


@suite.scenario("XEP-0133 §4.23 announce reaches every online resource (two users, one with "
                "two resources)", targets=("starling",))
async def announce(ctx):
    server, ajid, apw = admin_server(ctx)
    u1, p1 = ctx.user(server)
    u2, p2 = ctx.user(server)
    body = "maintenance at noon " + secrets.token_hex(3)
    async with clients(adm(server, ajid, apw), login(server, f"{u1}/a", p1),
                       login(server, f"{u1}/b", p1), login(server, u2, p2)) as (a, c1a, c1b, c2):
        cmd = await run(a, "announce", {"subject": "Maintenance", "announcement": body})
        ctx.note(f"notes: {notes(cmd)}")
        for c in (c1a, c1b, c2):
            m = await c.expect_message(headline_with(body), timeout=T)
            check(m["from"].full == server.domain, f"announcement from {m['from']}")
            check(m["subject"] == "Maintenance", f"subject: {m}")
            check(m["to"].full == c.boundjid.full, f"to {m['to']}, I am {c.boundjid}")
    # not stored: a later login does not get it
    c = await login(server, u2, p2)
    try:
        try:
            m = await c.expect_message(headline_with(body), timeout=2)
            raise AssertionError(f"announcement delivered to a later login: {m}")
        except AssertionError as e:
            if "later login" in str(e):
                raise
    finally:
        await c.close()


@suite.scenario("XEP-0133 §4.24-§4.26 set-motd is delivered at the next login; edit-motd shows "
                "it; delete-motd stops it", targets=("starling",))
async def motd(ctx):
    server, ajid, apw = admin_server(ctx, key="motd")
    ujid, upw = ctx.user(server)
    text = "welcome " + secrets.token_hex(3)
    async with clients(adm(server, ajid, apw)) as (a,):
        await run(a, "set-motd", {"motd": text})
        u = await login(server, f"{ujid}/next", upw)
        try:
            m = await u.expect_message(headline_with(text), timeout=T)
            check(m["from"].full == server.domain, f"motd from {m['from']}")
            ctx.note(f"motd: {m}")
        finally:
            await u.close()
        first = await send(a, "edit-motd")
        shown = first["command"]["form"].get_values().get("motd") or ""
        shown = "\n".join(shown) if isinstance(shown, list) else shown
        check(text in shown, f"edit-motd form does not show the current motd: {first}")
        await send(a, "edit-motd", action="cancel", sessionid=first["command"]["sessionid"])
        await run(a, "delete-motd")
    u = await login(server, ujid, upw)
    try:
        got = []
        try:
            got.append(await u.expect_message(headline_with(text), timeout=2))
        except AssertionError:
            pass
        check(not got, f"motd still delivered after delete-motd: {got}")
    finally:
        await u.close()


# ---- bad input and the session machinery ----------------------------------------------------

@suite.scenario("XEP-0133 bad input: missing fields, another domain's JID, mismatched "
                "passwords, deleting yourself -> an error and nothing changes",
                targets=("starling",))
async def bad_input(ctx):
    server, ajid, apw = admin_server(ctx)
    vjid, vpw = ctx.user(server)
    new = server.jid("never" + secrets.token_hex(3))
    async with clients(adm(server, ajid, apw), login(server, vjid, vpw)) as (a, v):
        before = values(await run(a, "get-registered-users-list", {"max_items": "none"}))
        await refused(a, "add-user", {"password": "x", "password-verify": "x"}, "bad-request")
        await refused(a, "add-user", {"accountjid": new, "password": "x",
                                      "password-verify": "y"}, "bad-request")
        await refused(a, "add-user", {"accountjid": "someone@example.org", "password": "x",
                                      "password-verify": "x"}, "bad-request")
        # one foreign JID among good ones: nothing is done to the good one
        err = await refused(a, "delete-user", {"accountjids": [vjid, "x@example.org"]},
                            "bad-request")
        ctx.note(f"foreign JID: {err['error']['text']}")
        await refused(a, "disable-user", {"accountjids": []}, "bad-request")
        await refused(a, "change-user-password", {"accountjid": "example.org",
                                                  "password": "z"}, "bad-request")
        await refused(a, "delete-user", {"accountjids": [ajid]}, "not-allowed")
        await refused(a, "disable-user", {"accountjids": [ajid]}, "not-allowed")
        await refused(a, "announce", {"announcement": ""}, "bad-request")
        after = values(await run(a, "get-registered-users-list", {"max_items": "none"}))
        check(sorted(before["registereduserjids"]) == sorted(after["registereduserjids"]),
              f"accounts changed: {before} -> {after}")
        res = await v.plugin["xep_0199"].send_ping(server.domain, timeout=T)
        check(res["type"] == "result", "the victim's session was touched")
    await cannot_login(server, new, "x")
    await can_login(server, vjid, vpw)
    await can_login(server, ajid, apw)


@suite.scenario("XEP-0050 §3.4 cancel a multi-stage command; its session id is then unknown "
                "(bad-request) and nothing was done", targets=("starling",))
async def cancel(ctx):
    server, ajid, apw = admin_server(ctx)
    new = server.jid("canceled" + secrets.token_hex(3))
    async with clients(adm(server, ajid, apw)) as (a,):
        first = await send(a, "add-user")
        cmd = first["command"]
        check(cmd["status"] == "executing" and cmd["sessionid"], f"first stage: {first}")
        check(cmd.xml.find("{jabber:x:data}x") is not None, f"no form: {first}")
        sid = cmd["sessionid"]
        res = await send(a, "add-user", action="cancel", sessionid=sid)
        check(res["command"]["status"] == "canceled", f"cancel: {res}")
        try:
            res = await send(a, "add-user", action="complete", sessionid=sid,
                             payload=submit_form(a, {"accountjid": new, "password": "p",
                                                     "password-verify": "p"}))
            raise AssertionError(f"a canceled session completed: {res}")
        except CmdError as e:
            check(e.condition == "bad-request", f"stale session: {e}")
            ctx.note(f"stale session -> {e.condition} "
                     f"{[c.tag for c in e.iq.xml.find('{jabber:client}error')]}")
        try:
            res = await send(a, "add-user", action="complete", sessionid="no-such-session",
                             payload=submit_form(a, {"accountjid": new, "password": "p",
                                                     "password-verify": "p"}))
            raise AssertionError(f"an unknown session id completed: {res}")
        except CmdError as e:
            check(e.condition == "bad-request", f"unknown session: {e}")
    await cannot_login(server, new, "p")


@suite.scenario("XEP-0050/XEP-0133 with nbxmpp (Gajim's library): list commands, add-user, "
                "the new user logs in; a non-admin nbxmpp is forbidden", targets=("starling",))
async def nbxmpp_admin(ctx):
    server, ajid, apw = admin_server(ctx)
    ujid, upw = ctx.user(server)
    new = server.jid("nbx" + secrets.token_hex(4))
    pw = "pw-" + secrets.token_urlsafe(10)
    n = await NbxClient.start(server, ajid, apw, resource="gajim")
    u = await NbxClient.start(server, ujid, upw, resource="gajim")
    try:
        await n.wait_login()
        await u.wait_login()
        await n.command(cmd="adhoc-list", to=server.domain)
        ev = await n.expect("adhoc-list", timeout=T)
        check(ADMIN + "add-user" in ev["nodes"], f"nbxmpp list: {ev}")
        await n.command(cmd="adhoc-run", to=server.domain, node=ADMIN + "add-user",
                        fields={"accountjid": [new], "password": [pw],
                                "password-verify": [pw]})
        ev = await n.expect("adhoc-done", timeout=T)
        check(ev["status"] == "completed", f"nbxmpp add-user: {ev}")
        ctx.note(f"nbxmpp add-user notes: {ev['notes']}")
        await can_login(server, new, pw)
        await n.command(cmd="adhoc-run", to=server.domain,
                        node=ADMIN + "get-online-users-num", fields={})
        ev = await n.expect("adhoc-done", timeout=T)
        check(int(ev["fields"]["onlineusersnum"][0]) >= 2, f"online num via nbxmpp: {ev}")
        await u.command(cmd="adhoc-list", to=server.domain)
        ev = await u.expect("adhoc-list", timeout=T)
        check(not [x for x in ev["nodes"] if x.startswith(ADMIN)], f"non-admin sees {ev}")
        await u.command(cmd="adhoc-run", to=server.domain, node=ADMIN + "delete-user",
                        fields={"accountjids": [new]})
        ev = await u.expect("adhoc-error", timeout=T)
        check("forbidden" in ev["error"], f"non-admin nbxmpp: {ev}")
    finally:
        await n.close()
        await u.close()
    await can_login(server, new, pw)


if __name__ == "__main__":
    suite.main()
