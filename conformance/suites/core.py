"""Core client streams (RFC 6120/6121 and the XEPs every client relies on), driven by real
clients: slixmpp and nbxmpp, plus a raw-socket client for input no real client would send.

Run alone:  conformance/.venv/bin/python conformance/suites/core.py [--only REGEX] [-v]
"""

import asyncio
import os
import secrets
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.nbx import NbxClient  # noqa: E402
from xmpptest.raw import (NS_BIND, NS_CLIENT, NS_SASL, NS_STANZAS, NS_STREAM,  # noqa: E402
                          OpenSSLStream, RawError, RawStream, Scram, children_in, describe,
                          q, scram_exchange, tls_server_end_point)
from xmpptest.slix import LoginFailed, clients, login  # noqa: E402

suite = Suite("core", "RFC 6120 client streams with slixmpp, nbxmpp and raw sockets")

NS_PING = "urn:xmpp:ping"
NS_VERSION = "jabber:iq:version"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


def main_server(ctx):
    return ctx.server("main")


async def serving(ctx, server):
    """The server still accepts a fresh real-client login and answers a ping."""
    jid, pw = ctx.user(server)
    c = await login(server, jid, pw)
    try:
        res = await c.plugin["xep_0199"].send_ping(server.domain, timeout=15)
        check(res["type"] == "result", f"ping after bad input: {res}")
    finally:
        await c.close()


# ---- RFC 6120 §5 STARTTLS, §6 SASL, §7 binding, with slixmpp ---------------------------------

async def _login_with_mech(ctx, mech):
    server = main_server(ctx)
    if ctx.target != "starling" and mech != "PLAIN" and mech != server.scram:
        raise Skip(f"{ctx.target} does not offer {mech}")
    jid, pw = ctx.user(server)
    resource = "res-" + secrets.token_hex(3)
    c = await login(server, f"{jid}/{resource}", pw, mech=mech)
    try:
        check(mech in c.mechs_offered, f"{mech} not offered: {sorted(c.mechs_offered)}")
        check(c.mech_used == mech, f"slixmpp used {c.mech_used}, not {mech}")
        check("starttls" in c.features, f"STARTTLS was not negotiated: {c.features}")
        check(c.tls_version is not None, "stream is not encrypted")
        check(c.boundjid.full == f"{jid}/{resource}",
              f"bound {c.boundjid.full}, asked for {jid}/{resource}")
        ctx.note(f"{mech} over {c.tls_version}; offered {sorted(c.mechs_offered)}")
    finally:
        await c.close()


@suite.scenario("RFC 6120 §5 STARTTLS + §6 SASL SCRAM-SHA-256 + §7 client-chosen resource (slixmpp)")
async def scram_sha256(ctx):
    await _login_with_mech(ctx, "SCRAM-SHA-256")


@suite.scenario("RFC 6120 §6 SASL SCRAM-SHA-1 (slixmpp)")
async def scram_sha1(ctx):
    await _login_with_mech(ctx, "SCRAM-SHA-1")


@suite.scenario("RFC 6120 §6 SASL PLAIN over TLS (slixmpp)")
async def plain(ctx):
    await _login_with_mech(ctx, "PLAIN")


@suite.scenario("RFC 6120 §6 slixmpp's own mechanism choice, TLS 1.3 and TLS 1.2")
async def default_mech(ctx):
    # slixmpp prefers -PLUS when offered; Python's ssl has only tls-unique, so over TLS 1.3 it
    # must fall back and over TLS 1.2 it tries tls-unique first. Either way login must work.
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    for tls_max in (None, ssl.TLSVersion.TLSv1_2):
        c = await login(server, jid, pw, tls_max=tls_max)
        try:
            check(c.boundjid.bare == jid, f"bound {c.boundjid}")
            ctx.note(f"{c.tls_version}: slixmpp used {c.mech_used}, "
                     f"failures before: {c.auth_failures}")
        finally:
            await c.close()


@suite.scenario("XEP-0368 direct TLS login (slixmpp)")
async def direct_tls(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    c = await login(server, f"{jid}/direct", pw, direct_tls=True, mech=server.scram)
    try:
        check(c.tls_version is not None, "not encrypted")
        check("starttls" not in c.features, "STARTTLS used on a direct TLS port?")
        check(c.boundjid.full == f"{jid}/direct", f"bound {c.boundjid}")
        res = await c.plugin["xep_0199"].send_ping(server.domain, timeout=15)
        check(res["type"] == "result", f"ping: {res}")
        ctx.note(f"direct TLS {c.tls_version}, {c.mech_used}")
    finally:
        await c.close()


# ---- SCRAM -PLUS (channel binding) -----------------------------------------------------------
# slixmpp cannot do it against a modern server: Python's ssl module offers only tls-unique,
# which does not exist in TLS 1.3. So these use the raw client with exact RFC computations.

def _plus_offered(features) -> set:
    mechs = features.find(f"{q(NS_SASL, 'mechanisms')}")
    return {m.text for m in mechs} if mechs is not None else set()


@suite.scenario("XEP-0440 channel-binding types advertised with the SASL mechanisms")
def xep0440(ctx):
    server = main_server(ctx)
    for direct in (False, True):
        port = server.direct_tls_port if direct else server.c2s_port
        with RawStream(server.host, port, server.domain, direct_tls=direct) as s:
            feats = s.open() if direct else s.starttls()
            cb = feats.find("{urn:xmpp:sasl-cb:0}sasl-channel-binding")
            if cb is None:
                if ctx.target == "starling":
                    raise AssertionError(f"no XEP-0440 element: {describe(feats)}")
                raise Skip(f"{ctx.target} does not advertise XEP-0440")
            types = {c.get("type") for c in cb}
            ctx.note(f"{'direct TLS' if direct else 'STARTTLS'}: {sorted(types)}")
            check({"tls-exporter", "tls-server-end-point"} <= types,
                  f"expected tls-exporter and tls-server-end-point: {describe(cb)}")
            check("tls-unique" not in types, f"tls-unique is not available in TLS 1.3: "
                  f"{describe(cb)}")


@suite.scenario("RFC 9266 SCRAM-SHA-256-PLUS with tls-exporter (raw client, pyOpenSSL)")
def scram_plus_exporter(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    user = jid.split("@")[0]
    with OpenSSLStream(server.host, server.c2s_port, server.domain) as s:
        feats = s.starttls()
        offered = _plus_offered(feats)
        if "SCRAM-SHA-256-PLUS" not in offered:
            if ctx.target == "starling":
                raise AssertionError(f"SCRAM-SHA-256-PLUS not offered: {offered}")
            raise Skip(f"not offered by {ctx.target}: {offered}")
        ctx.note(f"{s.tls_version()}, offered {sorted(offered)}")
        scram = Scram("sha256", user, pw, "tls-exporter", s.exporter())
        res = scram_exchange(s.send, s.next_element, "SCRAM-SHA-256-PLUS", scram)
        check(res.tag == q(NS_SASL, "success"), f"tls-exporter binding refused: {describe(res)}")
        s.open()
        full = s.bind("plus")
        check(full == f"{jid}/plus", f"bound {full}")
    # And a wrong binding value must be refused (proves the server really checks it).
    with OpenSSLStream(server.host, server.c2s_port, server.domain) as s:
        s.starttls()
        scram = Scram("sha256", user, pw, "tls-exporter", bytes(32))
        res = scram_exchange(s.send, s.next_element, "SCRAM-SHA-256-PLUS", scram)
        check(res.tag == q(NS_SASL, "failure"),
              f"server accepted a wrong tls-exporter value: {describe(res)}")
        ctx.note(f"wrong binding -> {describe(res)}")


@suite.scenario("RFC 5929 SCRAM-SHA-1-PLUS with tls-server-end-point (raw client)")
def scram_plus_endpoint(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    user = jid.split("@")[0]
    with RawStream(server.host, server.c2s_port, server.domain) as s:
        feats = s.starttls()
        offered = _plus_offered(feats)
        if "SCRAM-SHA-1-PLUS" not in offered:
            if ctx.target == "starling":
                raise AssertionError(f"SCRAM-SHA-1-PLUS not offered: {offered}")
            raise Skip(f"not offered by {ctx.target}: {offered}")
        cb = tls_server_end_point(s.sock.getpeercert(binary_form=True))
        scram = Scram("sha1", user, pw, "tls-server-end-point", cb)
        res = scram_exchange(s.send, s.next_element, "SCRAM-SHA-1-PLUS", scram)
        check(res.tag == q(NS_SASL, "success"),
              f"tls-server-end-point binding refused: {describe(res)}")
        s.open()
        check(s.bind("ep") == f"{jid}/ep", "bind")


# ---- routing between two slixmpp clients ----------------------------------------------------

async def _pair(ctx):
    server = main_server(ctx)
    ja, pa = ctx.user(server)
    jb, pb = ctx.user(server)
    return server, clients(login(server, f"{ja}/alpha", pa), login(server, jb, pb))


@suite.scenario("RFC 6120 §7.6 server-generated resource + RFC 6121 §5 chat both ways (full JIDs)")
async def chat_both_ways(ctx):
    server, pair = await _pair(ctx)
    async with pair as (a, b):
        check(a.boundjid.resource == "alpha", f"client-chosen resource not kept: {a.boundjid}")
        check(b.boundjid.resource, f"no server-generated resource: {b.boundjid}")
        ctx.note(f"server-generated resource: {b.boundjid.resource!r}")
        for src, dst in ((a, b), (b, a)):
            body = f"hello {secrets.token_hex(4)} from {src.boundjid.resource}"
            src.send_message(mto=dst.boundjid.full, mbody=body, mtype="chat")
            m = await dst.expect_message(lambda m: m["body"] == body)
            check(m["type"] == "chat", f"type: {m}")
            check(m["from"].full == src.boundjid.full, f"from should be {src.boundjid}: {m}")
            check(m["to"].full == dst.boundjid.full, f"to should be {dst.boundjid}: {m}")


@suite.scenario("RFC 6120 §8.2.3 IQ routing: XEP-0199 ping client to client by full JID")
async def iq_client_to_client(ctx):
    server, pair = await _pair(ctx)
    async with pair as (a, b):
        res = await a.plugin["xep_0199"].send_ping(b.boundjid.full, timeout=15)
        check(res["type"] == "result", f"ping a->b: {res}")
        check(res["from"].full == b.boundjid.full, f"result from {res['from']}, not {b.boundjid}")
        res = await b.plugin["xep_0199"].send_ping(a.boundjid.full, timeout=15)
        check(res["type"] == "result" and res["from"].full == a.boundjid.full, f"b->a: {res}")


@suite.scenario("RFC 6121 §4.6 directed presence between full JIDs")
async def directed_presence(ctx):
    server, pair = await _pair(ctx)
    async with pair as (a, b):
        status = "directed " + secrets.token_hex(4)
        a.send_presence(pto=b.boundjid.full, pstatus=status, pshow="away")
        p = await b.expect_presence(lambda p: p["status"] == status)
        check(p["from"].full == a.boundjid.full, f"presence from {p['from']}: {p}")
        check(p["show"] == "away", f"show lost: {p}")
        check(p["type"] in ("available", "away"), f"type: {p}")
        a.send_presence(pto=b.boundjid.full, ptype="unavailable", pstatus="bye")
        p = await b.expect_presence(lambda p: p["type"] == "unavailable")
        check(p["from"].full == a.boundjid.full, f"unavailable from {p['from']}")


@suite.scenario("XEP-0199 ping the server")
async def ping_server(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    async with clients(login(server, jid, pw)) as (c,):
        res = await c.plugin["xep_0199"].send_ping(server.domain, timeout=15)
        check(res["type"] == "result", f"{res}")
        check(res["from"] == server.domain or res["from"].bare == server.domain,
              f"from: {res['from']}")
        check(len(res.xml) == 0, f"ping result should be empty: {res}")


@suite.scenario("XEP-0030 disco#info on the server")
async def disco_server(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    async with clients(login(server, jid, pw)) as (c,):
        info = await c.plugin["xep_0030"].get_info(jid=server.domain, timeout=15)
        check(info["type"] == "result", f"{info}")
        ids = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        feats = set(info["disco_info"]["features"])
        check(("server", "im") in ids, f"no server/im identity: {ids}")
        for f in (NS_PING, NS_VERSION, NS_DISCO_INFO):
            check(f in feats, f"feature {f} missing: {sorted(feats)}")
        ctx.note(f"{len(feats)} features: {sorted(feats)}")


@suite.scenario("XEP-0092 software version of the server")
async def version_server(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    async with clients(login(server, jid, pw)) as (c,):
        res = await c.plugin["xep_0092"].get_version(server.domain, timeout=15)
        check(res["type"] == "result", f"{res}")
        v = res["software_version"]
        check(v["name"] and v["version"], f"name/version empty: {res}")
        if ctx.target == "starling":
            check("starling" in v["name"].lower(), f"name: {v['name']}")
        ctx.note(f"{v['name']} {v['version']} {v['os']}")


@suite.scenario("RFC 3921 §3 legacy session request answered (raw)")
def legacy_session(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    with RawStream(server.host, server.c2s_port, server.domain) as s:
        s.starttls()
        check(s.sasl_plain(jid.split("@")[0], pw).tag == q(NS_SASL, "success"), "auth")
        feats = s.open()
        check(feats.find(q(NS_BIND, "bind")) is not None, f"no bind feature: {describe(feats)}")
        s.bind("sess")
        s.send("<iq type='set' id='sess1'>"
               "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        iq = s.expect(q(NS_CLIENT, "iq"))
        check(iq.get("type") == "result" and iq.get("id") == "sess1", describe(iq))


# ---- nbxmpp -----------------------------------------------------------------------------------

async def _nbx_chat(ctx, direct_tls):
    server = main_server(ctx)
    jn, pn = ctx.user(server)
    js, ps = ctx.user(server)
    n = await NbxClient.start(server, jn, pn, direct_tls=direct_tls, resource="gajimish",
                              mechs=[server.scram])
    try:
        ev = await n.wait_login()
        check(ev["jid"] == f"{jn}/gajimish", f"nbxmpp bound {ev['jid']}")
        check(ev["tls"], "nbxmpp stream not secure")
        ctx.note(f"nbxmpp: {ev}")
        async with clients(login(server, js, ps)) as (s,):
            body = "from slixmpp " + secrets.token_hex(4)
            s.send_message(mto=n.jid, mbody=body, mtype="chat")
            m = await n.expect("message", pred=lambda e: e["body"] == body)
            check(m["from"] == s.boundjid.full, f"nbxmpp got from={m['from']}")
            check(m["to"] == n.jid, f"nbxmpp got to={m['to']}")
            body = "from nbxmpp " + secrets.token_hex(4)
            await n.send_message(s.boundjid.full, body)
            m = await s.expect_message(lambda m: m["body"] == body)
            check(m["from"].full == n.jid, f"slixmpp got from={m['from']}")
            check(m["to"].full == s.boundjid.full, f"slixmpp got to={m['to']}")
    finally:
        await n.close()


@suite.scenario("nbxmpp STARTTLS + SCRAM login, chat with slixmpp both ways")
async def nbxmpp_starttls(ctx):
    await _nbx_chat(ctx, direct_tls=False)


@suite.scenario("nbxmpp XEP-0368 direct TLS login, chat with slixmpp both ways")
async def nbxmpp_direct(ctx):
    await _nbx_chat(ctx, direct_tls=True)


# ---- authentication failures -------------------------------------------------------------------

@suite.scenario("RFC 6120 §6.5.10 wrong password -> <not-authorized/> (slixmpp, nbxmpp)")
async def wrong_password(ctx):
    server = main_server(ctx)
    jid, pw = ctx.user(server)
    for mech in (server.scram, "PLAIN"):
        try:
            c = await login(server, jid, pw + "x", mech=mech)
            await c.close()
            raise AssertionError(f"slixmpp {mech} logged in with a wrong password")
        except LoginFailed as e:
            check(e.condition == "not-authorized", f"slixmpp {mech}: {e}")
    n = await NbxClient.start(server, jid, pw + "x", mechs=[server.scram])
    try:
        ev = await n.event()
        check(ev["event"] == "login-failed", f"nbxmpp: {ev}")
        check(ev["error"][1] == "not-authorized", f"nbxmpp error: {ev['error']}")
    finally:
        await n.close()
    await serving(ctx, server)


@suite.scenario("RFC 6120 §6.5.10 unknown user -> <not-authorized/> (slixmpp, nbxmpp)")
async def unknown_user(ctx):
    server = main_server(ctx)
    jid = server.jid("nobody" + secrets.token_hex(4))
    for mech in sorted({server.scram, "SCRAM-SHA-1", "PLAIN"}):
        try:
            c = await login(server, jid, "whatever", mech=mech)
            await c.close()
            raise AssertionError(f"unknown user logged in with {mech}")
        except LoginFailed as e:
            check(e.condition == "not-authorized", f"slixmpp {mech}: {e}")
    n = await NbxClient.start(server, jid, "whatever", mechs=[server.scram])
    try:
        ev = await n.event()
        check(ev["event"] == "login-failed" and ev["error"][1] == "not-authorized",
              f"nbxmpp: {ev}")
    finally:
        await n.close()


# ---- XEP-0077 in-band registration ----------------------------------------------------------

IBR_PLUGINS = ("xep_0004", "xep_0066", "xep_0077")


async def _register(server, jid, password):
    """Connect as a not-yet-existing account, register it in-band, then log in (slixmpp)."""
    from xmpptest.slix import Client, TIMEOUT
    c = Client(jid, password, plugins=IBR_PLUGINS)
    registered = asyncio.get_running_loop().create_future()

    async def on_register(_form):
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = jid.split("@")[0]
        iq["register"]["password"] = password
        try:
            res = await iq.send(timeout=TIMEOUT)
            registered.set_result(res)
        except Exception as e:  # noqa: BLE001
            registered.set_exception(AssertionError(f"registration refused: {e!r} "
                                                    f"{getattr(e, 'iq', '')}"))
            c.disconnect()

    c.add_event_handler("register", on_register)
    c.connect(server.host, server.c2s_port)
    try:
        await asyncio.wait_for(asyncio.shield(c.session_started), TIMEOUT)
    except BaseException:
        await c.close()
        if registered.done() and registered.exception():
            raise registered.exception()
        if not registered.done():
            raise AssertionError("no registration happened (is the "
                                 "http://jabber.org/features/iq-register feature offered?)")
        raise
    check(registered.done(), "logged in without registering?")
    res = registered.result()
    check(res["type"] == "result", f"register: {res}")
    return c


@suite.scenario("XEP-0077 in-band registration: register, login, change password, cancel")
async def ibr(ctx):
    server = ctx.server("ibr", allow_registration=True)
    jid = server.jid("new" + secrets.token_hex(4))
    pw1, pw2 = "first-" + secrets.token_hex(6), "second-" + secrets.token_hex(6)
    c = await _register(server, jid, pw1)
    try:
        check(c.boundjid.bare == jid, f"after registration logged in as {c.boundjid}")
    finally:
        await c.close()
    async with clients(login(server, jid, pw1, plugins=IBR_PLUGINS)) as (c,):
        res = await c.plugin["xep_0077"].change_password(pw2, timeout=15)
        check(res["type"] == "result", f"change password: {res}")
    try:
        c = await login(server, jid, pw1, mech=server.scram)
        await c.close()
        raise AssertionError("old password still works after change")
    except LoginFailed as e:
        check(e.condition == "not-authorized", f"old password: {e}")
    c = await login(server, jid, pw2, plugins=IBR_PLUGINS)
    try:
        res = await c.plugin["xep_0077"].cancel_registration(timeout=15)
        check(res["type"] == "result", f"cancel: {res}")
    finally:
        await c.close()
    try:
        c = await login(server, jid, pw2, mech=server.scram)
        await c.close()
        raise AssertionError("login still works after the account was removed")
    except LoginFailed as e:
        check(e.condition == "not-authorized", f"after removal: {e}")


@suite.scenario("XEP-0077 registration refused when allow_registration = false")
def ibr_disabled(ctx):
    server = main_server(ctx)
    with RawStream(server.host, server.c2s_port, server.domain) as s:
        feats = s.starttls()
        check(feats.find("{http://jabber.org/features/iq-register}register") is None,
              f"register feature offered though registration is off: {describe(feats)}")
        s.send("<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
               "<username>sneaky</username><password>pw</password></query></iq>")
        el = s.next_element()
        # RFC-wise either an IQ error (not-allowed / service-unavailable / forbidden...) or the
        # stream closed with not-authorized; never a result.
        check(not (el.tag == q(NS_CLIENT, "iq") and el.get("type") == "result"),
              f"registration succeeded while disabled: {describe(el)}")
        ctx.note(describe(el))


# ---- raw-socket bad input ----------------------------------------------------------------------

def _raw(server, **kw) -> RawStream:
    return RawStream(server.host, server.c2s_port, server.domain, **kw)


def _raw_logged_in(ctx, server) -> tuple[RawStream, str]:
    jid, pw = ctx.user(server)
    s = _raw(server)
    try:
        full = s.login(jid.split("@")[0], pw, "raw")
    except BaseException:
        s.close()
        raise
    return s, full


def bad_input(name, **kw):
    """A raw bad-input scenario; afterwards a fresh slixmpp login must still work."""
    def deco(fn):
        async def run(ctx):
            server = main_server(ctx)
            await asyncio.to_thread(fn, ctx, server)
            await serving(ctx, server)
        run.__name__ = fn.__name__
        return suite.scenario(name, **kw)(run)
    return deco


LAUGHS = ("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
          + "".join(f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>"
                    for i in range(1, 10))
          + "]>")


@bad_input("RFC 6120 §11.1 DOCTYPE + entity declarations (billion laughs) -> <restricted-xml/>",
           xfail={"prosody": "answers not-well-formed"})
def billion_laughs(ctx, server):
    with _raw(server) as s:
        s.send(LAUGHS + "<stream:stream xmlns='jabber:client' "
               "xmlns:stream='http://etherx.jabber.org/streams' "
               f"to='{server.domain}' version='1.0'><message>&lol9;</message>")
        s.expect_stream_error("restricted-xml")


@bad_input("RFC 6120 §11.1 processing instruction and comment in the stream -> <restricted-xml/>",
           xfail={"prosody": "answers not-well-formed"})
def pi_and_comment(ctx, server):
    for junk in ("<?evil instruction?>", "<!-- a comment -->"):
        s, _ = _raw_logged_in(ctx, server)
        with s:
            s.send(junk)
            try:
                s.expect_stream_error("restricted-xml")
            except RawError as e:
                raise RawError(f"after {junk!r}: {e}")


@bad_input("RFC 6120 §4.9.3.13 malformed XML -> <not-well-formed/>")
def not_well_formed(ctx, server):
    s, full = _raw_logged_in(ctx, server)
    with s:
        s.send(f"<message to='{full}'><body>oops</mismatch></message>")
        s.expect_stream_error("not-well-formed")


@bad_input("RFC 6120 §4.9.3.18 10 MB stanza -> <policy-violation/>, closed without buffering",
           timeout=90)
def huge_stanza(ctx, server):
    s, full = _raw_logged_in(ctx, server)
    total = 10 * 1024 * 1024
    chunk = b"A" * 16384
    sent = 0
    with s:
        s.send(f"<message to='{full}' type='chat'><body>")
        while sent < total:
            # Read whatever the server says before each write, so its stream error is not lost
            # to a reset once it closes with our unread data in its buffers.
            s._recv_some(time.monotonic() + 0.001)
            if s.eof or s.parser.closed or s.parser.elements:
                break
            s.sock.settimeout(5)
            try:
                s.send(chunk)
                sent += len(chunk)
            except (socket.timeout, TimeoutError):
                ctx.note(f"server stopped reading after {sent} bytes")
                break
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
                ctx.note(f"send failed after {sent} bytes: {e!r}")
                break
        ctx.note(f"sent {sent} of {total} bytes before the server closed")
        s.expect_stream_error("policy-violation", timeout=20)
        check(sent < total, "the server read all 10 MB before refusing the stanza")


@bad_input("RFC 6120 §4.9.3.18 10,000 nested elements -> <policy-violation/>",
           xfail={"prosody": "has no depth limit"})
def deep_nesting(ctx, server):
    s, full = _raw_logged_in(ctx, server)
    with s:
        try:
            s.send(f"<message to='{full}' type='chat'>" + "<a>" * 10000)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        s.expect_stream_error("policy-violation")


@bad_input("RFC 6120 §4.9.3.12 stanza before authentication -> <not-authorized/>",
           xfail={"prosody": "answers a stanza error"})
def stanza_before_auth(ctx, server):
    with _raw(server) as s:
        s.starttls()
        s.send(f"<message to='someone@{server.domain}' type='chat'><body>hi</body></message>")
        s.expect_stream_error("not-authorized")


@bad_input("RFC 6120 §4.9.3.6 unknown 'to' host in the stream header -> <host-unknown/>")
def host_unknown(ctx, server):
    with _raw(server) as s:
        s.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               "xmlns:stream='http://etherx.jabber.org/streams' to='unknown.example' "
               "version='1.0'>")
        s.expect_stream_error("host-unknown")


@bad_input("RFC 6120 §4.9.3.10 wrong stream namespace -> <invalid-namespace/>")
def invalid_stream_namespace(ctx, server):
    with _raw(server) as s:
        s.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               f"xmlns:stream='http://example.com/not-streams' to='{server.domain}' "
               "version='1.0'>")
        s.expect_stream_error("invalid-namespace")


@bad_input("RFC 6120 §4.9.3.10 unsupported content namespace -> <invalid-namespace/>",
           xfail={"prosody": "ignores the content namespace"})
def invalid_content_namespace(ctx, server):
    with _raw(server) as s:
        s.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:not-a-client' "
               f"xmlns:stream='{NS_STREAM}' to='{server.domain}' version='1.0'>")
        s.expect_stream_error("invalid-namespace")


@bad_input("RFC 6120 §4.9.3.25 version='2.0' -> <unsupported-version/>",
           xfail={"prosody": "accepts version 2.0"})
def unsupported_version(ctx, server):
    with _raw(server) as s:
        s.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               f"xmlns:stream='{NS_STREAM}' to='{server.domain}' version='2.0'>")
        s.expect_stream_error("unsupported-version")


@bad_input("RFC 6120 §6.5.2 SASL garbage base64 -> <incorrect-encoding/>")
def sasl_bad_base64(ctx, server):
    with _raw(server) as s:
        s.starttls()
        s.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!not*base64@@</auth>")
        el = s.next_element()
        check(el.tag == q(NS_SASL, "failure"), f"expected SASL failure, got {describe(el)}")
        check("incorrect-encoding" in children_in(el, NS_SASL), describe(el))


@bad_input("RFC 6120 §6.5.6 unknown SASL mechanism -> <invalid-mechanism/>")
def sasl_unknown_mech(ctx, server):
    with _raw(server) as s:
        s.starttls()
        s.send(f"<auth xmlns='{NS_SASL}' mechanism='X-NO-SUCH-MECH'>AA==</auth>")
        el = s.next_element()
        check(el.tag == q(NS_SASL, "failure"), f"expected SASL failure, got {describe(el)}")
        check("invalid-mechanism" in children_in(el, NS_SASL), describe(el))


def _stanza_error(ctx, s: RawStream, sid: str):
    while True:
        el = s.next_element()
        if el.get("id") == sid:
            break
        ctx.note(f"skipped {describe(el)}")
    check(el.get("type") == "error", f"expected an error reply: {describe(el)}")
    err = el.find(q(NS_CLIENT, "error"))
    check(err is not None, f"no <error/> child: {describe(el)}")
    return el, children_in(err, NS_STANZAS)


@bad_input("RFC 6120 §8.3.3.8 stanza to an invalid JID ('@@') -> jid-malformed stanza error")
def jid_malformed(ctx, server):
    s, full = _raw_logged_in(ctx, server)
    with s:
        s.send("<message to='@@' type='chat' id='badjid1'><body>x</body></message>")
        el, conds = _stanza_error(ctx, s, "badjid1")
        check(el.tag == q(NS_CLIENT, "message"), describe(el))
        check("jid-malformed" in conds, f"expected jid-malformed: {describe(el)}")
        s.send("<iq to='@@' type='get' id='badjid2'><ping xmlns='urn:xmpp:ping'/></iq>")
        el, conds = _stanza_error(ctx, s, "badjid2")
        check(el.tag == q(NS_CLIENT, "iq"), describe(el))
        check("jid-malformed" in conds, f"expected jid-malformed: {describe(el)}")
        # the stream survives a stanza error
        s.send(f"<iq type='get' id='after1' to='{server.domain}'><ping xmlns='{NS_PING}'/></iq>")
        el = s.expect(q(NS_CLIENT, "iq"))
        check(el.get("type") == "result" and el.get("id") == "after1", describe(el))


@suite.scenario("300 idle connections do not stop a real client logging in and chatting",
                timeout=120)
async def idle_connections(ctx):
    server = main_server(ctx)
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection((server.host, server.c2s_port), timeout=10))
        ctx.note(f"{len(socks)} idle connections open")
        server2, pair = await _pair(ctx)
        async with pair as (a, b):
            body = "through the crowd " + secrets.token_hex(4)
            a.send_message(mto=b.boundjid.full, mbody=body, mtype="chat")
            m = await b.expect_message(lambda m: m["body"] == body)
            check(m["from"].full == a.boundjid.full, f"{m}")
        direct = await login(server, *ctx.user(server), direct_tls=True)
        await direct.close()
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    suite.main()
