"""Multi-user chat (XEP-0045) driven by slixmpp's xep_0045/xep_0249 plugins and nbxmpp: reserved
rooms configured through muc#roomconfig, several occupants, ordering, history, subject, nick
changes, private messages, moderation, refusals, destroy, persistence across a restart and
invitations. Assertions are on the stanzas the occupants receive.

Run alone:  conformance/.venv/bin/python conformance/suites/muc.py [--only REGEX] [-v]
"""

import asyncio
import os
import secrets
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from slixmpp import JID  # noqa: E402
from slixmpp.exceptions import IqError  # noqa: E402

from xmpptest.harness import Suite, check  # noqa: E402
from xmpptest.nbx import NbxClient  # noqa: E402
from xmpptest.slix import clients, login  # noqa: E402

suite = Suite("muc", "XEP-0045 multi-user chat and XEP-0249 direct invitations")

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_DELAY = "urn:xmpp:delay"
PLUGINS = ("xep_0004", "xep_0045", "xep_0249")
T = 15
TARGETS = ("starling",)


def muc_domain(server):
    return f"conference.{server.domain}"


def new_room(server, prefix="room"):
    return f"{prefix}{secrets.token_hex(3)}@{muc_domain(server)}"


def codes(st):
    x = st.xml.find(f"{{{NS_MUC_USER}}}x")
    return {int(s.get("code")) for s in x.findall(f"{{{NS_MUC_USER}}}status")} \
        if x is not None else set()


def item(st):
    x = st.xml.find(f"{{{NS_MUC_USER}}}x")
    it = x.find(f"{{{NS_MUC_USER}}}item") if x is not None else None
    return dict(it.attrib) if it is not None else {}


def occupant(c, server):
    jid, pw = c
    return login(server, jid, pw, plugins=PLUGINS)


async def join(c, room, nick, *, password=None, expect_error=False, **hist):
    """Send the join presence (slixmpp's make_join_stanza), return the self-presence (110) or,
    with expect_error, the error presence."""
    p = c.plugin["xep_0045"].make_join_stanza(JID(room), nick, password=password, **hist)
    p.send()
    me = f"{room}/{nick}"
    got = await c.expect_presence(
        lambda p: p["from"].full == me and (p["type"] == "error" or 110 in codes(p)), timeout=T)
    if expect_error:
        check(got["type"] == "error", f"join {me} was accepted: {got}")
    else:
        check(got["type"] != "error", f"join {me} refused: {got}")
    return got


async def create(c, server, nick="owner", room=None, **config):
    """Reserved room: join (201), fetch the muc#roomconfig form, submit `config`."""
    room = room or new_room(server)
    p = await join(c, room, nick)
    check({110, 201} <= codes(p), f"creation self-presence lacks 110/201: {p}")
    check(item(p).get("affiliation") == "owner", f"creator not owner: {p}")
    await configure(c, room, **config)
    return room


async def configure(c, room, **config):
    form = await c.plugin["xep_0045"].get_room_config(JID(room), timeout=T)
    fields = form.get_fields()
    check("muc#roomconfig_persistentroom" in fields, f"config form: {list(fields)}")
    sub = c.plugin["xep_0004"].make_form(ftype="submit")
    sub.add_field(var="FORM_TYPE", ftype="hidden",
                  value="http://jabber.org/protocol/muc#roomconfig")
    for k, v in config.items():
        var = k if k.startswith("muc#") else f"muc#roomconfig_{k}"
        sub.add_field(var=var, value=v)
    await c.plugin["xep_0045"].set_room_config(JID(room), sub, timeout=T)
    return fields


def is_from(room, nick=None):
    return lambda st: st["from"].bare == room and (nick is None or st["from"].resource == nick)


def groupchat(room, body=None):
    return lambda m: m["type"] == "groupchat" and m["from"].bare == room and \
        (body is None or m["body"] == body)


async def refused_iq(coro, condition, what):
    try:
        res = await coro
    except IqError as e:
        check(e.iq["error"]["condition"] == condition, f"{what}: {e.iq}")
        return e.iq
    raise AssertionError(f"{what} accepted: {res}")


# ---- scenarios --------------------------------------------------------------------------------

@suite.scenario("XEP-0045 §10.1.3 reserved room + §10.2 muc#roomconfig form; 3 occupants join "
                "(110/201); groupchat reflected to everyone in one order", targets=TARGETS)
async def create_join_order(ctx):
    server = ctx.server("main")
    users = [ctx.user(server) for _ in range(3)]
    async with clients(*(occupant(u, server) for u in users)) as (a, b, c):
        room = await create(a, server, "alice", roomname="Team room", persistentroom="0",
                            roomdesc="conformance", lang="en",
                            **{"muc#maxhistoryfetch": "20"})
        form = await a.plugin["xep_0045"].get_room_config(JID(room), timeout=T)
        got = form.get_values()
        check(got.get("muc#roomconfig_roomname") == "Team room", f"config not applied: {got}")
        check(got.get("muc#roomconfig_lang") == "en", f"language not applied: {got}")
        # Anyone can read the room's name and language from its disco#info (muc#roominfo).
        info = await b.plugin["xep_0030"].get_info(jid=room, timeout=T)
        x = info.xml.find(f".//{{{NS_DATA}}}x")
        check(x is not None, f"no muc#roominfo form: {info}")
        values = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value")
                  for f in x.findall(f"{{{NS_DATA}}}field")}
        check(values.get("muc#roominfo_lang") == "en"
              and values.get("muc#roomconfig_roomname") == "Team room",
              f"muc#roominfo: {values}")
        pb = await join(b, room, "bob")
        pc = await join(c, room, "carol")
        for p in (pb, pc):
            check(201 not in codes(p), f"201 on joining an existing room: {p}")
        # the existing occupants were told: alice sees bob and carol, carol saw alice and bob
        await a.expect_presence(is_from(room, "bob"))
        await a.expect_presence(is_from(room, "carol"))
        ctx.note(f"room {room}: 3 occupants")
        # everyone sends at once; every occupant sees the same 9 messages in the same order
        for n, cl in (("a", a), ("b", b), ("c", c)):
            for i in range(3):
                cl.send_message(mto=room, mbody=f"{n}{i}", mtype="groupchat")
        orders = []
        for cl in (a, b, c):
            seq = []
            while len(seq) < 9:
                m = await cl.expect_message(groupchat(room))
                if m["body"]:
                    seq.append((m["from"].resource, m["body"]))
            orders.append(seq)
        check(orders[0] == orders[1] == orders[2], f"orders differ: {orders}")
        for n in "abc":
            mine = [b_ for _f, b_ in orders[0] if b_.startswith(n)]
            check(mine == [f"{n}0", f"{n}1", f"{n}2"], f"{n}'s own order broken: {orders[0]}")
        ctx.note(f"order: {[b_ for _f, b_ in orders[0]]}")


@suite.scenario("XEP-0045 §8.1 subject + §7.2.15 history on join (with delay) + §7.2.16 "
                "subject sent to a new occupant", targets=TARGETS)
async def subject_history(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server)) as (a,):
        room = await create(a, server, "alice")
        for i in range(3):
            a.send_message(mto=room, mbody=f"h{i}", mtype="groupchat")
            await a.expect_message(groupchat(room, f"h{i}"))
        a.plugin["xep_0045"].set_subject(room, "Today: testing")
        m = await a.expect_message(lambda m: m["type"] == "groupchat" and m["subject"])
        check(m["subject"] == "Today: testing", f"subject reflection: {m}")
        async with clients(occupant(ub, server)) as (b,):
            await join(b, room, "bob")
            seen = []
            while True:
                m = await b.expect_message(lambda m: m["from"].bare == room)
                seen.append(m)
                if m["subject"]:
                    break
            hist = [m for m in seen if m["body"]]
            check([m["body"] for m in hist] == ["h0", "h1", "h2"], f"history: {seen}")
            for m in hist:
                d = m.xml.find(f"{{{NS_DELAY}}}delay")
                check(d is not None and d.get("stamp") and d.get("from") == room,
                      f"history without delay from the room: {m}")
            check(seen[-1]["subject"] == "Today: testing" and not seen[-1]["body"],
                  f"subject after history: {seen[-1]}")
            ctx.note(f"history {len(hist)} messages with delay, then the subject")
        async with clients(occupant(ub, server)) as (b,):
            await join(b, room, "bob2", maxstanzas=1)
            m = await b.expect_message(lambda m: m["from"].bare == room and m["body"])
            check(m["body"] == "h2", f"maxstanzas=1 gave {m}")


@suite.scenario("XEP-0045 §7.6 nick change (303) + §7.5 private message between occupants",
                targets=TARGETS)
async def nick_and_pm(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server), occupant(ub, server)) as (a, b):
        room = await create(a, server, "alice")
        await join(b, room, "bob")
        await a.expect_presence(is_from(room, "bob"))
        b.send_presence(pto=f"{room}/robert")
        un = await a.expect_presence(lambda p: is_from(room, "bob")(p) and
                                     p["type"] == "unavailable")
        check(303 in codes(un) and item(un).get("nick") == "robert", f"nick change: {un}")
        mine = await b.expect_presence(lambda p: is_from(room, "bob")(p) and
                                       p["type"] == "unavailable")
        check({303, 110} <= codes(mine), f"own nick change: {mine}")
        await a.expect_presence(lambda p: is_from(room, "robert")(p) and
                                p["type"] != "unavailable")
        a.send_message(mto=f"{room}/robert", mbody="psst", mtype="chat")
        m = await b.expect_message(lambda m: m["body"] == "psst")
        check(m["from"].full == f"{room}/alice", f"pm from {m['from']}")
        # a nick taken by another occupant: conflict
        async with clients(occupant(ctx.user(server), server)) as (c,):
            err = await join(c, room, "alice", expect_error=True)
            check(err["error"]["condition"] == "conflict", f"nick conflict: {err}")


@suite.scenario("XEP-0045 §8.2 kick (307) by a moderator, §9.1 ban (301) with the outcast list; "
                "owner/admin/member affiliations", targets=TARGETS)
async def kick_ban(ctx):
    server = ctx.server("main")
    ua, ub, uc, ud = (ctx.user(server) for _ in range(4))
    async with clients(*(occupant(u, server) for u in (ua, ub, uc, ud))) as (a, b, c, d):
        room = await create(a, server, "owner")
        muc = a.plugin["xep_0045"]
        await muc.set_affiliation(JID(room), "admin", jid=JID(ub[0]), timeout=T)
        await muc.set_affiliation(JID(room), "member", jid=JID(uc[0]), timeout=T)
        pb = await join(b, room, "admin")
        check(item(pb).get("affiliation") == "admin" and item(pb).get("role") == "moderator",
              f"admin's self-presence: {pb}")
        pc = await join(c, room, "member")
        check(item(pc).get("affiliation") == "member", f"member: {pc}")
        await join(d, room, "troll")
        admins = await muc.get_affiliation_list(JID(room), "admin", timeout=T)
        members = await muc.get_affiliation_list(JID(room), "member", timeout=T)
        check([JID(j).bare for j in admins] == [ub[0]]
              and [JID(j).bare for j in members] == [uc[0]],
              f"lists: admins {admins} members {members}")
        # the admin kicks the troll
        await b.plugin["xep_0045"].set_role(JID(room), "troll", "none", reason="calm down",
                                            timeout=T)
        k = await d.expect_presence(lambda p: is_from(room, "troll")(p) and
                                    p["type"] == "unavailable")
        check({307, 110} <= codes(k), f"kicked self-presence: {k}")
        k2 = await c.expect_presence(lambda p: is_from(room, "troll")(p) and
                                     p["type"] == "unavailable")
        check(307 in codes(k2), f"others see the kick: {k2}")
        # a member cannot kick
        await refused_iq(c.plugin["xep_0045"].set_role(JID(room), "admin", "none", timeout=T),
                         "forbidden", "member (not a moderator) kicking the admin")
        # an admin cannot ban the owner
        await refused_iq(b.plugin["xep_0045"].set_affiliation(JID(room), "outcast",
                                                              jid=JID(ua[0]), timeout=T),
                         "not-allowed", "admin banning the owner")
        # the troll rejoins, then is banned by the admin
        await join(d, room, "troll")
        await b.plugin["xep_0045"].set_affiliation(JID(room), "outcast", jid=JID(ud[0]),
                                                   reason="spam", timeout=T)
        bn = await d.expect_presence(lambda p: is_from(room, "troll")(p) and
                                     p["type"] == "unavailable")
        check(301 in codes(bn) and item(bn).get("affiliation") == "outcast", f"ban: {bn}")
        out = await muc.get_affiliation_list(JID(room), "outcast", timeout=T)
        check([JID(j).bare for j in out] == [ud[0]], f"outcast list: {out}")
        err = await join(d, room, "troll2", expect_error=True)
        check(err["error"]["condition"] == "forbidden", f"banned user rejoining: {err}")


@suite.scenario("XEP-0045 §7.2.6 members-only (registration-required) and §7.2.7 password "
                "(not-authorized) refusals", targets=TARGETS)
async def refusals(ctx):
    server = ctx.server("main")
    ua, ub, uc = (ctx.user(server) for _ in range(3))
    async with clients(*(occupant(u, server) for u in (ua, ub, uc))) as (a, b, c):
        mroom = await create(a, server, "owner", membersonly="1")
        err = await join(b, mroom, "bob", expect_error=True)
        check(err["error"]["condition"] == "registration-required", f"members-only: {err}")
        await a.plugin["xep_0045"].set_affiliation(JID(mroom), "member", jid=JID(ub[0]),
                                                   timeout=T)
        await join(b, mroom, "bob")
        proom = await create(a, server, "owner", passwordprotectedroom="1", roomsecret="s3cret")
        err = await join(c, proom, "carol", expect_error=True)
        check(err["error"]["condition"] == "not-authorized", f"no password: {err}")
        err = await join(c, proom, "carol", password="wrong", expect_error=True)
        check(err["error"]["condition"] == "not-authorized", f"wrong password: {err}")
        await join(c, proom, "carol", password="s3cret")


@suite.scenario("XEP-0045 §8.3/§8.4 moderated room: a visitor's groupchat is refused, voice "
                "granted lets it through, revoked again refuses", targets=TARGETS)
async def voice(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server), occupant(ub, server)) as (a, b):
        room = await create(a, server, "mod", moderatedroom="1")
        pb = await join(b, room, "visitor")
        check(item(pb).get("role") == "visitor", f"role in a moderated room: {pb}")
        b.send_message(mto=room, mbody="can I talk?", mtype="groupchat")
        err = await b.expect_message(lambda m: m["type"] == "error")
        check(err["error"]["condition"] == "forbidden", f"visitor message: {err}")
        await a.plugin["xep_0045"].set_role(JID(room), "visitor", "participant", timeout=T)
        p = await b.expect_presence(lambda p: is_from(room, "visitor")(p) and
                                    item(p).get("role") == "participant")
        b.send_message(mto=room, mbody="thanks", mtype="groupchat")
        await a.expect_message(groupchat(room, "thanks"))
        await a.plugin["xep_0045"].set_role(JID(room), "visitor", "visitor", timeout=T)
        await b.expect_presence(lambda p: is_from(room, "visitor")(p) and
                                item(p).get("role") == "visitor")
        b.send_message(mto=room, mbody="again", mtype="groupchat")
        err = await b.expect_message(lambda m: m["type"] == "error")
        check(err["error"]["condition"] == "forbidden", f"devoiced: {err}")


NS_DATA = "jabber:x:data"
NS_REQUEST = "http://jabber.org/protocol/muc#request"
NS_REGISTER = "jabber:iq:register"
NS_MUC_REGISTER = "http://jabber.org/protocol/muc#register"


def form_values(x):
    """{var: first value} of a data form element."""
    out = {}
    for f in x.findall(f"{{{NS_DATA}}}field"):
        v = f.find(f"{{{NS_DATA}}}value")
        out[f.get("var")] = v.text if v is not None else None
    return out


@suite.scenario("XEP-0045 §7.13/§8.6 voice request: slixmpp's request_voice reaches the "
                "moderator as an approval form; submitting it makes the visitor a participant",
                targets=TARGETS)
async def voice_request(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server), occupant(ub, server)) as (a, b):
        room = await create(a, server, "mod", moderatedroom="1")
        pb = await join(b, room, "asker")
        check(item(pb).get("role") == "visitor", f"role in a moderated room: {pb}")
        b.plugin["xep_0045"].request_voice(JID(room), "participant")
        ask = await a.expect_message(
            lambda m: m["from"].full == room and m.xml.find(f"{{{NS_DATA}}}x") is not None)
        x = ask.xml.find(f"{{{NS_DATA}}}x")
        vals = form_values(x)
        check(x.get("type") == "form", f"approval form type: {ask}")
        check(vals.get("FORM_TYPE") == NS_REQUEST, f"FORM_TYPE: {vals}")
        check(vals.get("muc#roomnick") == "asker", f"roomnick: {vals}")
        check(vals.get("muc#jid") == ub[0], f"jid: {vals}, expected {ub[0]}")
        check(vals.get("muc#request_allow") in ("false", "0"), f"request_allow: {vals}")
        reply = a.make_message(mto=room)
        sub = a.plugin["xep_0004"].make_form(ftype="submit")
        sub.add_field(var="FORM_TYPE", ftype="hidden", value=NS_REQUEST)
        sub.add_field(var="muc#role", value="participant")
        sub.add_field(var="muc#roomnick", value="asker")
        sub.add_field(var="muc#request_allow", ftype="boolean", value=True)
        reply.append(sub)
        reply.send()
        await b.expect_presence(lambda p: is_from(room, "asker")(p) and
                                item(p).get("role") == "participant")
        b.send_message(mto=room, mbody="now I may speak", mtype="groupchat")
        await a.expect_message(groupchat(room, "now I may speak"))


@suite.scenario("XEP-0045 §7.10/§7.12 nickname registration: form, submit, registered "
                "answer, reserved nick in disco#info, nick refused to others", targets=TARGETS)
async def registration(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server), occupant(ub, server)) as (a, b):
        room = new_room(server)
        await join(a, room, "owner")
        await a.plugin["xep_0045"].set_room_config(
            JID(room), a.plugin["xep_0004"].make_form(ftype="submit"), timeout=T)
        iq = b.make_iq_get(queryxmlns=NS_REGISTER, ito=room)
        res = await iq.send(timeout=T)
        x = res.xml.find(f"{{{NS_REGISTER}}}query/{{{NS_DATA}}}x")
        check(x is not None, f"no registration form: {res}")
        check(form_values(x).get("FORM_TYPE") == NS_MUC_REGISTER, f"form: {res}")
        iq = b.make_iq_set(ito=room)
        query = iq.xml.makeelement(f"{{{NS_REGISTER}}}query", {})
        sub = b.plugin["xep_0004"].make_form(ftype="submit")
        sub.add_field(var="FORM_TYPE", ftype="hidden", value=NS_MUC_REGISTER)
        sub.add_field(var="muc#register_roomnick", value="Reserved")
        query.append(sub.xml)
        iq.xml.append(query)
        await iq.send(timeout=T)
        res = await b.make_iq_get(queryxmlns=NS_REGISTER, ito=room).send(timeout=T)
        q = res.xml.find(f"{{{NS_REGISTER}}}query")
        check(q.find(f"{{{NS_REGISTER}}}registered") is not None, f"not registered: {res}")
        check(q.findtext(f"{{{NS_REGISTER}}}username") == "Reserved", f"username: {res}")
        info = await b.plugin["xep_0030"].get_info(jid=room, node="x-roomuser-item", timeout=T)
        names = [i[3] for i in info["disco_info"]["identities"]]
        check(names == ["Reserved"], f"x-roomuser-item identities: {names}")
        members = await a.plugin["xep_0045"].get_affiliation_list(JID(room), "member",
                                                                  timeout=T)
        check(JID(ub[0]).bare in [str(JID(m).bare) for m in members], f"members: {members}")
        # Someone else may not take the reserved nick (here: the owner changing nick).
        a.send_presence(pto=f"{room}/Reserved")
        got = await a.expect_presence(lambda p: p["type"] == "error"
                                      and p["from"].bare == room)
        check(got["error"]["condition"] == "conflict", f"reserved nick: {got}")


@suite.scenario("XEP-0045 §10.9 destroy with an alternate venue: occupants told, room gone",
                targets=TARGETS)
async def destroy(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server), occupant(ub, server)) as (a, b):
        room = await create(a, server, "owner", persistentroom="1")
        await join(b, room, "bob")
        alt = new_room(server, "venue")
        await a.plugin["xep_0045"].destroy(JID(room), reason="moved", altroom=JID(alt),
                                           timeout=T)
        p = await b.expect_presence(lambda p: is_from(room, "bob")(p) and
                                    p["type"] == "unavailable")
        x = p.xml.find(f"{{{NS_MUC_USER}}}x")
        dst = x.find(f"{{{NS_MUC_USER}}}destroy") if x is not None else None
        check(dst is not None and dst.get("jid") == alt, f"destroy presence: {p}")
        # the room is gone: joining creates a fresh one (201 again, we are the owner)
        p = await join(b, room, "bob")
        check(201 in codes(p), f"room still existed after destroy: {p}")


@suite.scenario("XEP-0045 §10.1.3 persistent room survives a server restart: config, "
                "affiliations and subject", targets=TARGETS, timeout=90)
async def persistence(ctx):
    server = ctx.make_server(name="persist")
    server.start()
    try:
        ua, ub, uc = (_user(server) for _ in range(3))
        async with clients(occupant(ua, server)) as (a,):
            room = await create(a, server, "owner", persistentroom="1", membersonly="1",
                                roomname="Durable")
            await a.plugin["xep_0045"].set_affiliation(JID(room), "member", jid=JID(ub[0]),
                                                       timeout=T)
            await a.plugin["xep_0045"].set_affiliation(JID(room), "outcast", jid=JID(uc[0]),
                                                       timeout=T)
            a.plugin["xep_0045"].set_subject(room, "Kept")
            await a.expect_message(lambda m: m["type"] == "groupchat" and m["subject"])
        server.restart()
        ctx.note("server restarted on the same data dir")
        async with clients(occupant(ua, server), occupant(ub, server),
                           occupant(uc, server)) as (a, b, c):
            p = await join(a, room, "owner")
            check(201 not in codes(p), f"room re-created, not restored: {p}")
            check(item(p).get("affiliation") == "owner", f"owner lost: {p}")
            s = await a.expect_message(lambda m: m["from"].bare == room and m["subject"])
            check(s["subject"] == "Kept", f"subject: {s}")
            vals = (await a.plugin["xep_0045"].get_room_config(JID(room), timeout=T)).get_values()
            check(vals.get("muc#roomconfig_roomname") == "Durable" and
                  vals.get("muc#roomconfig_membersonly") in (True, "1", "true"),
                  f"config after restart: {vals}")
            pb = await join(b, room, "bob")
            check(item(pb).get("affiliation") == "member", f"member after restart: {pb}")
            err = await join(c, room, "carol", expect_error=True)
            check(err["error"]["condition"] == "forbidden", f"outcast after restart: {err}")
    finally:
        server.stop()


def _user(server):
    name = f"u{secrets.token_hex(4)}"
    pw = "pw-" + secrets.token_urlsafe(12)
    server.adduser(name, pw)
    return server.jid(name), pw


@suite.scenario("XEP-0045 §7.8.2 mediated invitation (members-only room adds the invitee) and "
                "XEP-0249 direct invitation", targets=TARGETS)
async def invitations(ctx):
    server = ctx.server("main")
    ua, ub, uc = (ctx.user(server) for _ in range(3))
    async with clients(*(occupant(u, server) for u in (ua, ub, uc))) as (a, b, c):
        room = await create(a, server, "owner", membersonly="1", allowinvites="1")
        a.plugin["xep_0045"].invite(room, ub[0], reason="join us")
        m = await b.expect_message(lambda m: m.xml.find(
            f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite") is not None)
        inv = m.xml.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite")
        check(m["from"].bare == room and JID(inv.get("from")).bare == ua[0],
              f"mediated invite: {m}")
        ctx.note(f"mediated invite: {m}")
        await join(b, room, "bob")  # the invitation made bob a member
        c.plugin["xep_0249"].send_invitation(JID(ub[0]), JID(room), reason="direct")
        m = await b.expect_message(lambda m: m.xml.find("{jabber:x:conference}x") is not None)
        x = m.xml.find("{jabber:x:conference}x")
        check(x.get("jid") == room and m["from"].bare == uc[0], f"direct invite: {m}")


@suite.scenario("XEP-0045 with nbxmpp: joins a slixmpp-created room, gets 110, chats both ways",
                targets=TARGETS)
async def nbxmpp_occupant(ctx):
    server = ctx.server("main")
    ua, ub = ctx.user(server), ctx.user(server)
    async with clients(occupant(ua, server)) as (a,):
        room = await create(a, server, "alice")
        n = await NbxClient.start(server, ub[0], ub[1], resource="gajim", presences=True)
        try:
            await n.wait_login()
            await n.command(cmd="muc-join", room=room, nick="gajim")
            ev = await n.expect("presence", timeout=T,
                                pred=lambda e: e["from"] == f"{room}/gajim")
            check(110 in ev["codes"], f"nbxmpp self-presence: {ev}")
            await a.expect_presence(is_from(room, "gajim"))
            a.send_message(mto=room, mbody="hello gajim", mtype="groupchat")
            ev = await n.expect("message", timeout=T, pred=lambda e: e["body"] == "hello gajim")
            check(ev["type"] == "groupchat" and ev["from"] == f"{room}/alice", f"{ev}")
            await n.command(cmd="message", to=room, body="hello alice", type="groupchat")
            m = await a.expect_message(groupchat(room, "hello alice"))
            check(m["from"].full == f"{room}/gajim", f"from {m['from']}")
        finally:
            await n.close()


if __name__ == "__main__":
    suite.main()
