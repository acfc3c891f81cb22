"""Federation interop: Starling <-> a private Debian Prosody over loopback (RFC 6120 §8,
XEP-0220 dialback with XEP-0185 keys, RFC 6121 across servers, XEP-0199 to remote entities).

No real DNS is consulted. Starling is `starling.example` and reaches `prosody.test` through
`[s2s.routes]`. Prosody resolves names itself with libunbound, pointed (`unbound.resolvconf`)
at a tiny DNS server this suite runs on a random 127.53.x.y:53 (hence root), which publishes
`_xmpp-server._tcp.starling.example` SRV -> Starling's ephemeral s2s port and
`starling.example` A -> 127.0.0.1. Why not a hosts file and a .test name for Starling too: a
hosts file cannot carry SRV records (so the peer would have to be on 5269, which a system
Prosody may hold on every address), and libunbound answers NXDOMAIN for all of .test itself
(RFC 6761 default local zone), so Starling's domain is under .example, which it forwards.
Both servers have self-signed certificates, so dialback is what authenticates the streams.
"""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnslib  # noqa: E402

from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import LOOPBACK, ProsodyServer, StarlingServer  # noqa: E402
from xmpptest.slix import Client, LoginFailed, clients  # noqa: E402
from xmpptest.dns import DnsServer  # noqa: E402

import asyncio  # noqa: E402

S_DOMAIN, P_DOMAIN = "starling.example", "prosody.test"
TIMEOUT = 20

suite = Suite("s2s", "federation with a private Prosody: dialback both ways, chat, presence, "
                     "subscriptions and IQ ping across servers")


class Federation:
    def __init__(self, starling: StarlingServer, prosody: ProsodyServer, dns: DnsServer):
        self.starling, self.prosody, self.dns = starling, prosody, dns


def federation(ctx) -> Federation:
    """Starling and Prosody federating over loopback, started on first use and shared."""
    if ctx.target != "starling":
        raise Skip("the federation suite checks Starling against Prosody")
    fed = getattr(ctx, "_s2s_federation", None)
    if fed is not None:
        return fed
    if not DnsServer.can_bind():
        raise Skip("needs root: Prosody's resolver only talks to a DNS server on port 53")
    dns = DnsServer([]).start()
    ctx.add_server("dns", dns)
    prosody = ProsodyServer(domain=P_DOMAIN, name="s2s", s2s=True, log_level="debug",
                            extra_config=f'unbound = {{ resolvconf = "{dns.resolv_conf}", '
                                         f'hoststxt = false }}')
    prosody.start()
    ctx.add_server("prosody", prosody)
    starling = StarlingServer(ctx.binary, domain=S_DOMAIN, name="s2s", s2s=True,
                              s2s_routes={P_DOMAIN: f"{LOOPBACK}:{prosody.s2s_port}"})
    starling.start()
    ctx.add_server("starling", starling)
    dns.set_records([
        (f"_xmpp-server._tcp.{S_DOMAIN}", "SRV",
         dnslib.SRV(priority=0, weight=0, port=starling.s2s_port, target=f"{S_DOMAIN}.")),
        (S_DOMAIN, "A", dnslib.A(LOOPBACK)),
    ])
    ctx.note(f"starling {S_DOMAIN} s2s {starling.s2s_port}, prosody {P_DOMAIN} "
             f"s2s {prosody.s2s_port}, DNS {dns.ip}:53")
    ctx._s2s_federation = fed = Federation(starling, prosody, dns)
    return fed


async def login(server, jid, pw, *, roster=False) -> Client:
    """slixmpp that leaves subscription decisions to the scenario."""
    c = Client(jid, pw)
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


async def pair(ctx, *, roster=False):
    """(alice on Starling, pat on Prosody): fresh accounts, logged in, available."""
    fed = federation(ctx)
    a_jid, a_pw = ctx.user(fed.starling)
    p_jid, p_pw = ctx.user(fed.prosody)
    return clients(login(fed.starling, a_jid, a_pw, roster=roster),
                   login(fed.prosody, p_jid, p_pw, roster=roster))


async def chat(src, dst, text):
    src.send_message(mto=dst.boundjid.full, mbody=text, mtype="chat")
    m = await dst.expect_message(lambda m: m["body"] == text, TIMEOUT)
    check(m["from"].full == src.boundjid.full, f"from {m['from']}, expected {src.boundjid.full}")
    check(m["type"] == "chat", f"type {m['type']}")


# ---- scenarios ---------------------------------------------------------------------------------

@suite.scenario("RFC 6120 §8 chat Starling -> Prosody (first stanza opens the s2s stream)",
                timeout=90)
async def chat_s_to_p(ctx):
    async with await pair(ctx) as (alice, pat):
        await chat(alice, pat, "starling to prosody")


@suite.scenario("RFC 6120 §8 chat Prosody -> Starling", timeout=90)
async def chat_p_to_s(ctx):
    async with await pair(ctx) as (alice, pat):
        await chat(pat, alice, "prosody to starling")
        await chat(alice, pat, "and back")


@suite.scenario("XEP-0220 dialback both ways, XEP-0185 keys verified by each authoritative side",
                timeout=90)
async def dialback(ctx):
    fed = federation(ctx)
    async with await pair(ctx) as (alice, pat):  # make sure both directions carried traffic
        await chat(alice, pat, "dialback s->p")
        await chat(pat, alice, "dialback p->s")
    s_log = fed.starling.log_tail(2_000_000)
    p_log = fed.prosody.log_tail(5_000_000)

    def received(state, tag, **attrs):
        """Prosody's debug log of a dialback element it received in this session state."""
        pat_ = re.compile(rf"Received\[{re.escape(state)}\]: <{tag} [^>]*"
                          rf"xmlns='jabber:server:dialback'|Received\[{re.escape(state)}\]: "
                          rf"<{tag} xmlns='jabber:server:dialback'")
        for line in p_log.splitlines():
            m = pat_.search(line)
            if m and all(f"{k}='{v}'" in line for k, v in attrs.items()):
                return line
        return None

    # Starling -> Prosody: Starling sends <db:result/> with its key; Prosody asks Starling's
    # authoritative side (<db:verify/>), Starling answers valid (its XEP-0185 key checks out).
    line = received("s2sin_unauthed", "result", **{"from": S_DOMAIN, "to": P_DOMAIN})
    check(line, "Prosody never received Starling's <db:result/> (Starling -> Prosody dialback)")
    ctx.note(line.split("\t")[-1])
    line = received("s2sout", "verify", type="valid", **{"from": S_DOMAIN}) or \
        received("s2sout_unauthed", "verify", type="valid", **{"from": S_DOMAIN})
    check(line, "Starling never answered Prosody's <db:verify/> with type='valid'")
    ctx.note(line.split("\t")[-1])
    check(f"connection {S_DOMAIN}->{P_DOMAIN} is now authenticated for {S_DOMAIN}" in p_log,
          "Prosody did not authenticate Starling's stream")
    check("outgoing stream established" in s_log, "Starling logged no established outgoing "
          "stream")
    # Prosody -> Starling: Prosody sends <db:result/>; Starling verifies it with Prosody
    # (<db:verify/> on a connection of its own) and answers <db:result type='valid'/>.
    line = received("s2sin_unauthed", "verify", **{"from": S_DOMAIN, "to": P_DOMAIN}) or \
        received("s2sin", "verify", **{"from": S_DOMAIN, "to": P_DOMAIN})
    check(line, "Starling never asked Prosody to <db:verify/> Prosody's key")
    ctx.note(line.split("\t")[-1])
    line = received("s2sout_unauthed", "result", type="valid", **{"from": S_DOMAIN})
    check(line, "Starling never accepted Prosody's dialback key (<db:result type='valid'/>)")
    ctx.note(line.split("\t")[-1])
    check(f"authenticated with dialback domain={P_DOMAIN}" in s_log,
          "Starling did not log Prosody's stream as authenticated with dialback")
    check(f"connection {P_DOMAIN}->{S_DOMAIN} is now authenticated for {S_DOMAIN}" in p_log,
          "Prosody's outgoing stream was not authenticated")


@suite.scenario("XEP-0199 IQ ping across servers: remote server and remote client, both ways",
                timeout=90)
async def ping(ctx):
    async with await pair(ctx) as (alice, pat):
        for src, target in ((alice, P_DOMAIN), (pat, S_DOMAIN),
                            (alice, pat.boundjid.full), (pat, alice.boundjid.full)):
            res = await src.plugin["xep_0199"].send_ping(target, timeout=TIMEOUT)
            check(res["type"] == "result" and res["from"].full == target,
                  f"{src.boundjid} ping {target}: {res}")


@suite.scenario("RFC 6121 §4.6 directed presence both ways", timeout=90)
async def directed_presence(ctx):
    async with await pair(ctx) as (alice, pat):
        for src, dst, status in ((alice, pat, "from starling"), (pat, alice, "from prosody")):
            src.send_presence(pto=dst.boundjid.bare, pstatus=status)
            p = await dst.expect_presence(lambda p: p["from"].full == src.boundjid.full
                                          and p["status"] == status, TIMEOUT)
            check(p["type"] in ("", "available"), f"presence type {p['type']}")


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
                timeout=120)
async def subscription(ctx):
    async with await pair(ctx, roster=True) as (alice, pat):
        a, p = alice.boundjid.bare, pat.boundjid.bare
        for src, dst, src_bare, dst_bare in ((alice, pat, a, p), (pat, alice, p, a)):
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
        await wait_for(lambda: roster_sub(alice, p) == "both",
                       f"alice's roster item for pat to be 'both' (is {roster_sub(alice, p)})")
        await wait_for(lambda: roster_sub(pat, a) == "both",
                       f"pat's roster item for alice to be 'both' (is {roster_sub(pat, a)})")
        # a presence broadcast now reaches the subscriber on the other server
        pat.send_presence(pstatus="after subscribing")
        await alice.expect_presence(lambda s: s["from"].bare == p
                                    and s["status"] == "after subscribing", TIMEOUT)
        alice.send_presence(pstatus="me too")
        await pat.expect_presence(lambda s: s["from"].bare == a and s["status"] == "me too",
                                  TIMEOUT)


if __name__ == "__main__":
    suite.main()
