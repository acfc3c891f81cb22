//! The per-user services: vcard-temp, private storage, blocking, carbons, last activity,
//! entity time, and disco#info on a bare JID.

mod common;
mod im_util;

use common::*;
use im_util::*;
use starling::ns;

#[tokio::test]
async fn vcard_set_get_by_others_and_size_limit() {
    let s = server_with(&["alice", "bob"], |c| c.im.max_vcard_bytes = 2000).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    let photo = "QUJD".repeat(10);
    let r = a.iq(&format!("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO></vCard></iq>"), "v1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = b
        .iq(
            "<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "v2",
        )
        .await;
    let card = r.child("vCard", ns::VCARD).expect("vCard");
    assert_eq!(card.child_text("FN", ns::VCARD).as_deref(), Some("Alice"));
    let bin = card
        .child("PHOTO", ns::VCARD)
        .and_then(|p| p.child_text("BINVAL", ns::VCARD));
    assert_eq!(bin.as_deref(), Some(photo.as_str()));
    // Only the owner writes; oversized cards are refused and the old one kept.
    let r = b
        .iq(
            "<iq type='set' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "v3",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let big = "A".repeat(3000);
    let r = a
        .iq(
            &format!(
                "<iq type='set' id='v4'><vCard xmlns='vcard-temp'><FN>{big}</FN></vCard></iq>"
            ),
            "v4",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
    let r = a
        .iq(
            "<iq type='get' id='v5'><vCard xmlns='vcard-temp'/></iq>",
            "v5",
        )
        .await;
    let fname = r
        .child("vCard", ns::VCARD)
        .and_then(|c| c.child_text("FN", ns::VCARD));
    assert_eq!(fname.as_deref(), Some("Alice"));
    s.stop().await;
}

#[tokio::test]
async fn private_storage_round_trip_owner_only() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    let r = a.iq("<iq type='set' id='p1'><query xmlns='jabber:iq:private'><prefs xmlns='x:test'><color>blue</color></prefs></query></iq>", "p1").await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = a.iq("<iq type='get' id='p2'><query xmlns='jabber:iq:private'><prefs xmlns='x:test'/></query></iq>", "p2").await;
    let prefs = r
        .child("query", ns::PRIVATE)
        .and_then(|q| q.child("prefs", "x:test"))
        .expect("stored fragment");
    assert_eq!(prefs.child_text("color", "x:test").as_deref(), Some("blue"));
    let r = b.iq("<iq type='get' id='p3' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='x:test'/></query></iq>", "p3").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let r = a.iq("<iq type='get' id='p4'><query xmlns='jabber:iq:private'><a xmlns='jabber:iq:private'/></query></iq>", "p4").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
    s.stop().await;
}

#[tokio::test]
async fn blocking_both_ways_with_pushes() {
    let s = server(&["alice", "bob"]).await;
    let mut a1 = online(&s, "alice", "one").await;
    let mut a2 = online(&s, "alice", "two").await;
    let mut b = online(&s, "bob", "r").await;
    let r = a1.iq("<iq type='set' id='self'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>", "self").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
    let r = a1.iq("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>", "b1").await;
    assert_eq!(r.attr("type"), Some("result"));
    let push = a2.wait_for(|e| e.has_child("block", ns::BLOCKING)).await;
    assert_eq!(push.attr("type"), Some("set"));
    let r = a1
        .iq(
            "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl",
        )
        .await;
    let items: Vec<_> = r
        .child("blocklist", ns::BLOCKING)
        .unwrap()
        .children()
        .map(|i| i.attr("jid").unwrap().to_string())
        .collect();
    assert_eq!(items, ["bob@localhost"]);
    // Bob's message is refused; Alice's message to Bob is refused with <blocked/>.
    b.send("<message to='alice@localhost' id='m1' type='chat'><body>hi</body></message>")
        .await;
    let e = b.wait_for(|e| e.attr("id") == Some("m1")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    a1.send("<message to='bob@localhost' id='m2' type='chat'><body>hi</body></message>")
        .await;
    let e = a1.wait_for(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    assert!(e
        .child("error", ns::CLIENT)
        .unwrap()
        .has_child("blocked", ns::BLOCKING_ERRORS));
    // Bob's IQ too; his presence is dropped silently.
    let e = b
        .iq(
            "<iq type='get' id='i1' to='alice@localhost/one'><ping xmlns='urn:xmpp:ping'/></iq>",
            "i1",
        )
        .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    b.send("<presence to='alice@localhost'/>").await;
    assert!(drain(&mut a1)
        .await
        .iter()
        .all(|e| e.attr("from") != Some("bob@localhost/r")));
    // Unblock all: messages flow again.
    let r = a1
        .iq(
            "<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'/></iq>",
            "u",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    b.send("<message to='alice@localhost/one' type='chat'><body>again</body></message>")
        .await;
    let m = a1.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("again"));
    s.stop().await;
}

#[tokio::test]
async fn carbons_copy_sent_and_received_messages() {
    let s = server(&["alice", "bob"]).await;
    let mut a1 = online(&s, "alice", "one").await;
    let mut a2 = online(&s, "alice", "two").await;
    let mut b = online(&s, "bob", "r").await;
    let r = a2
        .iq(
            "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
            "c",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    a1.send("<message to='bob@localhost' type='chat'><body>out</body></message>")
        .await;
    b.wait_for(|e| e.name() == "message").await;
    let c = a2.wait_for(|e| e.name() == "message").await;
    let fwd = c
        .child("sent", ns::CARBONS)
        .and_then(|s| s.child("forwarded", ns::FORWARD))
        .expect("sent carbon");
    let inner = fwd.child("message", ns::CLIENT).unwrap();
    assert_eq!(inner.attr("from"), Some("alice@localhost/one"));
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    b.send("<message to='alice@localhost/one' type='chat'><body>in</body></message>")
        .await;
    a1.wait_for(|e| e.name() == "message").await;
    let c = a2.wait_for(|e| e.name() == "message").await;
    assert!(c.has_child("received", ns::CARBONS), "{c}");
    // Private messages are not copied.
    b.send("<message to='alice@localhost/one' type='chat'><body>psst</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    a1.wait_for(|e| e.name() == "message").await;
    assert!(drain(&mut a2).await.iter().all(|e| e.name() != "message"));
    s.stop().await;
}

#[tokio::test]
async fn last_activity_time_and_bare_jid_disco() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let r = a
        .iq(
            "<iq type='get' id='t' to='localhost'><time xmlns='urn:xmpp:time'/></iq>",
            "t",
        )
        .await;
    let t = r.child("time", ns::TIME).expect("time");
    assert_eq!(t.child_text("tzo", ns::TIME).as_deref(), Some("+00:00"));
    assert!(t.child_text("utc", ns::TIME).unwrap().ends_with('Z'));
    let r = a
        .iq(
            "<iq type='get' id='l' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
            "l",
        )
        .await;
    assert!(r
        .child("query", ns::LAST)
        .unwrap()
        .attr("seconds")
        .is_some());
    // Not subscribed to bob: his last activity is not ours to see.
    let r = a
        .iq(
            "<iq type='get' id='l2' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>",
            "l2",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let r = a.iq("<iq type='get' id='d' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d").await;
    let features: Vec<_> = r
        .child("query", ns::DISCO_INFO)
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var"))
        .map(str::to_string)
        .collect();
    assert!(features.iter().any(|f| f == ns::VCARD), "{features:?}");
    assert!(features.iter().any(|f| f == ns::LAST), "{features:?}");
    s.stop().await;
}
