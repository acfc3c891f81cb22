"""Federation interop: Starling <-> a private Debian ejabberd 23.01 over loopback (RFC 6120 §8,
XEP-0220 dialback, XEP-0178 SASL EXTERNAL, RFC 6121 across servers, XEP-0199 to remote
entities, XEP-0045 rooms on either side with occupants from the other).

Every scenario runs twice, on two separate federations (one at a time):
- "dialback": self-signed certificates on both sides, so Server Dialback authenticates;
- "EXTERNAL": a CA made for the run issues the certificates, each server trusts it, and
  ejabberd runs without mod_s2s_dialback, so certificates are the only way in; the last
  scenario checks both servers' logs for SASL EXTERNAL in both directions. ejabberd's
  certificate has the serverAuth usage only (as public CAs issue them); Starling's also has
  clientAuth, because ejabberd 23.01 refuses a client certificate without it.

No real DNS is consulted. Starling is `starling.example` and reaches `ejabberd.test` (and its
MUC service) through `[s2s.routes]`. ejabberd's Erlang resolver reads an inetrc that names only
this suite's DNS server (on 127.53.x.y:53), which publishes `_xmpp-server._tcp` SRV records for
Starling's domain and MUC domain whose target is 127.0.0.1 itself (ejabberd resolves targets
with the system's getaddrinfo). ejabberd runs as its own user, hence root.

Run alone:  conformance/.venv/bin/python conformance/suites/s2s_ejabberd.py [--only REGEX] [-v]
"""

import os
import secrets
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnslib  # noqa: E402

from xmpptest import ejabberd  # noqa: E402
from xmpptest.federation import (  # noqa: E402
    chat, login, muc_across, ping_across, subscribe_both_ways, switch_mode)
from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import LOOPBACK, StarlingServer  # noqa: E402
from xmpptest.slix import clients  # noqa: E402

S_DOMAIN, E_DOMAIN = "starling.example", "ejabberd.test"
S_MUC, E_MUC = f"conference.{S_DOMAIN}", f"conference.{E_DOMAIN}"
DIALBACK, EXTERNAL = "dialback", "EXTERNAL"

suite = Suite("s2s_ejabberd", "federation with a private ejabberd, with dialback and with SASL "
                              "EXTERNAL: chat, presence, subscriptions, IQ ping and rooms "
                              "across servers")


class Federation:
    def __init__(self, starling, ejabberd_server):
        self.starling, self.ejabberd = starling, ejabberd_server


def federation(ctx, mode: str) -> Federation:
    """Starling and ejabberd federating in `mode`, started on first use and shared by that
    mode's scenarios; the other mode's pair is stopped first."""
    if ctx.target != "starling":
        raise Skip("the federation suite checks Starling against ejabberd")
    feds = ctx.__dict__.setdefault("_ej_federations", {})
    if mode in feds:
        return feds[mode]
    if not ejabberd.available():
        raise Skip("needs root and Debian's ejabberd (conformance/run installs it)")
    dns, ca = switch_mode(ctx, feds, mode, "ejabberd", external=mode == EXTERNAL)
    e_tls, s_tls, ca_file = {}, "", None
    if ca is not None:
        e_tls = dict(certificate=ca.issue([E_DOMAIN, E_MUC]), cafile=ca.ca_file,
                     dialback=False)
        # ejabberd 23.01 refuses a client certificate without the clientAuth usage
        # ("unsupported certificate purpose"), so Starling's carries both; ejabberd's has
        # serverAuth only, as public CAs issue them now, which Starling must accept.
        s_crt, s_key = ca.issue([S_DOMAIN, S_MUC], client_auth=True)
        s_tls = f'[tls]\ncertificate = "{s_crt}"\nkey = "{s_key}"\n'
        ca_file = str(ca.ca_file)
    ej = ejabberd.EjabberdServer(domain=E_DOMAIN, name=f"s2s-{mode.lower()}",
                                 dns=(dns.ip, 53), muc=True, **e_tls)
    ej.start()
    ctx.add_server(f"ejabberd-{mode}", ej)
    route = f"{LOOPBACK}:{ej.s2s_port}"
    starling = StarlingServer(ctx.binary, domain=S_DOMAIN, name=f"s2s-ej-{mode.lower()}",
                              s2s=True, s2s_routes={E_DOMAIN: route, E_MUC: route},
                              s2s_ca_file=ca_file, extra_config=s_tls)
    starling.start()
    ctx.add_server(f"starling-{mode}", starling)
    # ejabberd looks the SRV target's address up with the system resolver, which knows
    # nothing of test names: the target is the address itself.
    dns.set_records([
        (f"_xmpp-server._tcp.{name}", "SRV",
         dnslib.SRV(priority=0, weight=0, port=starling.s2s_port, target=f"{LOOPBACK}."))
        for name in (S_DOMAIN, S_MUC)])
    ctx.note(f"{mode}: starling {S_DOMAIN} s2s {starling.s2s_port}, ejabberd {E_DOMAIN} "
             f"s2s {ej.s2s_port}, DNS {dns.ip}:53")
    feds[mode] = fed = Federation(starling, ej)
    return fed


async def pair(ctx, mode, *, roster=False):
    """(sam on Starling, eve on ejabberd): fresh accounts, logged in, available."""
    fed = federation(ctx, mode)
    s_jid, s_pw = ctx.user(fed.starling)
    e_jid, e_pw = ctx.user(fed.ejabberd)
    return clients(login(fed.starling, s_jid, s_pw, roster=roster),
                   login(fed.ejabberd, e_jid, e_pw, roster=roster))


def check_auth(fed, mode):
    """Both servers' logs agree on how each direction was authenticated."""
    s_log = fed.starling.log_tail(5_000_000)
    e_log = fed.ejabberd.log_tail(5_000_000)
    # ejabberd's words for it: "dialback" or "EXTERNAL"
    how = "dialback" if mode == DIALBACK else "EXTERNAL"
    check(f"Accepted inbound s2s {how} authentication {S_DOMAIN} -> {E_DOMAIN}" in e_log,
          f"ejabberd did not accept Starling's stream with {how}")
    check(f"Accepted outbound s2s {how} authentication {E_DOMAIN} -> {S_DOMAIN}" in e_log,
          f"ejabberd's stream to Starling was not accepted with {how}")
    auth = "dialback" if mode == DIALBACK else "SASL EXTERNAL"
    check(f"remote={E_DOMAIN}}}: starling::s2s::outgoing: outgoing stream established "
          f"auth={auth}" in s_log, f"Starling's stream to ejabberd was not set up by {auth}")
    check(f"authenticated with {auth} domain={E_DOMAIN}" in s_log,
          f"Starling did not log ejabberd's stream as authenticated with {auth}")
    other = "SASL EXTERNAL" if mode == DIALBACK else "dialback"
    check(f"authenticated with {other}" not in s_log and f"auth={other}" not in s_log,
          f"Starling logged {other} in the {mode} run")


def scenarios(mode: str):
    tag = f"[{mode}]"

    @suite.scenario(f"{tag} RFC 6120 §8 chat Starling -> ejabberd (first stanza opens the s2s "
                    "stream)", timeout=90, targets=("starling",))
    async def chat_s_to_e(ctx):
        async with await pair(ctx, mode) as (sam, eve):
            await chat(sam, eve, "starling to ejabberd")

    @suite.scenario(f"{tag} RFC 6120 §8 chat ejabberd -> Starling, and back", timeout=90,
                    targets=("starling",))
    async def chat_e_to_s(ctx):
        async with await pair(ctx, mode) as (sam, eve):
            await chat(eve, sam, "ejabberd to starling")
            await chat(sam, eve, "and back")

    @suite.scenario(f"{tag} XEP-0199 IQ ping across servers: remote server and remote "
                    "client, both ways", timeout=90, targets=("starling",))
    async def ping(ctx):
        async with await pair(ctx, mode) as (sam, eve):
            await ping_across(sam, eve)

    @suite.scenario(f"{tag} RFC 6121 §3 subscription handshake across servers, both ways, "
                    "then presence", timeout=120, targets=("starling",))
    async def subscription(ctx):
        async with await pair(ctx, mode, roster=True) as (sam, eve):
            await subscribe_both_ways(sam, eve)

    @suite.scenario(f"{tag} XEP-0045 ejabberd user in a Starling room: disco, presence, 110, "
                    "real JID, groupchat both ways, leave, disconnect", timeout=120,
                    targets=("starling",))
    async def ejabberd_user_in_starling_room(ctx):
        async with await pair(ctx, mode) as (sam, eve):
            room = f"fed{secrets.token_hex(3)}@{S_MUC}"
            await muc_across(sam, eve, room, "sam", "eve")

    @suite.scenario(f"{tag} XEP-0045 Starling user in an ejabberd room: disco, presence, 110, "
                    "real JID, groupchat both ways, leave, disconnect", timeout=120,
                    targets=("starling",))
    async def starling_user_in_ejabberd_room(ctx):
        async with await pair(ctx, mode) as (sam, eve):
            room = f"fed{secrets.token_hex(3)}@{E_MUC}"
            await muc_across(eve, sam, room, "eve", "sam")

    what = ("XEP-0220 dialback" if mode == DIALBACK
            else "XEP-0178 SASL EXTERNAL (the run's CA; ejabberd without dialback)")

    @suite.scenario(f"{tag} {what} authenticated both directions, in both servers' logs",
                    timeout=90, targets=("starling",))
    async def authentication(ctx):
        fed = federation(ctx, mode)
        async with await pair(ctx, mode) as (sam, eve):
            await chat(sam, eve, f"{mode} s->e")
            await chat(eve, sam, f"{mode} e->s")
        check_auth(fed, mode)


scenarios(DIALBACK)
scenarios(EXTERNAL)

if __name__ == "__main__":
    suite.main()
