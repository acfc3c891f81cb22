//! Two in-process Starling servers (a.test, b.test) federating over loopback through
//! `[s2s.routes]`, plus raw peers that misbehave. No DNS is ever consulted.

mod common;

use common::muc::{codes, item};
use common::{stanza_error, Client, Got, TestServer};
use starling::xml::Element;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

const PW: &str = "secret-pw";

/// A free loopback port (bound and released; servers bind it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Pair {
    a: TestServer,
    b: TestServer,
}

/// a.test and b.test, each routing to the other, with alice@a.test and bob@b.test.
async fn federation() -> Pair {
    let (pa, pb) = (free_port(), free_port());
    let a = TestServer::start_with(|c| {
        c.domain = "a.test".into();
        c.s2s.listen = vec![format!("127.0.0.1:{pa}")];
        for d in ["b.test", "conference.b.test"] {
            c.s2s.routes.insert(d.into(), format!("127.0.0.1:{pb}"));
        }
        c.s2s.system_roots = false;
    })
    .await;
    let b = TestServer::start_with(|c| {
        c.domain = "b.test".into();
        c.s2s.listen = vec![format!("127.0.0.1:{pb}")];
        // The MUC service speaks for its own domain on server streams, so the peer
        // must be able to reach it for dialback.
        for d in ["a.test", "conference.a.test"] {
            c.s2s.routes.insert(d.into(), format!("127.0.0.1:{pa}"));
        }
        c.s2s.system_roots = false;
    })
    .await;
    a.add_user("alice", PW);
    b.add_user("bob", PW);
    Pair { a, b }
}

async fn alice(p: &Pair) -> Client {
    let mut c = Client::login_at(p.a.c2s, "a.test", "alice", PW, "phone").await;
    c.available().await;
    c
}

async fn bob(p: &Pair) -> Client {
    let mut c = Client::login_at(p.b.c2s, "b.test", "bob", PW, "desk").await;
    c.available().await;
    c
}

fn is_msg(e: &Element) -> bool {
    e.name() == "message"
}

fn s2s_addr(t: &TestServer) -> SocketAddr {
    t.server.as_ref().expect("running").s2s_addrs[0]
}

#[tokio::test]
async fn chat_both_ways_with_dialback() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    al.send("<message to='bob@b.test' type='chat' id='m1'><body>hello from a</body></message>")
        .await;
    let m = bo.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("alice@a.test/phone"));
    assert_eq!(m.attr("to"), Some("bob@b.test"));
    assert_eq!(m.attr("type"), Some("chat"));
    assert_eq!(m.ns(), starling::ns::CLIENT);
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("hello from a")
    );
    bo.send("<message to='alice@a.test/phone' type='chat'><body>hi from b</body></message>")
        .await;
    let m = al.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("bob@b.test/desk"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("hi from b")
    );
    // One outgoing stream each way, pooled per (local, remote).
    assert_eq!(
        p.a.state().s2s.outgoing_pairs(),
        vec![("a.test".to_string(), "b.test".to_string())]
    );
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn xep_0368_direct_tls_both_ways() {
    // Each server reaches the other on its direct TLS listener (a `tls://` route): TLS
    // from the first byte, no STARTTLS, then dialback.
    let (pa, pb) = (free_port(), free_port());
    let a = TestServer::start_with(|c| {
        c.domain = "a.test".into();
        c.s2s.listen = vec![];
        c.s2s.direct_tls_listen = vec![format!("127.0.0.1:{pa}")];
        c.s2s
            .routes
            .insert("b.test".into(), format!("tls://127.0.0.1:{pb}"));
        c.s2s.system_roots = false;
    })
    .await;
    let b = TestServer::start_with(|c| {
        c.domain = "b.test".into();
        c.s2s.listen = vec![];
        c.s2s.direct_tls_listen = vec![format!("127.0.0.1:{pb}")];
        c.s2s
            .routes
            .insert("a.test".into(), format!("tls://127.0.0.1:{pa}"));
        c.s2s.system_roots = false;
    })
    .await;
    a.add_user("alice", PW);
    b.add_user("bob", PW);
    let p = Pair { a, b };
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    al.send("<message to='bob@b.test' type='chat'><body>over direct TLS</body></message>")
        .await;
    let m = bo.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("alice@a.test/phone"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("over direct TLS")
    );
    bo.send("<message to='alice@a.test/phone' type='chat'><body>and back</body></message>")
        .await;
    let m = al.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("bob@b.test/desk"));
    // The listener really is TLS from the first byte: a raw TLS client gets a stream whose
    // features offer no STARTTLS, only dialback.
    let mut c = Client::connect_tls(p.b.server.as_ref().expect("running").s2s_tls_addrs[0]).await;
    let (_, f) = open_s2s(&mut c, "a.test", "b.test").await;
    assert!(!f.has_child("starttls", starling::ns::TLS), "{f}");
    assert!(
        f.has_child("dialback", starling::ns::DIALBACK_FEATURE),
        "{f}"
    );
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn iq_ping_across_servers() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    // To the remote server itself.
    let r = al
        .iq(
            "<iq to='b.test' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("b.test"));
    // To a remote user's resource, answered by that user.
    al.send("<iq to='bob@b.test/desk' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let q = bo.wait_for(|e| e.name() == "iq").await;
    assert_eq!(q.attr("from"), Some("alice@a.test/phone"));
    assert!(q.has_child("ping", starling::ns::PING));
    bo.send("<iq to='alice@a.test/phone' type='result' id='p2'/>")
        .await;
    let r = al
        .wait_for(|e| e.name() == "iq" && e.attr("id") == Some("p2"))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some("bob@b.test/desk"));
    // An IQ to a resource that does not exist comes back as an error across servers.
    let r = al
        .iq(
            "<iq to='bob@b.test/nope' type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p3",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn directed_presence_crosses_servers() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    al.send("<presence to='bob@b.test'><show>away</show></presence>")
        .await;
    let pr = bo
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some("alice@a.test/phone"))
        .await;
    assert_eq!(
        pr.child_text("show", starling::ns::CLIENT).as_deref(),
        Some("away")
    );
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn stanzas_queued_during_negotiation_arrive_in_order() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    let mut burst = String::new();
    for i in 0..30 {
        burst.push_str(&format!(
            "<message to='bob@b.test' type='chat'><body>{i}</body></message>"
        ));
    }
    // All sent before the stream to b.test exists: they wait in its queue.
    al.send(&burst).await;
    for i in 0..30 {
        let m = bo.wait_for(is_msg).await;
        assert_eq!(
            m.child_text("body", starling::ns::CLIENT),
            Some(i.to_string())
        );
    }
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn unreachable_route_bounces_remote_server_not_found() {
    let dead = free_port();
    let a = TestServer::start_with(|c| {
        c.domain = "a.test".into();
        c.s2s
            .routes
            .insert("nowhere.test".into(), format!("127.0.0.1:{dead}"));
        c.s2s.system_roots = false;
    })
    .await;
    a.add_user("alice", PW);
    let mut al = Client::login_at(a.c2s, "a.test", "alice", PW, "r").await;
    for id in ["u1", "u2"] {
        al.send(&format!(
            "<message to='x@nowhere.test' id='{id}'><body>anyone?</body></message>"
        ))
        .await;
        let e = al
            .wait_for(|e| e.name() == "message" && e.attr("id") == Some(id))
            .await;
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(e.attr("from"), Some("x@nowhere.test"));
        assert_eq!(stanza_error(&e).as_deref(), Some("remote-server-not-found"));
    }
    // An IQ is bounced the same way.
    let r = al
        .iq(
            "<iq to='nowhere.test' type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "i1",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("remote-server-not-found"));
    a.stop().await;
}

#[tokio::test]
async fn silent_peer_bounces_remote_server_timeout() {
    // Accepts the TCP connection and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let a = TestServer::start_with(|c| {
        c.domain = "a.test".into();
        c.s2s.routes.insert("mute.test".into(), addr.to_string());
        c.s2s.negotiation_timeout_secs = 1;
        c.s2s.system_roots = false;
    })
    .await;
    a.add_user("alice", PW);
    let mut al = Client::login_at(a.c2s, "a.test", "alice", PW, "r").await;
    al.send("<message to='x@mute.test' id='t1'><body>hello?</body></message>")
        .await;
    let e = al
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("t1"))
        .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("remote-server-timeout"));
    hold.abort();
    a.stop().await;
}

/// Plays the receiving server of stuck.test: accepts a.test's dialback at its word, then
/// stops reading (with a small receive buffer, so the sender's writes soon block) until
/// `drain` turns true; from then on it reads everything and records the ids of the
/// messages it got, until the connection ends.
async fn stuck_peer(
    drain: tokio::sync::watch::Receiver<bool>,
    got: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) -> SocketAddr {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let l = sock.listen(16).expect("listen");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (mut drain, got) = (drain.clone(), got.clone());
            tokio::spawn(async move {
                let mut c = Client::from_tcp(tcp);
                if !matches!(c.next().await, Got::Header(_)) {
                    return;
                }
                c.send(
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                     xmlns:stream='http://etherx.jabber.org/streams' \
                     xmlns:db='jabber:server:dialback' from='stuck.test' id='s1' version='1.0'>\
                     <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
                )
                .await;
                match c.next().await {
                    Got::El(r) if r.name() == "result" => {}
                    _ => return,
                }
                c.send("<db:result from='stuck.test' to='a.test' type='valid'/>")
                    .await;
                // Stop reading.
                let _ = drain.wait_for(|d| *d).await;
                while let Some(Got::El(e)) = c.next_within(Duration::from_secs(20)).await {
                    if let Some(id) = e.attr("id") {
                        got.lock().expect("lock").insert(id.to_string());
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn peer_that_stops_reading_gets_nothing_more_and_senders_hear_why() {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let received = Arc::new(Mutex::new(HashSet::new()));
    let addr = stuck_peer(drain_rx, received.clone()).await;
    let a = TestServer::start_with(|c| {
        c.domain = "a.test".into();
        c.s2s.routes.insert("stuck.test".into(), addr.to_string());
        c.s2s.require_encryption = false;
        c.s2s.system_roots = false;
        c.s2s.idle_timeout_secs = 2;
        c.limits.write_timeout_secs = 1;
        c.limits.session_queue = 32;
    })
    .await;
    a.add_user("alice", PW);
    let mut al = Client::login_at(a.c2s, "a.test", "alice", PW, "r").await;
    // id -> (condition, text) of every bounce alice gets.
    let mut bounced: HashMap<String, (Option<String>, String)> = HashMap::new();
    let note = |e: Element, bounced: &mut HashMap<String, (Option<String>, String)>| {
        if e.name() == "message" && e.attr("type") == Some("error") {
            assert_eq!(e.attr("from"), Some("x@stuck.test"), "{e}");
            let text = e
                .child("error", starling::ns::CLIENT)
                .and_then(|err| err.child_text("text", starling::ns::STANZAS))
                .unwrap_or_default();
            let id = e.attr("id").expect("bounce keeps the id").to_string();
            bounced.insert(id, (stanza_error(&e), text));
        }
    };
    // 400 messages of 32 KiB: far more than the socket buffers between the two hold.
    let body = "x".repeat(32 * 1024);
    let sent: Vec<String> = (0..400).map(|i| format!("m{i}")).collect();
    for id in &sent {
        al.send(&format!(
            "<message to='x@stuck.test' id='{id}' type='chat'><body>{body}</body></message>"
        ))
        .await;
        while let Some(Got::El(e)) = al.next_within(Duration::ZERO).await {
            note(e, &mut bounced);
        }
    }
    // The outgoing queue is bounded: once it is full, further stanzas are refused at
    // once; and the batch the stalled peer never took is bounced when the write times
    // out. Both reach the sender as remote-server-timeout.
    let saw = |b: &HashMap<String, (Option<String>, String)>, what: &str| {
        b.values().any(|(_, t)| t.contains(what))
    };
    while !(saw(&bounced, "too many stanzas waiting") && saw(&bounced, "failed while sending")) {
        let e = al.el().await;
        note(e, &mut bounced);
    }
    for (id, (cond, text)) in &bounced {
        assert_eq!(
            cond.as_deref(),
            Some("remote-server-timeout"),
            "{id}: {text}"
        );
    }
    // The server is not held up by the stalled peer.
    let r = al
        .iq(
            "<iq to='a.test' type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>",
            "alive",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Now the peer reads again: every message was either delivered or bounced, none
    // silently lost.
    drain_tx.send(true).expect("drain");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<&String> = {
            let got = received.lock().expect("lock");
            sent.iter()
                .filter(|id| !got.contains(*id) && !bounced.contains_key(*id))
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither delivered nor bounced: {missing:?}"
        );
        if let Some(Got::El(e)) = al.next_within(Duration::from_millis(100)).await {
            note(e, &mut bounced);
        }
    }
    assert!(bounced.len() < sent.len(), "nothing was delivered at all");
    a.stop().await;
}

// ---- raw peers against b.test's incoming listener ----

/// A server stream header from `from` to `to`.
fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

/// Opens a stream to `addr`; returns the stream id and the features.
async fn open_s2s(c: &mut Client, from: &str, to: &str) -> (String, Element) {
    c.send(&s2s_header(from, to)).await;
    let id = match c.next().await {
        Got::Header(attrs) => attrs
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.clone())
            .expect("stream id"),
        other => panic!("expected a header, got {other:?}"),
    };
    let f = c.el().await;
    assert_eq!(f.name(), "features");
    (id, f)
}

/// Connects to `addr` as a peer server, with STARTTLS.
async fn peer_stream(addr: SocketAddr, from: &str, to: &str) -> (Client, String, Element) {
    let mut c = Client::connect(addr).await;
    let (_, f) = open_s2s(&mut c, from, to).await;
    assert!(f.has_child("starttls", starling::ns::TLS), "{f}");
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_eq!(c.el().await.name(), "proceed");
    c.upgrade_tls().await;
    let (id, f) = open_s2s(&mut c, from, to).await;
    (c, id, f)
}

/// Plays the authoritative server of a domain: answers every `<db:verify/>` with
/// `answer`, except keys starting with "bad", which are always invalid (on plain streams,
/// so the server under test must not require TLS).
async fn fake_authoritative(domain: &'static str, answer: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut c = Client::from_tcp(tcp);
                if !matches!(c.next().await, Got::Header(_)) {
                    return;
                }
                c.send(&format!(
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                     xmlns:stream='http://etherx.jabber.org/streams' \
                     xmlns:db='jabber:server:dialback' from='{domain}' id='auth1' version='1.0'>\
                     <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
                ))
                .await;
                loop {
                    match c.next().await {
                        Got::El(v) if v.name() == "verify" => {
                            let ty = if v.text().starts_with("bad") {
                                "invalid"
                            } else {
                                answer
                            };
                            let reply = format!(
                                "<db:verify from='{}' to='{}' id='{}' type='{ty}'/>",
                                v.attr("to").unwrap_or(""),
                                v.attr("from").unwrap_or(""),
                                v.attr("id").unwrap_or("")
                            );
                            c.send(&reply).await;
                        }
                        Got::El(_) => {}
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// b.test without mandatory TLS, with evil.test's authoritative server faked.
async fn b_with_fake_peer(answer: &'static str) -> TestServer {
    let auth = fake_authoritative("evil.test", answer).await;
    let b = TestServer::start_with(|c| {
        c.domain = "b.test".into();
        c.s2s.listen = vec!["127.0.0.1:0".into()];
        c.s2s.routes.insert("evil.test".into(), auth.to_string());
        c.s2s.require_encryption = false;
        c.s2s.system_roots = false;
    })
    .await;
    b.add_user("bob", PW);
    b
}

/// Authenticates a raw peer as evil.test with dialback (the fake authority agrees).
async fn evil_peer(b: &TestServer) -> Client {
    let mut c = Client::connect(s2s_addr(b)).await;
    let (_, f) = open_s2s(&mut c, "evil.test", "b.test").await;
    assert!(
        f.has_child("dialback", starling::ns::DIALBACK_FEATURE),
        "{f}"
    );
    c.send("<db:result from='evil.test' to='b.test'>any-key</db:result>")
        .await;
    let r = c.el().await;
    assert_eq!(r.name(), "result");
    assert_eq!(r.attr("type"), Some("valid"), "{r}");
    assert_eq!(r.attr("from"), Some("b.test"));
    assert_eq!(r.attr("to"), Some("evil.test"));
    c
}

#[tokio::test]
async fn dialback_verified_peer_delivers_then_spoofing_is_invalid_from() {
    let b = b_with_fake_peer("valid").await;
    let mut bo = Client::login_at(b.c2s, "b.test", "bob", PW, "desk").await;
    bo.available().await;
    let mut peer = evil_peer(&b).await;
    peer.send("<message from='mallory@evil.test/x' to='bob@b.test' type='chat'><body>legit</body></message>")
        .await;
    let m = bo.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("mallory@evil.test/x"));
    // A domain the stream never authenticated.
    peer.send("<message from='alice@a.test/phone' to='bob@b.test'><body>trust me</body></message>")
        .await;
    assert_eq!(peer.stream_error().await.as_deref(), Some("invalid-from"));
    b.stop().await;
}

#[tokio::test]
async fn piggybacked_domains_are_each_verified_and_only_they_may_send() {
    let auth = fake_authoritative("evil.test", "valid").await;
    let b = TestServer::start_with(|c| {
        c.domain = "b.test".into();
        c.s2s.listen = vec!["127.0.0.1:0".into()];
        for d in ["evil.test", "chat.evil.test"] {
            c.s2s.routes.insert(d.into(), auth.to_string());
        }
        c.s2s.require_encryption = false;
        c.s2s.system_roots = false;
    })
    .await;
    b.add_user("bob", PW);
    let mut bo = Client::login_at(b.c2s, "b.test", "bob", PW, "desk").await;
    bo.available().await;
    let mut peer = evil_peer(&b).await;
    // A second originating domain on the same stream gets its own dialback round.
    peer.send("<db:result from='chat.evil.test' to='b.test'>second-key</db:result>")
        .await;
    let r = peer.el().await;
    assert_eq!(r.name(), "result");
    assert_eq!(r.attr("type"), Some("valid"), "{r}");
    assert_eq!(r.attr("from"), Some("b.test"));
    assert_eq!(r.attr("to"), Some("chat.evil.test"));
    // And a second receiving domain (the MUC service) for an authenticated one.
    peer.send("<db:result from='evil.test' to='conference.b.test'>third-key</db:result>")
        .await;
    let r = peer.el().await;
    assert_eq!(r.attr("type"), Some("valid"), "{r}");
    assert_eq!(r.attr("from"), Some("conference.b.test"));
    assert_eq!(r.attr("to"), Some("evil.test"));
    for from in ["eve@chat.evil.test/x", "mallory@evil.test/y"] {
        peer.send(&format!(
            "<message from='{from}' to='bob@b.test' type='chat'><body>from {from}</body></message>"
        ))
        .await;
        let m = bo.wait_for(is_msg).await;
        assert_eq!(m.attr("from"), Some(from));
        assert_eq!(
            m.child_text("body", starling::ns::CLIENT),
            Some(format!("from {from}"))
        );
    }
    // A sibling domain nobody verified is still refused.
    peer.send("<message from='x@other.evil.test' to='bob@b.test'><body>x</body></message>")
        .await;
    assert_eq!(peer.stream_error().await.as_deref(), Some("invalid-from"));
    // The second domain's key is checked with its authoritative server, not taken on
    // the first domain's word: a key it did not issue ends the stream.
    let mut peer = evil_peer(&b).await;
    peer.send("<db:result from='chat.evil.test' to='b.test'>bad-key</db:result>")
        .await;
    let r = peer.el().await;
    assert_eq!(r.attr("type"), Some("invalid"), "{r}");
    assert_eq!(r.attr("to"), Some("chat.evil.test"));
    assert_eq!(peer.stream_error().await.as_deref(), Some("not-authorized"));
    b.stop().await;
}

#[tokio::test]
async fn wrong_dialback_key_is_not_authorized() {
    let b = b_with_fake_peer("invalid").await;
    let mut c = Client::connect(s2s_addr(&b)).await;
    open_s2s(&mut c, "evil.test", "b.test").await;
    c.send("<db:result from='evil.test' to='b.test'>forged</db:result>")
        .await;
    let r = c.el().await;
    assert_eq!(r.name(), "result");
    assert_eq!(r.attr("type"), Some("invalid"));
    assert_eq!(c.stream_error().await.as_deref(), Some("not-authorized"));
    b.stop().await;
}

#[tokio::test]
async fn wrong_key_between_real_servers_and_authoritative_answers() {
    let p = federation().await;
    // b.test asks a.test about a key a.test never issued: a.test (authoritative) says
    // invalid, so b.test refuses the peer.
    let (mut c, _, f) = peer_stream(s2s_addr(&p.b), "a.test", "b.test").await;
    assert!(
        f.has_child("dialback", starling::ns::DIALBACK_FEATURE),
        "{f}"
    );
    c.send("<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>")
        .await;
    let r = c.el().await;
    assert_eq!(r.attr("type"), Some("invalid"), "{r}");
    assert_eq!(c.stream_error().await.as_deref(), Some("not-authorized"));
    // Asked directly, the authoritative server answers invalid for a forged key.
    let (mut c, _, _) = peer_stream(s2s_addr(&p.a), "b.test", "a.test").await;
    c.send("<db:verify from='b.test' to='a.test' id='abc'>forged</db:verify>")
        .await;
    let v = c.el().await;
    assert_eq!(v.name(), "verify");
    assert_eq!(v.attr("type"), Some("invalid"));
    assert_eq!(v.attr("id"), Some("abc"));
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn unsolicited_dialback_answer_authenticates_nothing() {
    let b = b_with_fake_peer("valid").await;
    let mut c = Client::connect(s2s_addr(&b)).await;
    open_s2s(&mut c, "evil.test", "b.test").await;
    c.send("<db:result from='evil.test' to='b.test' type='valid'/>")
        .await;
    c.send("<message from='mallory@evil.test' to='bob@b.test'><body>x</body></message>")
        .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("not-authorized"));
    b.stop().await;
}

#[tokio::test]
async fn stream_to_a_domain_we_do_not_host_is_host_unknown() {
    let b = b_with_fake_peer("valid").await;
    let mut c = Client::connect(s2s_addr(&b)).await;
    c.send(&s2s_header("evil.test", "elsewhere.test")).await;
    assert_eq!(c.stream_error().await.as_deref(), Some("host-unknown"));
    // A client namespace on the server port is refused too.
    let mut c = Client::connect(s2s_addr(&b)).await;
    c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>").await;
    assert_eq!(c.stream_error().await.as_deref(), Some("invalid-namespace"));
    b.stop().await;
}

#[tokio::test]
async fn tls_is_required_before_dialback_by_default() {
    let p = federation().await;
    let mut c = Client::connect(s2s_addr(&p.b)).await;
    let (_, f) = open_s2s(&mut c, "a.test", "b.test").await;
    let tls = f.child("starttls", starling::ns::TLS).expect("starttls");
    assert!(tls.has_child("required", starling::ns::TLS));
    assert!(!f.has_child("dialback", starling::ns::DIALBACK_FEATURE));
    c.send("<db:result from='a.test' to='b.test'>k</db:result>")
        .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));
    p.a.stop().await;
    p.b.stop().await;
}

/// A test CA and, for each domain, a certificate it issued with the serverAuth extended
/// key usage only (what public CAs issue today). Returns the CA file.
fn test_ca(dir: &std::path::Path, domains: &[&str]) -> std::path::PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Starling test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    for d in domains {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![d.to_string()]).expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &ca, &ca_key).expect("issue");
        std::fs::write(dir.join(format!("{d}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{d}.key")), key.serialize_pem()).expect("write key");
    }
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).expect("write CA");
    path
}

#[tokio::test]
async fn sasl_external_with_server_auth_only_certificates() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = test_ca(certs.path(), &["a.test", "b.test"]);
    let (pa, pb, dead) = (free_port(), free_port(), free_port());
    let dir = certs.path().to_owned();
    let setup = |domain: &str, port: u16, c: &mut starling::Config| {
        c.domain = domain.into();
        c.tls.certificate = Some(dir.join(format!("{domain}.crt")));
        c.tls.key = Some(dir.join(format!("{domain}.key")));
        c.s2s.listen = vec![format!("127.0.0.1:{port}")];
        c.s2s.system_roots = false;
        c.s2s.ca_file = Some(ca.clone());
    };
    let a = TestServer::start_with(|c| {
        setup("a.test", pa, c);
        c.s2s
            .routes
            .insert("b.test".into(), format!("127.0.0.1:{pb}"));
    })
    .await;
    // b.test cannot reach a.test's authoritative server, so dialback would fail: a
    // delivered message proves the certificate (SASL EXTERNAL) authenticated a.test.
    let b = TestServer::start_with(|c| {
        setup("b.test", pb, c);
        c.s2s
            .routes
            .insert("a.test".into(), format!("127.0.0.1:{dead}"));
    })
    .await;
    a.add_user("alice", PW);
    b.add_user("bob", PW);
    let mut al = Client::login_at(a.c2s, "a.test", "alice", PW, "phone").await;
    let mut bo = Client::login_at(b.c2s, "b.test", "bob", PW, "desk").await;
    bo.available().await;
    al.send("<message to='bob@b.test' type='chat'><body>by certificate</body></message>")
        .await;
    let m = bo.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("alice@a.test/phone"));
    // A peer that presents no certificate (this raw test peer) is not offered EXTERNAL.
    let (_c, _, f) = peer_stream(s2s_addr(&b), "c.test", "b.test").await;
    assert!(!f.has_child("mechanisms", starling::ns::SASL), "{f}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn message_from_a_remote_sender_is_kept_for_an_offline_user() {
    let p = federation().await;
    let mut al = alice(&p).await;
    // bob has never logged in: b.test stores the message.
    al.send(
        "<message to='bob@b.test' type='chat' id='off1'><body>while you were out</body></message>",
    )
    .await;
    // A ping through the same stream, answered by b.test, orders this after the message.
    let r = al
        .iq(
            "<iq to='b.test' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut bo = Client::login_at(p.b.c2s, "b.test", "bob", PW, "desk").await;
    bo.send("<presence/>").await;
    let m = bo.wait_for(is_msg).await;
    assert_eq!(m.attr("from"), Some("alice@a.test/phone"));
    assert_eq!(m.attr("id"), Some("off1"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("while you were out")
    );
    let delay = m.child("delay", "urn:xmpp:delay").expect("XEP-0203 delay");
    assert_eq!(delay.attr("from"), Some("b.test"));
    p.a.stop().await;
    p.b.stop().await;
}

#[tokio::test]
async fn subscription_handshake_across_servers() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    al.send("<presence type='subscribe' to='bob@b.test'/>")
        .await;
    let req = bo
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(req.attr("from"), Some("alice@a.test"));
    bo.send("<presence type='subscribed' to='alice@a.test'/>")
        .await;
    al.wait_for(|e| {
        e.name() == "presence"
            && e.attr("type") == Some("subscribed")
            && e.attr("from") == Some("bob@b.test")
    })
    .await;
    // RFC 6121 §3.1.5: the new subscriber then gets bob's current presence, across servers.
    al.wait_for(|e| {
        e.name() == "presence"
            && e.attr("type").is_none()
            && e.attr("from") == Some("bob@b.test/desk")
    })
    .await;
    p.a.stop().await;
    p.b.stop().await;
}

// ---- group chat across servers ----

fn presence_from<'a>(from: &'a str) -> impl Fn(&Element) -> bool + 'a {
    move |e: &Element| e.name() == "presence" && e.attr("from") == Some(from)
}

fn groupchat_from<'a>(from: &'a str, body: &'a str) -> impl Fn(&Element) -> bool + 'a {
    move |e: &Element| {
        e.name() == "message"
            && e.attr("type") == Some("groupchat")
            && e.attr("from") == Some(from)
            && e.child_text("body", starling::ns::CLIENT).as_deref() == Some(body)
    }
}

#[tokio::test]
async fn remote_user_in_local_room() {
    let p = federation().await;
    let mut al = alice(&p).await;
    let mut bo = bob(&p).await;
    let room = "lounge@conference.a.test";
    // alice creates the room on her own server and accepts the default configuration.
    al.send(&format!(
        "<presence to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let own = al
        .wait_for(presence_from("lounge@conference.a.test/Alice"))
        .await;
    let created = codes(&own);
    assert!(
        created.contains(&"110".into()) && created.contains(&"201".into()),
        "{own}"
    );
    let r = al
        .iq(
            &format!(
                "<iq type='set' id='inst' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
            "inst",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // bob, on the other server, joins it.
    bo.send(&format!(
        "<presence to='{room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    // The existing occupant first, then bob's own presence (110), then the subject.
    let first = bo.wait_for(|e| e.name() == "presence").await;
    assert_eq!(
        first.attr("from"),
        Some("lounge@conference.a.test/Alice"),
        "{first}"
    );
    assert_eq!(first.attr("to"), Some("bob@b.test/desk"));
    assert_eq!(item(&first).attr("affiliation"), Some("owner"));
    let own = bo.wait_for(|e| e.name() == "presence").await;
    assert_eq!(
        own.attr("from"),
        Some("lounge@conference.a.test/Bob"),
        "{own}"
    );
    assert!(codes(&own).contains(&"110".into()), "{own}");
    assert_eq!(item(&own).attr("role"), Some("participant"));
    let subject = bo.wait_for(|e| e.name() == "message").await;
    assert!(
        subject.has_child("subject", starling::ns::CLIENT),
        "{subject}"
    );
    assert_eq!(subject.attr("from"), Some(room));
    // alice (a moderator) sees bob arrive with his real, remote JID.
    let arrived = al
        .wait_for(presence_from("lounge@conference.a.test/Bob"))
        .await;
    assert_eq!(
        item(&arrived).attr("jid"),
        Some("bob@b.test/desk"),
        "{arrived}"
    );
    assert!(!codes(&arrived).contains(&"110".into()));

    // Messages both ways, each reflected to every occupant under the sender's nick.
    bo.send(&format!(
        "<message to='{room}' type='groupchat' id='g1'><body>hello from b</body></message>"
    ))
    .await;
    let m = al
        .wait_for(groupchat_from(
            "lounge@conference.a.test/Bob",
            "hello from b",
        ))
        .await;
    assert_eq!(m.attr("to"), Some("alice@a.test/phone"));
    let echo = bo
        .wait_for(groupchat_from(
            "lounge@conference.a.test/Bob",
            "hello from b",
        ))
        .await;
    assert_eq!(echo.attr("id"), Some("g1"));
    al.send(&format!(
        "<message to='{room}' type='groupchat'><body>welcome, b</body></message>"
    ))
    .await;
    let m = bo
        .wait_for(groupchat_from(
            "lounge@conference.a.test/Alice",
            "welcome, b",
        ))
        .await;
    assert_eq!(m.attr("to"), Some("bob@b.test/desk"));

    // A private message from the remote occupant reaches alice through the room.
    bo.send(&format!(
        "<message to='{room}/Alice' type='chat'><body>psst</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"
    ))
    .await;
    let pm = al
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("chat"))
        .await;
    assert_eq!(pm.attr("from"), Some("lounge@conference.a.test/Bob"));
    assert_eq!(
        pm.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("psst")
    );

    // bob leaves: alice sees him go, bob gets his own unavailable presence with 110.
    bo.send(&format!("<presence to='{room}/Bob' type='unavailable'/>"))
        .await;
    let gone = al
        .wait_for(presence_from("lounge@conference.a.test/Bob"))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let own = bo
        .wait_for(presence_from("lounge@conference.a.test/Bob"))
        .await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    assert!(codes(&own).contains(&"110".into()), "{own}");
    // bob joins again, then drops his connection without leaving: b.test sends the room
    // his unavailable presence (RFC 6121 §4.6.3), and alice sees him go.
    bo.send(&format!(
        "<presence to='{room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let back = al
        .wait_for(presence_from("lounge@conference.a.test/Bob"))
        .await;
    assert_eq!(back.attr("type"), None, "{back}");
    drop(bo);
    let gone = al
        .wait_for(presence_from("lounge@conference.a.test/Bob"))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"), "{gone}");
    assert_eq!(item(&gone).attr("role"), Some("none"));
    // The room's stream to b.test speaks for the MUC domain.
    assert!(p
        .a
        .state()
        .s2s
        .outgoing_pairs()
        .contains(&("conference.a.test".to_string(), "b.test".to_string())));
    p.a.stop().await;
    p.b.stop().await;
}
