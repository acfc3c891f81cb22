"""What the federation suites share: slixmpp clients that leave subscriptions to the
scenario, and checks that run the same against any peer server (chat, ping, the RFC 6121
subscription handshake, XEP-0045 rooms with occupants from the other server)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from slixmpp import JID

from .dns import DnsServer
from .harness import check
from .servers import TestCA
from .slix import Client, LoginFailed

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
TIMEOUT = 20


class CaDir:
    """The run's CA files, removed with the federation that uses them."""
    kind = "ca"

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="conf-ca-"))
        self.users = {}

    def alive(self):
        return True

    def stop(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def log_tail(self, max_bytes=6000):
        return f"CA files in {self.path}"


def switch_mode(ctx, feds: dict, mode: str, peer: str, external: bool):
    """Stops the servers of every other mode in `feds` (one federation at a time keeps the
    run light), then starts this mode's DNS server and, for SASL EXTERNAL, a CA for the
    run. `peer` is the key the suite registered the other server under. Returns
    (dns, ca), ca being None without `external`."""
    for other in list(feds):
        for key in ("starling", peer, "dns", "ca"):
            ctx.drop_server(f"{key}-{other}")
        del feds[other]
    dns = DnsServer([]).start()
    ctx.add_server(f"dns-{mode}", dns)
    ca = None
    if external:
        ca_dir = CaDir()
        ctx.add_server(f"ca-{mode}", ca_dir)
        ca = TestCA(ca_dir.path)
    return dns, ca


async def login(server, jid, pw, *, roster=False) -> Client:
    """slixmpp that leaves subscription decisions to the scenario."""
    c = Client(jid, pw, plugins=("xep_0004", "xep_0045"))
    c.roster.auto_authorize = None
    c.roster.auto_subscribe = False
    c.connect(server.host, server.c2s_port)
    try:
        await asyncio.wait_for(asyncio.shield(c.session_started), TIMEOUT)
    except asyncio.TimeoutError:
        await c.close()
        raise LoginFailed("timeout", f"no session within {TIMEOUT}s")
    except BaseException:
        await c.close()
        raise
    try:
        if roster:
            await c.get_roster(timeout=TIMEOUT)
        c.send_presence()
        # a round trip to its own server: the initial presence has been processed, so the
        # account is available before a remote stanza to its bare JID can arrive
        res = await c.plugin["xep_0199"].send_ping(c.boundjid.domain, timeout=TIMEOUT)
        check(res["type"] == "result", f"ping own server: {res}")
    except BaseException:
        await c.close()
        raise
    return c


async def chat(src, dst, text):
    src.send_message(mto=dst.boundjid.full, mbody=text, mtype="chat")
    m = await dst.expect_message(lambda m: m["body"] == text, TIMEOUT)
    check(m["from"].full == src.boundjid.full, f"from {m['from']}, expected {src.boundjid.full}")
    check(m["type"] == "chat", f"type {m['type']}")


def roster_sub(c, jid):
    item = c.client_roster[jid] if jid in c.client_roster else None
    return item["subscription"] if item is not None else None


async def wait_for(pred, what, timeout=TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def codes(st):
    x = st.xml.find(f"{{{NS_MUC_USER}}}x")
    return {int(s.get("code")) for s in x.findall(f"{{{NS_MUC_USER}}}status")} \
        if x is not None else set()


def muc_item(st):
    x = st.xml.find(f"{{{NS_MUC_USER}}}x")
    it = x.find(f"{{{NS_MUC_USER}}}item") if x is not None else None
    return dict(it.attrib) if it is not None else {}


async def join(c, room, nick):
    """XEP-0045 §7.2: sends the join presence; returns the self-presence (status 110)."""
    c.plugin["xep_0045"].make_join_stanza(JID(room), nick).send()
    me = f"{room}/{nick}"
    got = await c.expect_presence(
        lambda p: p["from"].full == me and (p["type"] == "error" or 110 in codes(p)), TIMEOUT)
    check(got["type"] != "error", f"join {me} refused: {got}")
    check(got["to"].full == c.boundjid.full, f"self-presence to {got['to']}")
    return got


async def create_room(c, room, nick):
    """§10.1.2 creation as an instant room (the default configuration, accepted)."""
    got = await join(c, room, nick)
    check({110, 201} <= codes(got), f"creation self-presence lacks 110/201: {got}")
    check(muc_item(got).get("affiliation") == "owner", f"creator is not owner: {got}")
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/muc#roomconfig")
    await c.plugin["xep_0045"].set_room_config(JID(room), form, timeout=TIMEOUT)


async def groupchat(src, room, nick, readers, text):
    """src says `text` in the room; every reader (src included: the room reflects it) gets
    it from room/nick."""
    src.send_message(mto=room, mbody=text, mtype="groupchat")
    for r in readers:
        m = await r.expect_message(lambda m: m["type"] == "groupchat" and m["body"] == text,
                                   TIMEOUT)
        check(m["from"].full == f"{room}/{nick}", f"groupchat from {m['from']}, "
              f"expected {room}/{nick}")
        check(m["to"].full == r.boundjid.full, f"groupchat to {m['to']}")


async def muc_across(owner, guest, room, o_nick, g_nick):
    """owner creates `room` on its own server; guest, a user of the other server, joins;
    presence with nicks, real JIDs for the owner, status codes, messages both ways, leave."""
    await create_room(owner, room, o_nick)
    # XEP-0030 across servers: the guest's server carries the query to the room's service
    info = await guest.plugin["xep_0030"].get_info(jid=room, timeout=TIMEOUT)
    ids = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
    check(("conference", "text") in ids, f"room identities seen from the other server: {ids}")
    check("http://jabber.org/protocol/muc" in info["disco_info"]["features"],
          f"room features: {info['disco_info']['features']}")
    owner_self = f"{room}/{o_nick}"
    guest_self = f"{room}/{g_nick}"
    guest.plugin["xep_0045"].make_join_stanza(JID(room), g_nick).send()
    # §7.2.3: the occupant already there, then the new occupant's own presence with 110
    seen = await guest.expect_presence(lambda p: p["from"].full == owner_self, TIMEOUT)
    check(muc_item(seen).get("affiliation") == "owner" and 110 not in codes(seen),
          f"guest sees the owner as: {seen}")
    own = await guest.expect_presence(lambda p: p["from"].full == guest_self, TIMEOUT)
    check(own["type"] != "error", f"join {guest_self} refused: {own}")
    check(110 in codes(own), f"guest's self-presence lacks 110: {own}")
    check(muc_item(own).get("role") == "participant", f"guest role: {own}")
    # the owner (a moderator) sees the newcomer with the real JID of the other server
    arrived = await owner.expect_presence(lambda p: p["from"].full == guest_self, TIMEOUT)
    check(muc_item(arrived).get("jid") == guest.boundjid.full,
          f"owner sees the guest's JID as {muc_item(arrived).get('jid')}, "
          f"expected {guest.boundjid.full}: {arrived}")
    await groupchat(guest, room, g_nick, (owner, guest), f"hello from {g_nick}")
    await groupchat(owner, room, o_nick, (guest, owner), f"welcome, {g_nick}")
    guest.send_presence(pto=guest_self, ptype="unavailable")
    left = await owner.expect_presence(lambda p: p["from"].full == guest_self
                                       and p["type"] == "unavailable", TIMEOUT)
    check(110 not in codes(left), f"owner got a self-presence for the guest: {left}")
    own = await guest.expect_presence(lambda p: p["from"].full == guest_self
                                      and p["type"] == "unavailable", TIMEOUT)
    check(110 in codes(own), f"guest's own unavailable presence lacks 110: {own}")
    # RFC 6121 §4.6.3 across servers: the guest joins again and then disconnects without
    # leaving; its server tells the room, and the owner sees the guest go.
    await join(guest, room, g_nick)
    await owner.expect_presence(lambda p: p["from"].full == guest_self
                                and p["type"] != "unavailable", TIMEOUT)
    await guest.close()
    gone = await owner.expect_presence(lambda p: p["from"].full == guest_self
                                       and p["type"] == "unavailable", TIMEOUT)
    check(muc_item(gone).get("role") == "none", f"disconnected guest's role: {gone}")




async def ping_across(x, y):
    """XEP-0199 from each side to the other's server and to the other client."""
    for src, target in ((x, y.boundjid.domain), (y, x.boundjid.domain),
                        (x, y.boundjid.full), (y, x.boundjid.full)):
        res = await src.plugin["xep_0199"].send_ping(target, timeout=TIMEOUT)
        check(res["type"] == "result" and res["from"].full == target,
              f"{src.boundjid} ping {target}: {res}")


async def subscribe_both_ways(x, y):
    """RFC 6121 §3 between two users of different servers (both logged in with
    roster=True): each asks, the other approves, rosters end at `both`, and presence
    broadcasts then reach the other server."""
    a, b = x.boundjid.bare, y.boundjid.bare
    for src, dst, src_bare, dst_bare in ((x, y, a, b), (y, x, b, a)):
        src.send_presence(pto=dst_bare, ptype="subscribe")
        req = await dst.expect_presence(lambda s: s["type"] == "subscribe"
                                        and s["from"].bare == src_bare, TIMEOUT)
        check(req["to"].bare == dst_bare, f"subscribe to {req['to']}")
        dst.send_presence(pto=src_bare, ptype="subscribed")
        await src.expect_presence(lambda s: s["type"] == "subscribed"
                                  and s["from"].bare == dst_bare, TIMEOUT)
        # §3.1.5/§3.1.6: once approved, the contact's server sends its current presence
        await src.expect_presence(lambda s: s["type"] in ("", "available")
                                  and s["from"].bare == dst_bare, TIMEOUT)
    await wait_for(lambda: roster_sub(x, b) == "both",
                   f"{a}'s roster item for {b} to be 'both' (is {roster_sub(x, b)})")
    await wait_for(lambda: roster_sub(y, a) == "both",
                   f"{b}'s roster item for {a} to be 'both' (is {roster_sub(y, a)})")
    y.send_presence(pstatus="after subscribing")
    await x.expect_presence(lambda s: s["from"].bare == b
                            and s["status"] == "after subscribing", TIMEOUT)
    x.send_presence(pstatus="me too")
    await y.expect_presence(lambda s: s["from"].bare == a and s["status"] == "me too", TIMEOUT)
