"""Federation interop: Starling <-> a private Debian ejabberd 23.01 over loopback (RFC 6120 §8
with XEP-0220 dialback, RFC 6121 across servers, XEP-0199 to remote entities, XEP-0045 rooms
on either side with occupants from the other).

No real DNS is consulted. Starling is `starling.example` and reaches `ejabberd.test` (and its
MUC service) through `[s2s.routes]`. ejabberd's Erlang resolver reads an inetrc that names only
this suite's DNS server (on 127.53.x.y:53), which publishes `_xmpp-server._tcp` SRV records for
Starling's domain and MUC domain whose target is 127.0.0.1 itself (ejabberd resolves targets
with the system's getaddrinfo). ejabberd runs as its own user, hence root. Both servers have
self-signed certificates, so dialback is what authenticates the streams.

Run alone:  conformance/.venv/bin/python conformance/suites/s2s_ejabberd.py [--only REGEX] [-v]
"""

import asyncio
import os
import secrets
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnslib  # noqa: E402
from slixmpp import JID  # noqa: E402

from xmpptest import ejabberd  # noqa: E402
from xmpptest.dns import DnsServer  # noqa: E402
from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import LOOPBACK, StarlingServer  # noqa: E402
from xmpptest.slix import Client, LoginFailed, clients  # noqa: E402

S_DOMAIN, E_DOMAIN = "starling.example", "ejabberd.test"
S_MUC, E_MUC = f"conference.{S_DOMAIN}", f"conference.{E_DOMAIN}"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
TIMEOUT = 20

suite = Suite("s2s_ejabberd", "federation with a private ejabberd: dialback both ways, chat, "
                              "presence, subscriptions, IQ ping and rooms across servers")


class Federation:
    def __init__(self, starling, ejabberd_server, dns):
        self.starling, self.ejabberd, self.dns = starling, ejabberd_server, dns


def federation(ctx) -> Federation:
    """Starling and ejabberd federating over loopback, started on first use and shared."""
    if ctx.target != "starling":
        raise Skip("the federation suite checks Starling against ejabberd")
    fed = getattr(ctx, "_ej_federation", None)
    if fed is not None:
        return fed
    if not ejabberd.available():
        raise Skip("needs root and Debian's ejabberd (conformance/run installs it)")
    dns = DnsServer([]).start()
    ctx.add_server("dns", dns)
    ej = ejabberd.EjabberdServer(domain=E_DOMAIN, name="s2s", dns=(dns.ip, 53), muc=True)
    ej.start()
    ctx.add_server("ejabberd", ej)
    route = f"{LOOPBACK}:{ej.s2s_port}"
    starling = StarlingServer(ctx.binary, domain=S_DOMAIN, name="s2s-ej", s2s=True,
                              s2s_routes={E_DOMAIN: route, E_MUC: route})
    starling.start()
    ctx.add_server("starling", starling)
    # ejabberd looks the SRV target's address up with the system resolver, which knows
    # nothing of test names: the target is the address itself.
    records = []
    for name in (S_DOMAIN, S_MUC):
        records.append((f"_xmpp-server._tcp.{name}", "SRV",
                        dnslib.SRV(priority=0, weight=0, port=starling.s2s_port,
                                   target=f"{LOOPBACK}.")))
    dns.set_records(records)
    ctx.note(f"starling {S_DOMAIN} s2s {starling.s2s_port}, ejabberd {E_DOMAIN} "
             f"s2s {ej.s2s_port}, DNS {dns.ip}:53")
    ctx._ej_federation = fed = Federation(starling, ej, dns)
    return fed


async def login(server, jid, pw, *, roster=False) -> Client:
    """slixmpp that leaves subscription decisions to the scenario; available once its own
    server has answered a ping (so its initial presence has been handled)."""
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
        res = await c.plugin["xep_0199"].send_ping(c.boundjid.domain, timeout=TIMEOUT)
        check(res["type"] == "result", f"ping own server: {res}")
    except BaseException:
        await c.close()
        raise
    return c


async def pair(ctx, *, roster=False):
    """(sam on Starling, eve on ejabberd): fresh accounts, logged in, available."""
    fed = federation(ctx)
    s_jid, s_pw = ctx.user(fed.starling)
    e_jid, e_pw = ctx.user(fed.ejabberd)
    return clients(login(fed.starling, s_jid, s_pw, roster=roster),
                   login(fed.ejabberd, e_jid, e_pw, roster=roster))


async def chat(src, dst, text):
    src.send_message(mto=dst.boundjid.full, mbody=text, mtype="chat")
    m = await dst.expect_message(lambda m: m["body"] == text, TIMEOUT)
    check(m["from"].full == src.boundjid.full, f"from {m['from']}, expected {src.boundjid.full}")
    check(m["type"] == "chat", f"type {m['type']}")


def codes(st):
    x = st.xml.find(f"{{{NS_MUC_USER}}}x")
    return {int(s.get("code")) for s in x.findall(f"{{{NS_MUC_USER}}}status")} \
        if x is not None else set()


async def join(c, room, nick):
    """Joins `room` as `nick`; returns the self-presence (status 110)."""
    c.plugin["xep_0045"].make_join_stanza(JID(room), nick).send()
    me = f"{room}/{nick}"
    got = await c.expect_presence(
        lambda p: p["from"].full == me and (p["type"] == "error" or 110 in codes(p)), TIMEOUT)
    check(got["type"] != "error", f"join {me} refused: {got}")
    return got


async def room_chat(room, sender, nick, receivers, text):
    """`sender` (as `nick`) says `text`; every one of `receivers` gets it from room/nick."""
    sender.send_message(mto=room, mbody=text, mtype="groupchat")
    for r in receivers:
        m = await r.expect_message(
            lambda m: m["type"] == "groupchat" and m["body"] == text, TIMEOUT)
        check(m["from"].full == f"{room}/{nick}", f"groupchat from {m['from']}, "
                                                 f"expected {room}/{nick}")


async def rooms_across(ctx, owner, guest, room, owner_nick, guest_nick):
    """`owner` creates `room` (instant room), `guest` from the other server joins; both see
    each other's presence and messages."""
    p = await join(owner, room, owner_nick)
    if 201 in codes(p):
        # XEP-0045 §10.1.2: accept the default configuration (instant room).
        await owner.plugin["xep_0045"].set_room_config(
            JID(room), owner.plugin["xep_0004"].make_form(ftype="submit"), timeout=TIMEOUT)
    await join(guest, room, guest_nick)
    seen = await owner.expect_presence(
        lambda s: s["from"].full == f"{room}/{guest_nick}" and s["type"] != "unavailable",
        TIMEOUT)
    check(seen["muc"]["role"] in ("participant", "visitor"), f"guest presence: {seen}")
    await room_chat(room, guest, guest_nick, (owner, guest), f"hello from {guest_nick}")
    await room_chat(room, owner, owner_nick, (owner, guest), f"welcome {guest_nick}")
    guest.send_presence(pto=f"{room}/{guest_nick}", ptype="unavailable")
    gone = await owner.expect_presence(
        lambda s: s["from"].full == f"{room}/{guest_nick}" and s["type"] == "unavailable",
        TIMEOUT)
    check(gone["type"] == "unavailable", f"leave: {gone}")


# ---- scenarios ---------------------------------------------------------------------------------

@suite.scenario("RFC 6120 §8 chat Starling -> ejabberd (first stanza opens the s2s stream)",
                timeout=90, targets=("starling",))
async def chat_s_to_e(ctx):
    async with await pair(ctx) as (sam, eve):
        await chat(sam, eve, "starling to ejabberd")


@suite.scenario("RFC 6120 §8 chat ejabberd -> Starling, and back", timeout=90,
                targets=("starling",))
async def chat_e_to_s(ctx):
    async with await pair(ctx) as (sam, eve):
        await chat(eve, sam, "ejabberd to starling")
        await chat(sam, eve, "and back")


@suite.scenario("XEP-0220 dialback authenticates both directions", timeout=90,
                targets=("starling",))
async def dialback(ctx):
    fed = federation(ctx)
    async with await pair(ctx) as (sam, eve):
        await chat(sam, eve, "dialback s->e")
        await chat(eve, sam, "dialback e->s")
    s_log = fed.starling.log_tail(2_000_000)
    e_log = fed.ejabberd.log_tail(2_000_000)
    check(f"authenticated with dialback domain={E_DOMAIN}" in s_log,
          "Starling did not log ejabberd's stream as authenticated with dialback")
    check("outgoing stream established" in s_log,
          "Starling logged no established outgoing stream")
    # Starling -> ejabberd: ejabberd verified Starling's key with Starling's authoritative
    # side; ejabberd -> Starling: Starling verified ejabberd's, and ejabberd saw it accepted.
    check(f"Accepted inbound s2s dialback authentication {S_DOMAIN} -> {E_DOMAIN}" in e_log,
          "ejabberd did not accept Starling's stream with dialback")
    check(f"Accepted outbound s2s dialback authentication {E_DOMAIN} -> {S_DOMAIN}" in e_log,
          "ejabberd's stream to Starling was not accepted with dialback")


@suite.scenario("XEP-0199 IQ ping across servers: remote server and remote client, both ways",
                timeout=90, targets=("starling",))
async def ping(ctx):
    async with await pair(ctx) as (sam, eve):
        for src, target in ((sam, E_DOMAIN), (eve, S_DOMAIN),
                            (sam, eve.boundjid.full), (eve, sam.boundjid.full)):
            res = await src.plugin["xep_0199"].send_ping(target, timeout=TIMEOUT)
            check(res["type"] == "result" and res["from"].full == target,
                  f"{src.boundjid} ping {target}: {res}")


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


@suite.scenario("RFC 6121 §3 subscription handshake across servers, both ways, then presence",
                timeout=120, targets=("starling",))
async def subscription(ctx):
    async with await pair(ctx, roster=True) as (sam, eve):
        s, e = sam.boundjid.bare, eve.boundjid.bare
        for src, dst, src_bare, dst_bare in ((sam, eve, s, e), (eve, sam, e, s)):
            src.send_presence(pto=dst_bare, ptype="subscribe")
            req = await dst.expect_presence(lambda p: p["type"] == "subscribe"
                                            and p["from"].bare == src_bare, TIMEOUT)
            check(req["to"].bare == dst_bare, f"subscribe to {req['to']}")
            dst.send_presence(pto=src_bare, ptype="subscribed")
            await src.expect_presence(lambda p: p["type"] == "subscribed"
                                      and p["from"].bare == dst_bare, TIMEOUT)
            await src.expect_presence(lambda p: p["type"] in ("", "available")
                                      and p["from"].bare == dst_bare, TIMEOUT)
        await wait_for(lambda: roster_sub(sam, e) == "both",
                       f"sam's roster item for eve to be 'both' (is {roster_sub(sam, e)})")
        await wait_for(lambda: roster_sub(eve, s) == "both",
                       f"eve's roster item for sam to be 'both' (is {roster_sub(eve, s)})")
        eve.send_presence(pstatus="after subscribing")
        await sam.expect_presence(lambda p: p["from"].bare == e
                                  and p["status"] == "after subscribing", TIMEOUT)


@suite.scenario("XEP-0045: an ejabberd user in a Starling room", timeout=120,
                targets=("starling",))
async def ejabberd_user_in_starling_room(ctx):
    async with await pair(ctx) as (sam, eve):
        room = f"fed{secrets.token_hex(3)}@{S_MUC}"
        await rooms_across(ctx, sam, eve, room, "sam", "eve")


@suite.scenario("XEP-0045: a Starling user in an ejabberd room", timeout=120,
                targets=("starling",))
async def starling_user_in_ejabberd_room(ctx):
    async with await pair(ctx) as (sam, eve):
        room = f"fed{secrets.token_hex(3)}@{E_MUC}"
        await rooms_across(ctx, eve, sam, room, "eve", "sam")


if __name__ == "__main__":
    suite.main()
