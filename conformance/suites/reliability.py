"""Reliability: XEP-0198 stream management with resumption, XEP-0313 message archive (with
XEP-0059 paging and XEP-0359 stanza ids) and XEP-0352 client state indication, driven by
slixmpp's own plugins (xep_0198, xep_0313, xep_0359, xep_0352).

Run alone:  conformance/.venv/bin/python conformance/suites/reliability.py [--only REGEX] [-v]
"""

import asyncio
import os
import secrets
import socket
import struct
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xmpptest.harness import Suite, check  # noqa: E402
from xmpptest.slix import TIMEOUT, Client, LoginFailed, clients, login  # noqa: E402

suite = Suite("reliability", "XEP-0198 resumption, XEP-0313 MAM + XEP-0059/0359, XEP-0352 CSI "
                             "with slixmpp's plugins")

NS_CLIENT = "jabber:client"
NS_SM = "urn:xmpp:sm:3"
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"

SM_PLUGINS = ("xep_0198",)
MAM_PLUGINS = ("xep_0059", "xep_0297", "xep_0313", "xep_0359")


def q(ns, name):
    return f"{{{ns}}}{name}"


def xml_of(stanza) -> str:
    return ET.tostring(stanza.xml if hasattr(stanza, "xml") else stanza, encoding="unicode")


async def wait_for(cond, what: str, timeout: float = TIMEOUT):
    """Poll a condition on client state (slixmpp counters) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Events:
    """Futures/lists for slixmpp events, registered before connecting."""

    def __init__(self, c: Client, *names: str):
        self.seen: dict[str, list] = {n: [] for n in names}
        self.waiters: dict[str, list[asyncio.Future]] = {n: [] for n in names}
        for n in names:
            c.add_event_handler(n, lambda data, n=n: self._fire(n, data))

    def _fire(self, name, data):
        self.seen[name].append(data)
        for f in self.waiters[name]:
            if not f.done():
                f.set_result(data)
        self.waiters[name].clear()

    async def next(self, name: str, timeout: float = TIMEOUT, *, already: int | None = None):
        """The `already`-th event (0-based) of that name, waiting for it if needed."""
        idx = len(self.seen[name]) if already is None else already
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.seen[name]) <= idx:
            f = loop.create_future()
            self.waiters[name].append(f)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no '{name}' event within {timeout}s")
            try:
                await asyncio.wait_for(f, remaining)
            except asyncio.TimeoutError:
                raise AssertionError(f"no '{name}' event within {timeout}s") from None
        return self.seen[name][idx]


async def start_client(server, jid, pw, *, plugins=(), events=(), sm_id=None,
                       timeout=TIMEOUT):
    """Like slix.login, but with event recorders registered before connecting (so
    <enabled/>, <failed/> and friends can't be missed) and an optional SM id to resume."""
    c = Client(jid, pw, plugins=plugins)
    ev = Events(c, *events)
    if sm_id is not None:
        c.plugin["xep_0198"].sm_id = sm_id
    c.connect(server.host, server.c2s_port)
    try:
        await asyncio.wait_for(asyncio.shield(c.session_started), timeout)
    except asyncio.TimeoutError:
        await c.close()
        raise LoginFailed("timeout", f"no session within {timeout}s")
    except LoginFailed:
        await c.close()
        raise
    c.send_presence()
    return c, ev


def cut_tcp(c: Client):
    """Cut the client's TCP connection abruptly: no </stream:stream>, no TLS close_notify,
    an RST (SO_LINGER 0) the way a phone losing its radio looks to the server at best."""
    sock = c.transport.get_extra_info("socket")
    check(sock is not None, "no socket under the slixmpp transport")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.transport.abort()


def body(m) -> str:
    return m["body"]


def stanza_ids(msg_xml, by: str) -> list[str]:
    return [e.get("id") for e in msg_xml.findall(q(NS_SID, "stanza-id")) if e.get("by") == by]


async def drain_settled(c: Client):
    """Round-trip a ping so everything the server sent before its answer has been read."""
    res = await c.plugin["xep_0199"].send_ping(c.boundjid.domain, timeout=TIMEOUT)
    check(res["type"] == "result", f"ping: {res}")


def queued(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def sm_ack_all(c: Client, what: str, timeout: float = TIMEOUT):
    """Ask the server for an <a/> until one covers everything we sent. (slixmpp writes <r/>
    with send_raw, which can overtake stanzas still in its send queue; so ask again while
    the answer falls short.)"""
    sm = c.plugin["xep_0198"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if sm.last_ack == sm.seq and not sm.unacked_queue and c.waiting_queue.empty():
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: no <a h/> covering all {sm.seq} sent stanzas within "
                                 f"{timeout}s (last ack {sm.last_ack}, "
                                 f"{len(sm.unacked_queue)} unacked, "
                                 f"{c.waiting_queue.qsize()} queued, "
                                 f"sender task {c._run_out_filters})")
        sm.request_ack()
        try:
            await wait_for(lambda: sm.last_ack == sm.seq and not sm.unacked_queue, what, 1.0)
        except AssertionError:
            pass


# ---- XEP-0198 ------------------------------------------------------------------------------

@suite.scenario("XEP-0198 §3 enable with resumption + §4 <r/>/<a/> counts match what was sent",
                timeout=60)
async def sm_enable_acks(ctx):
    server = ctx.server("main")
    (ja, pa), (jb, pb) = ctx.user(server), ctx.user(server)
    a, aev = await start_client(server, ja, pa, plugins=SM_PLUGINS,
                                events=("sm_enabled", "stanza_acked"))
    try:
        b, bev = await start_client(server, jb, pb, plugins=SM_PLUGINS,
                                    events=("sm_enabled", "stanza_acked"))
        try:
            for c, ev in ((a, aev), (b, bev)):
                enabled = await ev.next("sm_enabled", already=0)
                x = enabled.xml
                check(x.tag == q(NS_SM, "enabled"), f"not <enabled/>: {xml_of(x)}")
                check(x.get("resume") in ("true", "1"),
                      f"resumption asked for but not granted: {xml_of(x)}")
                check(x.get("id"), f"<enabled resume='true'/> without an id: {xml_of(x)}")
                check(c.plugin["xep_0198"].sm_id == x.get("id"), "slixmpp did not keep the id")
            ctx.note(f"enabled: {xml_of(enabled.xml)}")
            check(aev.seen["sm_enabled"][0]["id"] != bev.seen["sm_enabled"][0]["id"],
                  "two sessions got the same SM id")

            n = 12
            for i in range(1, n + 1):
                b.send_message(mto=a.boundjid.full, mbody=f"ack-{i}", mtype="chat")
            got = [body(await a.expect_message(lambda m: body(m).startswith("ack-")))
                   for _ in range(n)]
            check(got == [f"ack-{i}" for i in range(1, n + 1)], f"bodies: {got}")

            # The server's <a h/> to each client counts every stanza it sent (messages,
            # presence, IQs), as slixmpp counted them.
            bsm = b.plugin["xep_0198"]
            await sm_ack_all(b, "sender")
            check(bsm.seq >= n, f"slixmpp counted only {bsm.seq} sent stanzas")
            check(len(bev.seen["stanza_acked"]) == bsm.seq,
                  f"{len(bev.seen['stanza_acked'])} stanza_acked events for {bsm.seq} sent")
            acked_msgs = [s for s in bev.seen["stanza_acked"]
                          if s.name == "message" and s["body"].startswith("ack-")]
            check([s["body"] for s in acked_msgs] == got,
                  f"acked messages: {[s['body'] for s in acked_msgs]}")
            await sm_ack_all(a, "receiver")

            # And the receiver's handled counter counts what it got: the server accepts it
            # (an <a h/> beyond what was sent would be a stream error) and it covers the
            # 12 messages.
            asm = a.plugin["xep_0198"]
            check(asm.handled >= n, f"receiver handled only {asm.handled} stanzas")
            asm.send_ack()
            await drain_settled(a)
            check(a.transport is not None and not a.stream_errors,
                  f"server rejected <a h='{asm.handled}'/>: {a.stream_errors}")
            ctx.note(f"sender: seq={bsm.seq} last_ack={bsm.last_ack}; "
                     f"receiver: handled={asm.handled}")
        finally:
            await b.close()
    finally:
        await a.close()


@suite.scenario("XEP-0198 §5 resume after a cut TCP connection: every message exactly once, "
                "in order", timeout=90)
async def sm_resume(ctx):
    server = ctx.server("main")
    (ja, pa), (jb, pb) = ctx.user(server), ctx.user(server)
    a, aev = await start_client(server, f"{ja}/phone", pa, plugins=SM_PLUGINS,
                                events=("sm_enabled", "session_resumed", "disconnected",
                                        "sm_failed", "session_start"))
    try:
        b, _ = await start_client(server, jb, pb, plugins=SM_PLUGINS, events=())
        try:
            enabled = await aev.next("sm_enabled", already=0)
            sm_id = enabled["id"]
            asm = a.plugin["xep_0198"]
            tag = secrets.token_hex(3)
            prefix = f"seq-{tag}-"

            # 1..5 arrive on the first connection (read, counted, not yet acknowledged).
            for i in range(1, 6):
                b.send_message(mto=a.boundjid.full, mbody=f"{prefix}{i}", mtype="chat")
            received = [body(await a.expect_message(lambda m: body(m).startswith(prefix)))
                        for _ in range(5)]
            # 6..8 are written to the socket but never read: the client stops reading and
            # the cut (RST) throws away what sits in its receive buffer. The server sent
            # them, the client's h does not cover them: they must come again on resume.
            a.transport.pause_reading()
            for i in range(6, 9):
                b.send_message(mto=a.boundjid.full, mbody=f"{prefix}{i}", mtype="chat")
            await drain_settled(b)  # B's stream is handled in order: 6..8 are routed
            handled_at_cut = asm.handled
            sent_at_cut = asm.seq

            # Cut, and keep sending: some of these race the server noticing the cut, the
            # rest wait in the detached session.
            cut_tcp(a)
            for i in range(9, 16):
                b.send_message(mto=a.boundjid.full, mbody=f"{prefix}{i}", mtype="chat")
            await aev.next("disconnected", already=0)
            # The server acknowledging B's messages means it has routed them all.
            await sm_ack_all(b, "sender during the cut")

            a.connect(server.host, server.c2s_port)
            resumed = await aev.next("session_resumed", already=0, timeout=30)
            rx = resumed.xml
            ctx.note(f"resumed: {xml_of(rx)} (client h={handled_at_cut})")
            check(rx.tag == q(NS_SM, "resumed"), f"not <resumed/>: {xml_of(rx)}")
            check(rx.get("previd") == sm_id, f"previd {rx.get('previd')!r}, enabled id {sm_id!r}")
            check(rx.get("h") == str(sent_at_cut),
                  f"<resumed h='{rx.get('h')}'/>: the client had sent {sent_at_cut} stanzas "
                  "before the cut, all of which the server handled")
            check(not aev.seen["sm_failed"], f"sm_failed: {aev.seen['sm_failed']}")
            check(len(aev.seen["session_start"]) == 1, "a new session started instead of resuming")
            check(a.boundjid.full == f"{ja}/phone", f"bound jid changed: {a.boundjid}")

            for _ in range(6, 16):
                received.append(body(await a.expect_message(
                    lambda m: body(m).startswith(prefix), timeout=30)))
            # A marker after everything: any duplicate (resent despite h) would come first.
            b.send_message(mto=a.boundjid.full, mbody=f"{prefix}end", mtype="chat")
            await a.expect_message(lambda m: body(m) == f"{prefix}end")
            await drain_settled(a)
            extra = [body(m) for m in queued(a.messages) if body(m).startswith(prefix)]
            check(received == [f"{prefix}{i}" for i in range(1, 16)] and not extra,
                  f"expected 1..15 once each in order; got {received} then {extra}")

            # The resumed session keeps counting: acks still flow both ways.
            await sm_ack_all(a, "resumed session")
            ctx.note(f"15 messages exactly once across the cut; client handled={asm.handled}")
        finally:
            await b.close()
    finally:
        await a.close()


@suite.scenario("XEP-0198 §5 resume with a bogus or someone else's previd: <failed/>, then a "
                "normal bind", timeout=60)
async def sm_resume_bogus(ctx):
    server = ctx.server("main")
    (ja, pa), (jc, pc) = ctx.user(server), ctx.user(server)
    a, aev = await start_client(server, ja, pa, plugins=SM_PLUGINS, events=("sm_enabled",))
    try:
        a_id = (await aev.next("sm_enabled", already=0))["id"]
        for label, previd in (("bogus", "bogus-" + secrets.token_hex(8)),
                              ("another user's", a_id)):
            c, cev = await start_client(server, f"{jc}/r-{secrets.token_hex(2)}", pc,
                                        plugins=SM_PLUGINS, sm_id=previd,
                                        events=("sm_failed", "sm_enabled", "session_resumed"))
            try:
                check(cev.seen["sm_failed"], f"{label} previd: no <failed/> before the session")
                fx = cev.seen["sm_failed"][0].xml
                check(fx.tag == q(NS_SM, "failed"), f"not <failed/>: {xml_of(fx)}")
                check(fx.find(q(NS_STANZAS, "item-not-found")) is not None,
                      f"{label} previd: <failed/> without <item-not-found/>: {xml_of(fx)}")
                check(not cev.seen["session_resumed"], f"{label} previd was resumed!")
                check(c.boundjid.bare == jc and c.boundjid.resource,
                      f"no normal bind after <failed/>: {c.boundjid}")
                en = await cev.next("sm_enabled", already=0)
                check(en["id"] and en["id"] not in (previd, a_id),
                      f"fresh <enabled/> reuses an id: {xml_of(en.xml)}")
                ctx.note(f"{label} previd → {xml_of(fx)}; then bound {c.boundjid.full}")
                # The new session works.
                c.send_message(mto=a.boundjid.full, mbody=f"after-failed-{label}", mtype="chat")
                await a.expect_message(lambda m: body(m) == f"after-failed-{label}")
            finally:
                await c.close()
        # A's session was not disturbed by someone presenting its id.
        await drain_settled(a)
        check(a.transport is not None, "the id's owner lost its connection")
    finally:
        await a.close()


# ---- XEP-0313 ------------------------------------------------------------------------------

def mam_rows(iq) -> list[tuple[str, str, str]]:
    """(archive id, from, body) for each result of a finished query, in order."""
    rows = []
    for m in iq["mam"]["results"]:
        r = m.xml.find(q(NS_MAM, "result"))
        fwd = r.find(f"{q(NS_FORWARD, 'forwarded')}/{q(NS_CLIENT, 'message')}")
        check(fwd is not None, f"result without a forwarded message: {xml_of(m)}")
        rows.append((r.get("id"), fwd.get("from", ""), fwd.findtext(q(NS_CLIENT, "body"))))
    return rows


def fin_of(iq):
    fin = iq.xml.find(q(NS_MAM, "fin"))
    check(fin is not None, f"no <fin/>: {xml_of(iq)}")
    rsm = fin.find(q(NS_RSM, "set"))
    return fin, rsm


async def mam(c: Client, **kw):
    iq = await c.plugin["xep_0313"].retrieve(timeout=TIMEOUT, **kw)
    check(iq["type"] == "result", f"MAM query: {iq}")
    return iq


@suite.scenario("XEP-0313 archive: all, with=, XEP-0059 paging after/before, complete, "
                "XEP-0359 ids match, offline messages", timeout=90)
async def mam_archive(ctx):
    server = ctx.server("main")
    (ja, pa), (jb, pb), (jc, pc), (jd, pd) = (ctx.user(server) for _ in range(4))
    async with clients(login(server, ja, pa, plugins=MAM_PLUGINS),
                       login(server, jb, pb, plugins=MAM_PLUGINS),
                       login(server, jc, pc, plugins=MAM_PLUGINS)) as (a, b, c):
        delivered: dict[str, str] = {}  # body -> stanza-id by A on A's copy

        async def to_a(sender, text):
            sender.send_message(mto=a.boundjid.full, mbody=text, mtype="chat")
            m = await a.expect_message(lambda m: body(m) == text)
            ids = stanza_ids(m.xml, ja)
            check(len(ids) == 1, f"delivered copy needs one <stanza-id by='{ja}'/>: {xml_of(m)}")
            delivered[text] = ids[0]

        for i in range(1, 6):
            await to_a(b, f"mam-{i}")
        a.send_message(mto=b.boundjid.full, mbody="mam-reply", mtype="chat")
        rep = await b.expect_message(lambda m: body(m) == "mam-reply")
        check(len(stanza_ids(rep.xml, jb)) == 1, f"B's copy has no stanza-id by B: {xml_of(rep)}")
        await to_a(c, "other-1")

        # Everything, in order; archive ids are the stanza-ids of the delivered copies.
        iq = await mam(a)
        rows = mam_rows(iq)
        ctx.note(f"all: {[(r[2]) for r in rows]}")
        check([r[2] for r in rows] == [f"mam-{i}" for i in range(1, 6)] + ["mam-reply",
                                                                           "other-1"],
              f"archive bodies: {rows}")
        for rid, _frm, text in rows:
            if text in delivered:
                check(rid == delivered[text],
                      f"{text}: archive id {rid} but delivered stanza-id {delivered[text]}")
        check(len({r[0] for r in rows}) == len(rows), f"archive ids not unique: {rows}")
        fin, _ = fin_of(iq)
        check(fin.get("complete") in ("true", "1"), f"whole archive fits: {xml_of(fin)}")

        # with=B: just that conversation, both directions.
        iq = await mam(a, with_jid=jb)
        conv = mam_rows(iq)
        check([r[2] for r in conv] == [f"mam-{i}" for i in range(1, 6)] + ["mam-reply"],
              f"with={jb}: {conv}")
        check(all(r[1].split("/")[0] in (ja, jb) for r in conv), f"with={jb}: {conv}")
        ids = [r[0] for r in conv]

        # Forward paging, max=2: 3 pages, complete only on the last.
        pages, after = [], None
        for _ in range(5):
            rsm = {"max": 2} if after is None else {"max": 2, "after": after}
            iq = await mam(a, with_jid=jb, rsm=rsm)
            page = mam_rows(iq)
            fin, rs = fin_of(iq)
            pages.append([r[0] for r in page])
            check(rs is not None, f"<fin/> without an RSM <set/>: {xml_of(fin)}")
            check(rs.findtext(q(NS_RSM, "first")) == page[0][0]
                  and rs.findtext(q(NS_RSM, "last")) == page[-1][0],
                  f"RSM first/last do not match the page: {xml_of(fin)} vs {page}")
            complete = fin.get("complete") in ("true", "1")
            # XEP-0059: the full set's size, and where in it this page starts.
            check(rs.findtext(q(NS_RSM, "count")) == "6", f"count: {xml_of(fin)}")
            check(rs.find(q(NS_RSM, "first")).get("index") == str(2 * (len(pages) - 1)),
                  f"index of page {len(pages)}: {xml_of(fin)}")
            if complete:
                break
            after = page[-1][0]
        check(pages == [ids[0:2], ids[2:4], ids[4:6]],
              f"pages after=: {pages} (ids {ids})")
        ctx.note(f"forward pages of 2: {len(pages)}, complete on the last")

        # Backward paging with before=<id>: the page just before it, complete at the start.
        iq = await mam(a, with_jid=jb, rsm={"max": 2, "before": ids[5]})
        fin, _ = fin_of(iq)
        check([r[0] for r in mam_rows(iq)] == ids[3:5], f"before {ids[5]}: {mam_rows(iq)}")
        check(fin.get("complete") not in ("true", "1"), f"not the start yet: {xml_of(fin)}")
        iq = await mam(a, with_jid=jb, rsm={"max": 2, "before": ids[1]})
        fin, _ = fin_of(iq)
        check([r[0] for r in mam_rows(iq)] == ids[0:1], f"before {ids[1]}: {mam_rows(iq)}")
        check(fin.get("complete") in ("true", "1"),
              f"paging back reached the first message: {xml_of(fin)}")

        # Offline recipient: D is offline while A writes; D's archive has the messages with
        # the stanza-ids of the copies delivered from offline storage.
        for i in (1, 2):
            a.send_message(mto=jd, mbody=f"offline-{i}", mtype="chat")
        await drain_settled(a)
        async with clients(login(server, jd, pd, plugins=MAM_PLUGINS)) as (d,):
            got = [await d.expect_message(lambda m: body(m).startswith("offline-"))
                   for _ in (1, 2)]
            check([body(m) for m in got] == ["offline-1", "offline-2"],
                  f"offline delivery: {[xml_of(m) for m in got]}")
            off_ids = [stanza_ids(m.xml, jd) for m in got]
            check(all(len(x) == 1 for x in off_ids),
                  f"offline copies need one stanza-id by {jd}: {[xml_of(m) for m in got]}")
            drows = mam_rows(await mam(d))
            check([(r[0], r[2]) for r in drows] == [(off_ids[0][0], "offline-1"),
                                                    (off_ids[1][0], "offline-2")],
                  f"D's archive {drows} vs delivered ids {off_ids}")
            check(all(r[1].split("/")[0] == ja for r in drows), f"D's archive from: {drows}")
        arows = mam_rows(await mam(a, with_jid=jd))
        check([r[2] for r in arows] == ["offline-1", "offline-2"],
              f"sender's archive with the offline contact: {arows}")
        ctx.note("offline messages archived for both sides")


# ---- XEP-0352 ------------------------------------------------------------------------------

def status_of(p) -> str:
    return p["status"]


@suite.scenario("XEP-0352 inactive: contact presence held (latest only), chat message at once; "
                "active releases", timeout=60)
async def csi(ctx):
    server = ctx.server("main")
    (ja, pa), (jb, pb) = ctx.user(server), ctx.user(server)
    async with clients(login(server, ja, pa, plugins=("xep_0352",)),
                       login(server, jb, pb)) as (a, b):
        check(a.plugin["xep_0352"].enabled, f"server did not offer CSI: {a.features}")
        # Mutual subscription: slixmpp authorizes and subscribes back on its own.
        b.send_presence(pto=ja, ptype="subscribe")
        await a.expect_presence(lambda p: p["from"].bare == jb and p["type"] == "available")
        await b.expect_presence(lambda p: p["from"].bare == ja and p["type"] == "available")

        def from_b(st):
            return st["from"].bare == jb

        a.plugin["xep_0352"].send_inactive()
        await drain_settled(a)  # <inactive/> is handled before the ping is answered
        queued(a.presences)

        tag = secrets.token_hex(3)
        b.send_presence(pshow="away", pstatus=f"away-{tag}")
        b.send_presence(pshow="dnd", pstatus=f"dnd-{tag}")
        composing = b.make_message(mto=a.boundjid.full, mtype="chat")
        composing.xml.append(ET.Element(q(NS_CHATSTATES, "composing")))
        composing.send()
        b.send_message(mto=a.boundjid.full, mbody=f"urgent-{tag}", mtype="chat")

        # The message comes at once, after what was held: only B's latest presence and the
        # chat state (coalescing is only possible because they were held).
        await a.expect_message(lambda m: body(m) == f"urgent-{tag}")
        await drain_settled(a)
        pres = [status_of(p) for p in queued(a.presences) if from_b(p)]
        check(pres == [f"dnd-{tag}"],
              f"while inactive B's two presence updates should be held and coalesced to the "
              f"latest: A got {pres}")
        ctx.note(f"inactive: held presences coalesced to {pres}, message delivered")

        # Held again: two updates, then <active/> releases only the latest.
        b.send_presence(pshow="xa", pstatus=f"xa-{tag}")
        b.send_presence(pshow="chat", pstatus=f"back-{tag}")
        # Both routed to A's session before A goes active. (Not a ping from A: any stanza
        # that is not deferrable, an IQ result included, releases what is held first.)
        await drain_settled(b)
        early = [status_of(p) for p in queued(a.presences) if from_b(p)]
        check(not early, f"presence delivered to an inactive client: {early}")
        a.plugin["xep_0352"].send_active()
        p = await a.expect_presence(lambda p: from_b(p))
        await drain_settled(a)
        rest = [status_of(x) for x in queued(a.presences) if from_b(x)]
        check([status_of(p)] + rest == [f"back-{tag}"],
              f"on <active/> A should get B's latest held presence only: "
              f"{[status_of(p)] + rest}")
        check(p["show"] == "chat", f"released presence: {xml_of(p)}")

        # Active again: presence flows immediately.
        b.send_presence(pstatus=f"live-{tag}")
        p = await a.expect_presence(lambda p: from_b(p) and status_of(p) == f"live-{tag}")
        ctx.note("active: held presence released, later ones flow")


if __name__ == "__main__":
    suite.main()
