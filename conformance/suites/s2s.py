"""Federation interop: Starling <-> a private Debian Prosody over loopback (RFC 6120 §8,
XEP-0220 dialback with XEP-0185 keys, XEP-0178 SASL EXTERNAL, RFC 6121 across servers,
XEP-0199 to remote entities, XEP-0045 rooms on either side with occupants from the other).

Every scenario runs twice, on two separate federations:
- "dialback": both servers have self-signed certificates, so Server Dialback is what
  authenticates every stream;
- "EXTERNAL": a CA made for the run issues certificates (serverAuth only, as public CAs do
  today) for starling.example, conference.starling.example, prosody.test and
  rooms.prosody.test; each server trusts that CA, Prosody has `s2s_secure_auth = true`, and
  the last scenario asserts from both servers' logs that every stream in either direction
  was authenticated with SASL EXTERNAL and none with dialback.

No real DNS is consulted. Starling is `starling.example` (MUC: `conference.starling.example`)
and reaches `prosody.test` and its MUC component `rooms.prosody.test` through `[s2s.routes]`.
Prosody resolves names itself with libunbound, pointed (`unbound.resolvconf`) at a tiny DNS
server this suite runs on a random 127.53.x.y:53 (hence root), which publishes
`_xmpp-server._tcp` SRV records for Starling's two domains -> Starling's ephemeral s2s port,
and A records -> 127.0.0.1. Why not a hosts file and a .test name for Starling too: a hosts
file cannot carry SRV records (so the peer would have to be on 5269, which a system Prosody
may hold on every address), and libunbound answers NXDOMAIN for all of .test itself
(RFC 6761 default local zone), so Starling's domain is under .example, which it forwards.
"""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dnslib  # noqa: E402

from xmpptest.harness import Skip, Suite, check  # noqa: E402
from xmpptest.servers import LOOPBACK, ProsodyServer, StarlingServer  # noqa: E402
from xmpptest.slix import clients  # noqa: E402
from xmpptest.dns import DnsServer  # noqa: E402
from xmpptest.federation import (  # noqa: E402
    TIMEOUT, chat, login, muc_across, ping_across, subscribe_both_ways, switch_mode)


S_DOMAIN, P_DOMAIN = "starling.example", "prosody.test"
S_MUC, P_MUC = f"conference.{S_DOMAIN}", f"rooms.{P_DOMAIN}"
DIALBACK, EXTERNAL = "dialback", "EXTERNAL"

suite = Suite("s2s", "federation with a private Prosody, once with dialback and once with "
                     "SASL EXTERNAL: chat, presence, subscriptions, IQ ping and MUC rooms on "
                     "both sides across servers")


class Federation:
    def __init__(self, mode, starling: StarlingServer, prosody: ProsodyServer, dns: DnsServer):
        self.mode, self.starling, self.prosody, self.dns = mode, starling, prosody, dns


def federation(ctx, mode: str) -> Federation:
    """Starling and Prosody federating over loopback in `mode`, started on first use and
    shared by that mode's scenarios; the other mode's pair is stopped first (one at a
    time keeps the run light)."""
    if ctx.target != "starling":
        raise Skip("the federation suite checks Starling against Prosody")
    feds = ctx.__dict__.setdefault("_s2s_federations", {})
    if mode in feds:
        return feds[mode]
    if not DnsServer.can_bind():
        raise Skip("needs root: Prosody's resolver only talks to a DNS server on port 53")
    dns, ca = switch_mode(ctx, feds, mode, "prosody", external=mode == EXTERNAL)
    p_tls, s_tls, ca_file = {}, "", None
    if ca is not None:
        p_crt, p_key = ca.issue([P_DOMAIN, P_MUC])
        s_crt, s_key = ca.issue([S_DOMAIN, S_MUC])
        p_tls = dict(certificate=(p_crt, p_key), cafile=ca.ca_file, s2s_secure_auth=True)
        s_tls = f'[tls]\ncertificate = "{s_crt}"\nkey = "{s_key}"\n'
        ca_file = str(ca.ca_file)
    prosody = ProsodyServer(
        domain=P_DOMAIN, name=f"s2s-{mode.lower()}", s2s=True, log_level="debug",
        extra_config=f'unbound = {{ resolvconf = "{dns.resolv_conf}", hoststxt = false }}',
        components=f'''
            Component "{P_MUC}" "muc"
                restrict_room_creation = false
            ''', **p_tls)
    prosody.start()
    ctx.add_server(f"prosody-{mode}", prosody)
    route = f"{LOOPBACK}:{prosody.s2s_port}"
    starling = StarlingServer(ctx.binary, domain=S_DOMAIN, name=f"s2s-{mode.lower()}", s2s=True,
                              s2s_routes={P_DOMAIN: route, P_MUC: route},
                              s2s_ca_file=ca_file,
                              extra_config=s_tls)
    starling.start()
    ctx.add_server(f"starling-{mode}", starling)
    records = []
    for d in (S_DOMAIN, S_MUC):
        records += [
            (f"_xmpp-server._tcp.{d}", "SRV",
             dnslib.SRV(priority=0, weight=0, port=starling.s2s_port, target=f"{d}.")),
            (d, "A", dnslib.A(LOOPBACK)),
        ]
    dns.set_records(records)
    ctx.note(f"{mode}: starling {S_DOMAIN} s2s {starling.s2s_port}, prosody {P_DOMAIN} "
             f"s2s {prosody.s2s_port}, DNS {dns.ip}:53")
    feds[mode] = fed = Federation(mode, starling, prosody, dns)
    return fed


async def pair(ctx, mode, *, roster=False):
    """(alice on Starling, pat on Prosody): fresh accounts, logged in, available."""
    fed = federation(ctx, mode)
    a_jid, a_pw = ctx.user(fed.starling)
    p_jid, p_pw = ctx.user(fed.prosody)
    return clients(login(fed.starling, a_jid, a_pw, roster=roster),
                   login(fed.prosody, p_jid, p_pw, roster=roster))


# ---- scenarios, registered once per mode ------------------------------------------------------

def scenarios(mode: str):
    tag = f"[{mode}]"

    @suite.scenario(f"{tag} RFC 6120 §8 chat Starling -> Prosody (first stanza opens the s2s "
                    "stream)", timeout=90)
    async def chat_s_to_p(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            await chat(alice, pat, "starling to prosody")

    @suite.scenario(f"{tag} RFC 6120 §8 chat Prosody -> Starling", timeout=90)
    async def chat_p_to_s(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            await chat(pat, alice, "prosody to starling")
            await chat(alice, pat, "and back")

    @suite.scenario(f"{tag} XEP-0199 IQ ping across servers: remote server and remote client, "
                    "both ways", timeout=90)
    async def ping(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            await ping_across(alice, pat)

    @suite.scenario(f"{tag} RFC 6121 §4.6 directed presence both ways", timeout=90)
    async def directed_presence(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            for src, dst, status in ((alice, pat, "from starling"), (pat, alice, "from prosody")):
                src.send_presence(pto=dst.boundjid.bare, pstatus=status)
                p = await dst.expect_presence(lambda p: p["from"].full == src.boundjid.full
                                              and p["status"] == status, TIMEOUT)
                check(p["type"] in ("", "available"), f"presence type {p['type']}")

    @suite.scenario(f"{tag} RFC 6121 §3 subscription handshake across servers, both ways, then "
                    "presence", timeout=120)
    async def subscription(ctx):
        async with await pair(ctx, mode, roster=True) as (alice, pat):
            await subscribe_both_ways(alice, pat)

    @suite.scenario(f"{tag} XEP-0045 Prosody user in a room on {S_MUC}: presence, 110, "
                    "disco, real JID, groupchat both ways, leave, disconnect", timeout=120)
    async def prosody_user_in_starling_room(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            room = f"s{os.urandom(3).hex()}@{S_MUC}"
            await muc_across(alice, pat, room, "alice", "pat")

    @suite.scenario(f"{tag} XEP-0045 Starling user in a room on {P_MUC}: presence, 110, "
                    "disco, real JID, groupchat both ways, leave, disconnect", timeout=120)
    async def starling_user_in_prosody_room(ctx):
        async with await pair(ctx, mode) as (alice, pat):
            room = f"p{os.urandom(3).hex()}@{P_MUC}"
            await muc_across(pat, alice, room, "pat", "alice")

    if mode == DIALBACK:
        @suite.scenario(f"{tag} XEP-0220 dialback both ways, MUC domains included; XEP-0185 "
                        "keys verified by each authoritative side", timeout=90)
        async def dialback(ctx):
            fed = federation(ctx, mode)
            async with await pair(ctx, mode) as (alice, pat):  # both directions carry traffic
                await chat(alice, pat, "dialback s->p")
                await chat(pat, alice, "dialback p->s")
            check_dialback(ctx, fed)
    else:
        @suite.scenario(f"{tag} XEP-0178 SASL EXTERNAL (the run's CA) on every stream both "
                        "ways, MUC domains included; no dialback", timeout=90)
        async def external(ctx):
            fed = federation(ctx, mode)
            async with await pair(ctx, mode) as (alice, pat):
                await chat(alice, pat, "external s->p")
                await chat(pat, alice, "external p->s")
            check_external(ctx, fed)


# Stream pairs (from, to) the scenarios above make: user to user, and each side's users to
# the other side's MUC service and back.
S_TO_P = [(S_DOMAIN, P_DOMAIN), (S_MUC, P_DOMAIN), (S_DOMAIN, P_MUC)]
P_TO_S = [(P_DOMAIN, S_DOMAIN), (P_DOMAIN, S_MUC), (P_MUC, S_DOMAIN)]


def starling_out(s_log, local, remote, auth):
    """Starling's log line for an outgoing stream (local -> remote) authenticated by `auth`."""
    pat = re.compile(rf"s2s-out\{{local={re.escape(local)} remote={re.escape(remote)}\}}"
                     rf".*outgoing stream established auth={re.escape(auth)}")
    return next((ln for ln in s_log.splitlines() if pat.search(ln)), None)


def starling_in(s_log, remote, local, auth):
    """Starling's log line for an incoming stream from `remote` authenticated by `auth`."""
    needle = f"authenticated with {auth} domain={remote} local={local}"
    return next((ln for ln in s_log.splitlines() if needle in ln), None)


def check_dialback(ctx, fed):
    s_log = fed.starling.log_tail(5_000_000)
    p_log = fed.prosody.log_tail(20_000_000)

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
    for local, remote in S_TO_P:
        line = received("s2sin_unauthed", "result", **{"from": local, "to": remote})
        check(line, f"Prosody never received Starling's <db:result/> ({local} -> {remote})")
        ctx.note(line.split("\t")[-1])
        check(f"connection {local}->{remote} is now authenticated for {local}" in p_log,
              f"Prosody did not authenticate Starling's stream {local} -> {remote}")
        line = starling_out(s_log, local, remote, "dialback")
        check(line, f"Starling logged no dialback-authenticated stream {local} -> {remote}")
    line = received("s2sout", "verify", type="valid", **{"from": S_DOMAIN}) or \
        received("s2sout_unauthed", "verify", type="valid", **{"from": S_DOMAIN})
    check(line, "Starling never answered Prosody's <db:verify/> with type='valid'")
    ctx.note(line.split("\t")[-1])
    # Prosody -> Starling: Prosody sends <db:result/>; Starling verifies it with Prosody
    # (<db:verify/> on a connection of its own) and answers <db:result type='valid'/>.
    for remote, local in P_TO_S:
        line = received("s2sin_unauthed", "verify", **{"from": local, "to": remote}) or \
            received("s2sin", "verify", **{"from": local, "to": remote})
        check(line, f"Starling never asked Prosody to <db:verify/> {remote}'s key")
        ctx.note(line.split("\t")[-1])
        line = received("s2sout_unauthed", "result", type="valid",
                        **{"from": local, "to": remote})
        check(line, f"Starling never accepted {remote}'s dialback key for {local}")
        check(starling_in(s_log, remote, local, "dialback"),
              f"Starling did not log {remote} -> {local} as authenticated with dialback")
        check(f"connection {remote}->{local} is now authenticated for {local}" in p_log,
              f"Prosody's outgoing stream {remote} -> {local} was not authenticated")
    check("authenticated with SASL EXTERNAL" not in s_log,
          "SASL EXTERNAL was used although no certificate can be verified in this run")


def check_external(ctx, fed):
    s_log = fed.starling.log_tail(5_000_000)
    p_log = fed.prosody.log_tail(20_000_000)
    for local, remote in S_TO_P:
        # Starling authenticates to Prosody with its certificate
        line = starling_out(s_log, local, remote, "SASL EXTERNAL")
        check(line, f"Starling logged no SASL EXTERNAL outgoing stream {local} -> {remote}")
        ctx.note(line.split(": ", 1)[-1][:160])
        check(re.search(rf"^{re.escape(remote)}:saslauth\s+info\s+Accepting SASL EXTERNAL "
                        rf"identity from {re.escape(local)}$", p_log, re.M),
              f"Prosody did not accept SASL EXTERNAL from {local} on {remote}")
        check(f"connection {local}->{remote} is now authenticated for {local}" in p_log,
              f"Prosody did not authenticate Starling's stream {local} -> {remote}")
    for remote, local in P_TO_S:
        # Prosody authenticates to Starling with its certificate
        line = starling_in(s_log, remote, local, "SASL EXTERNAL")
        check(line, f"Starling did not log {remote} -> {local} as authenticated with SASL "
                    "EXTERNAL")
        ctx.note(line.split(": ", 1)[-1][:160])
        check(re.search(rf"^{re.escape(remote)}:saslauth\s+debug\s+SASL EXTERNAL with "
                        rf"{re.escape(local)} succeeded$", p_log, re.M),
              f"Prosody did not log SASL EXTERNAL success for its stream {remote} -> {local}")
        check(f"connection {remote}->{local} is now authenticated for {local}" in p_log,
              f"Prosody's outgoing stream {remote} -> {local} was not authenticated")
    check("auth=dialback" not in s_log and "authenticated with dialback" not in s_log,
          "Starling authenticated a stream with dialback in the EXTERNAL run")
    check(not re.search(r"Received\[[a-z_]+\]: <(db:)?(result|verify)\b", p_log),
          "Prosody received a dialback element in the EXTERNAL run")
    check("SASL EXTERNAL refused" not in s_log
          and not re.search(r"SASL EXTERNAL with \S+ failed", p_log),
          "a SASL EXTERNAL attempt failed")


scenarios(DIALBACK)
scenarios(EXTERNAL)

if __name__ == "__main__":
    suite.main()
