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

import os
import secrets
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnslib  # noqa: E402

from xmpptest import ejabberd  # noqa: E402
from xmpptest.dns import DnsServer  # noqa: E402
from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import LOOPBACK, StarlingServer  # noqa: E402
from xmpptest.federation import (  # noqa: E402
    chat, login, muc_across, ping_across, subscribe_both_ways)
from xmpptest.slix import clients  # noqa: E402

S_DOMAIN, E_DOMAIN = "starling.example", "ejabberd.test"
S_MUC, E_MUC = f"conference.{S_DOMAIN}", f"conference.{E_DOMAIN}"

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


async def pair(ctx, *, roster=False):
    """(sam on Starling, eve on ejabberd): fresh accounts, logged in, available."""
    fed = federation(ctx)
    s_jid, s_pw = ctx.user(fed.starling)
    e_jid, e_pw = ctx.user(fed.ejabberd)
    return clients(login(fed.starling, s_jid, s_pw, roster=roster),
                   login(fed.ejabberd, e_jid, e_pw, roster=roster))


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
    check(f"remote={E_DOMAIN}}}: starling::s2s::outgoing: outgoing stream established "
          "auth=dialback" in s_log, "Starling's stream to ejabberd was not set up by dialback")
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
        await ping_across(sam, eve)


@suite.scenario("RFC 6121 §3 subscription handshake across servers, both ways, then presence",
                timeout=120, targets=("starling",))
async def subscription(ctx):
    async with await pair(ctx, roster=True) as (sam, eve):
        await subscribe_both_ways(sam, eve)


@suite.scenario("XEP-0045 ejabberd user in a Starling room: disco, presence, 110, real JID, "
                "groupchat both ways, leave, disconnect", timeout=120,
                targets=("starling",))
async def ejabberd_user_in_starling_room(ctx):
    async with await pair(ctx) as (sam, eve):
        room = f"fed{secrets.token_hex(3)}@{S_MUC}"
        await muc_across(sam, eve, room, "sam", "eve")


@suite.scenario("XEP-0045 Starling user in an ejabberd room: disco, presence, 110, real JID, "
                "groupchat both ways, leave, disconnect", timeout=120,
                targets=("starling",))
async def starling_user_in_ejabberd_room(ctx):
    async with await pair(ctx) as (sam, eve):
        room = f"fed{secrets.token_hex(3)}@{E_MUC}"
        await muc_across(eve, sam, room, "eve", "sam")


if __name__ == "__main__":
    suite.main()
