//! XEP-0198 stream management: enabling, acknowledgement counting, resumption with
//! exactly-once retransmission, expiry into offline storage, and the failure cases.
//! (Counter wrap-around at 2^32 is a unit test in src/c2s/sm.rs.)

mod common;
mod im_util;
mod sm_util;

use common::*;
use im_util::*;
use sm_util::*;
use starling::ns;
use starling::xml::Element;
use std::time::Duration;

fn body(e: &Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

fn chat(to: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{text}'><body>{text}</body></message>")
}

/// Alice online with resumable stream management.
async fn sm_online(s: &TestServer, user: &str, res: &str) -> SmClient {
    let c = online(s, user, res).await;
    SmClient::enable(c, user).await
}

/// Reads messages until `n` with a body arrived; returns their bodies.
async fn bodies(c: &mut SmClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let e = c.wait_for(|e| e.name() == "message").await;
        if let Some(b) = body(&e) {
            got.push(b);
        }
    }
    got
}

#[tokio::test]
async fn feature_enable_and_counting() {
    let s = server(&["alice", "bob"]).await;
    let (mut c, f) = authed(s.c2s, "alice").await;
    assert!(f.has_child("sm", SM), "{f}");
    assert!(f.has_child("csi", "urn:xmpp:csi:0"), "{f}");
    // Before binding: enable is refused but the stream goes on.
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let e = c.el().await;
    assert_eq!(e.name(), "failed");
    assert!(e.has_child("unexpected-request", ns::STANZAS), "{e}");
    // <r/> without stream management is not something this stream handles.
    let mut b = online(&s, "bob", "r").await;
    b.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(
        b.stream_error().await.as_deref(),
        Some("unsupported-stanza-type")
    );

    let mut a = sm_online(&s, "alice", "phone").await;
    // Enabling twice fails without harm.
    a.c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let e = a.wait_for(|e| e.name() == "failed").await;
    assert!(e.has_child("unexpected-request", ns::STANZAS));
    // Three stanzas of ours (a message, an IQ, a presence) are acknowledged as three.
    a.send(&chat("bob@localhost", "one")).await;
    a.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    a.send("<presence><show>away</show></presence>").await;
    let seen = a.sync().await;
    assert_eq!(a.acks.last(), Some(&3));
    assert!(a.out.is_empty());
    // The IQ's answer is routed through the session queue and may come after <a/>.
    if !seen.iter().any(|e| e.attr("id") == Some("p1")) {
        a.wait_for(|e| e.attr("id") == Some("p1")).await;
    }
    // And the server asks us for acknowledgements of what it sends; our answer clears
    // its queue (a wrong h would be a stream error, so a clean run is the check).
    let mut b = online(&s, "bob", "desk").await;
    for i in 0..5 {
        b.send(&chat("alice@localhost/phone", &format!("m{i}")))
            .await;
    }
    assert_eq!(bodies(&mut a, 5).await, vec!["m0", "m1", "m2", "m3", "m4"]);
    a.sync().await;
    // An <a/> claiming more than was sent is a stream error.
    a.c.send("<a xmlns='urn:xmpp:sm:3' h='100000'/>").await;
    assert_eq!(
        a.c.stream_error().await.as_deref(),
        Some("undefined-condition")
    );
    s.stop().await;
}

#[tokio::test]
async fn resume_retransmits_exactly_the_unacknowledged() {
    let s = server(&["alice", "bob"]).await;
    let mut a = sm_online(&s, "alice", "phone").await;
    a.auto_ack = false;
    let mut b = online(&s, "bob", "desk").await;
    for i in 0..5 {
        b.send(&chat("alice@localhost/phone", &format!("m{i}")))
            .await;
    }
    assert_eq!(bodies(&mut a, 5).await.len(), 5);
    // The client handled only the first three before its connection died.
    a.h -= 2;
    a.cut();
    // Sent while alice is away: queued for the detached session, not stored offline.
    b.send(&chat("alice@localhost/phone", "m5")).await;
    b.send(&chat("alice@localhost", "m6")).await;
    drain(&mut b).await;
    // Alice also had sent something the server never acknowledged.
    a.out.push_back(chat("bob@localhost", "from-alice"));
    let r = a.resume(s.c2s).await;
    assert_eq!(r.name(), "resumed", "{r}");
    assert_eq!(r.attr("previd"), a.id.as_deref());
    assert_eq!(bodies(&mut a, 4).await, vec!["m3", "m4", "m5", "m6"]);
    // Nothing more: no duplicates behind them.
    let rest = a.sync().await;
    assert!(rest.iter().all(|e| e.name() != "message"), "{rest:?}");
    let m = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("from-alice"));
    assert!(drain(&mut b).await.iter().all(|e| e.name() != "message"));
    // The resumed session is the same resource and can be resumed again.
    a.cut();
    b.send(&chat("alice@localhost/phone", "m7")).await;
    let r = a.resume(s.c2s).await;
    assert_eq!(r.name(), "resumed", "{r}");
    assert_eq!(bodies(&mut a, 1).await, vec!["m7"]);
    s.stop().await;
}

#[tokio::test]
async fn resuming_a_live_session_closes_the_old_connection() {
    let s = server(&["alice", "bob"]).await;
    let a = sm_online(&s, "alice", "phone").await;
    let id = a.id.clone();
    let mut old = a;
    let mut b = online(&s, "bob", "desk").await;
    b.send(&chat("alice@localhost/phone", "m0")).await;
    assert_eq!(bodies(&mut old, 1).await, vec!["m0"]);
    // A second connection resumes while the first still looks alive to the server.
    let mut new = SmClient {
        c: Client::connect(s.c2s).await,
        user: "alice".into(),
        auto_ack: true,
        id,
        h: 0,
        acked: 0,
        out: Default::default(),
        acks: Vec::new(),
        early: Vec::new(),
    };
    let r = new.resume(s.c2s).await;
    assert_eq!(r.name(), "resumed", "{r}");
    assert_eq!(old.c.stream_error().await.as_deref(), Some("conflict"));
    // h=0: the one message is sent again, on the new connection only.
    assert_eq!(bodies(&mut new, 1).await, vec!["m0"]);
    b.send(&chat("alice@localhost/phone", "m1")).await;
    assert_eq!(bodies(&mut new, 1).await, vec!["m1"]);
    s.stop().await;
}

#[tokio::test]
async fn failures_unknown_id_someone_elses_id_bad_h_clean_close() {
    let s = server(&["alice", "bob"]).await;
    // Unknown id: failed, and the client can still bind on the same stream.
    let (mut c, _) = authed(s.c2s, "alice").await;
    c.send("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
        .await;
    let e = c.el().await;
    assert_eq!(e.name(), "failed", "{e}");
    assert!(e.has_child("item-not-found", ns::STANZAS), "{e}");
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let e = c.el().await;
    assert_eq!(e.attr("type"), Some("result"), "{e}");

    // Someone else's id is answered like an unknown one.
    let mut a = sm_online(&s, "alice", "phone").await;
    let (mut c, _) = authed(s.c2s, "bob").await;
    c.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='0'/>",
        a.id.as_deref().unwrap_or("")
    ))
    .await;
    let e = c.el().await;
    assert!(e.has_child("item-not-found", ns::STANZAS), "{e}");

    // A too-high h fails the resumption and ends the session.
    a.cut();
    a.h = 50;
    let e = a.resume(s.c2s).await;
    assert_eq!(e.name(), "failed", "{e}");
    assert!(e.has_child("handled-count-too-high", SM), "{e}");
    a.h = 0;
    let e = a.resume(s.c2s).await;
    assert_eq!(e.name(), "failed", "the session is gone: {e}");

    // Closing the stream cleanly ends the session: nothing to resume.
    let mut a = sm_online(&s, "alice", "desk").await;
    a.c.send("</stream:stream>").await;
    while a.recv().await.is_some() {}
    let e = a.resume(s.c2s).await;
    assert!(e.has_child("item-not-found", ns::STANZAS), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn expiry_sends_unacknowledged_to_offline_storage_once() {
    let s = server_with(&["alice", "bob"], |c| c.sm.resume_timeout_secs = 1).await;
    let mut a = sm_online(&s, "alice", "phone").await;
    a.auto_ack = false;
    let mut b = online(&s, "bob", "desk").await;
    for i in 0..3 {
        b.send(&chat("alice@localhost", &format!("m{i}"))).await;
    }
    assert_eq!(bodies(&mut a, 3).await.len(), 3);
    // m0 was handled and acknowledged, m1 and m2 were not.
    a.c.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", a.h - 2))
        .await;
    a.cut();
    b.send(&chat("alice@localhost/phone", "m3")).await;
    drain(&mut b).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = a.resume(s.c2s).await;
    assert!(e.has_child("item-not-found", ns::STANZAS), "expired: {e}");
    // A fresh login gets exactly the unacknowledged and queued messages, in order.
    let mut again = online(&s, "alice", "phone").await;
    let mut got = Vec::new();
    for e in drain(&mut again).await {
        if e.name() == "message" {
            assert!(e.has_child("delay", "urn:xmpp:delay"), "{e}");
            got.extend(body(&e));
        }
    }
    assert_eq!(got, vec!["m1", "m2", "m3"]);
    s.stop().await;
}

#[tokio::test]
async fn carbons_and_expiry_do_not_duplicate() {
    // Alice has a desktop with carbons and a phone with carbons and stream management.
    // A message to the phone is copied to the desktop; when the phone never acknowledges
    // it and its session expires, the message goes to offline storage for the phone's
    // next login — not to the desktop a second time.
    let s = server_with(&["alice", "bob"], |c| c.sm.resume_timeout_secs = 1).await;
    let mut desk = online(&s, "alice", "desk").await;
    let mut phone = online(&s, "alice", "phone").await;
    for c in [&mut desk, &mut phone] {
        let r = c
            .iq(
                "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
                "c",
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    let mut phone = SmClient::enable(phone, "alice").await;
    phone.auto_ack = false;
    drain(&mut desk).await;
    let mut b = online(&s, "bob", "r").await;
    b.send(&chat("alice@localhost/phone", "hello")).await;
    assert_eq!(bodies(&mut phone, 1).await, vec!["hello"]);
    phone.cut();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = drain(&mut desk).await;
    let messages: Vec<&Element> = seen.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(messages.len(), 1, "{seen:?}");
    assert!(messages[0].has_child("received", "urn:xmpp:carbons:2"));
    // The phone's next session gets it from offline storage.
    let mut phone = online(&s, "alice", "phone").await;
    let got: Vec<String> = drain(&mut phone)
        .await
        .iter()
        .filter(|e| e.name() == "message")
        .filter_map(body)
        .collect();
    assert_eq!(got, vec!["hello"]);
    s.stop().await;
}
