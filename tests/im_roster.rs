//! RFC 6121 rosters, subscriptions and presence over real sockets: pushes carry the
//! subscription states of Appendix A, probes and broadcasts reach the right resources.

mod common;
mod im_util;

use common::*;
use im_util::*;

#[tokio::test]
async fn roster_add_update_remove_with_pushes_to_all_interested_resources() {
    let s = server(&["alice", "bob"]).await;
    let mut a1 = online(&s, "alice", "one").await;
    let mut a2 = online(&s, "alice", "two").await;
    a1.send("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='Bob@localhost' name='Bob'><group>Friends</group></item></query></iq>").await;
    let item = push_for(&mut a1, "bob@localhost").await;
    assert_eq!(attrs(&item), (Some("none"), None, None));
    assert_eq!(item.attr("name"), Some("Bob"));
    assert_eq!(item.child_text("group", ROSTER).as_deref(), Some("Friends"));
    let r = a1.wait_for(|e| e.attr("id") == Some("s1")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let item2 = push_for(&mut a2, "bob@localhost").await;
    assert_eq!(item2.attr("name"), Some("Bob"));

    let r = a1
        .iq(
            "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
            "g",
        )
        .await;
    let q = r.child("query", ROSTER).unwrap();
    assert_eq!(q.children().count(), 1);

    a1.send("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>").await;
    let item = push_for(&mut a2, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("remove"));
    let r = a1.wait_for(|e| e.attr("id") == Some("rm")).await;
    assert_eq!(r.attr("type"), Some("result"));
    // Removing what is not there.
    let r = a1.iq("<iq type='set' id='rm2'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>", "rm2").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    s.stop().await;
}

#[tokio::test]
async fn roster_bad_input_gets_the_rfc_errors() {
    let s = server(&["alice"]).await;
    let mut a = online(&s, "alice", "r").await;
    let cases = [
        (
            "<item jid='a@localhost'/><item jid='b@localhost'/>",
            "bad-request",
        ),
        ("<item jid='a@@localhost'/>", "jid-malformed"),
        (
            "<item jid='b@localhost'><group></group></item>",
            "not-acceptable",
        ),
        (
            "<item jid='b@localhost'><group>x</group><group>x</group></item>",
            "bad-request",
        ),
        ("", "bad-request"),
    ];
    for (i, (items, cond)) in cases.iter().enumerate() {
        let id = format!("bad{i}");
        let r = a
            .iq(
                &format!(
                    "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'>{items}</query></iq>"
                ),
                &id,
            )
            .await;
        assert_eq!(stanza_error(&r).as_deref(), Some(*cond), "{items}: {r}");
    }
    // Reading someone else's roster.
    let r = a
        .iq(
            "<iq type='get' id='other' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>",
            "other",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"));
    // Presence of an unknown type.
    a.send("<presence type='bogus' to='bob@localhost' id='p1'/>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("p1")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("bad-request"));
    s.stop().await;
}

#[tokio::test]
async fn roster_size_limit_is_not_allowed() {
    let s = server_with(&["alice"], |c| c.im.max_roster_items = 2).await;
    let mut a = online(&s, "alice", "r").await;
    for (i, who) in ["b", "c", "d"].iter().enumerate() {
        let id = format!("add{i}");
        let r = a.iq(&format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='{who}@localhost'/></query></iq>"), &id).await;
        if i < 2 {
            assert_eq!(r.attr("type"), Some("result"));
        } else {
            assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn roster_versioning_empty_result_pushes_or_full_roster() {
    let s = server(&["alice"]).await;
    let mut a = online(&s, "alice", "r").await;
    let r = a
        .iq(
            "<iq type='get' id='v0'><query xmlns='jabber:iq:roster' ver=''/></iq>",
            "v0",
        )
        .await;
    let v0 = r
        .child("query", ROSTER)
        .unwrap()
        .attr("ver")
        .unwrap()
        .to_string();
    for (i, who) in ["b", "c"].iter().enumerate() {
        let id = format!("add{i}");
        a.iq(&format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='{who}@localhost'/></query></iq>"), &id).await;
    }
    // Up to date: empty result.
    let r = a
        .iq(
            "<iq type='get' id='cur'><query xmlns='jabber:iq:roster' ver='2'/></iq>",
            "cur",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.child("query", ROSTER).is_none());
    // Missed additions only: pushes then an empty result.
    a.send(&format!(
        "<iq type='get' id='old'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>"
    ))
    .await;
    let mut pushed = Vec::new();
    loop {
        let e = a.el().await;
        if e.attr("id") == Some("old") {
            assert!(e.child("query", ROSTER).is_none());
            break;
        }
        if is_push(&e) {
            pushed.push(push_item(&e).attr("jid").unwrap().to_string());
        }
    }
    assert_eq!(pushed, vec!["b@localhost", "c@localhost"]);
    // After a removal an old version gets the whole roster.
    a.iq("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='b@localhost' subscription='remove'/></query></iq>", "rm").await;
    let r = a
        .iq(
            "<iq type='get' id='full'><query xmlns='jabber:iq:roster' ver='1'/></iq>",
            "full",
        )
        .await;
    let q = r.child("query", ROSTER).expect("full roster");
    assert_eq!(q.attr("ver"), Some("3"));
    assert_eq!(q.children().count(), 1);
    s.stop().await;
}

#[tokio::test]
async fn subscription_handshake_both_ways_and_presence() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "home").await;
    let mut b = online(&s, "bob", "work").await;

    a.send("<presence type='subscribe' to='bob@localhost/work' id='sub1'><status>hi</status></presence>").await;
    let item = push_for(&mut a, "bob@localhost").await;
    assert_eq!(attrs(&item), (Some("none"), Some("subscribe"), None));
    let req = b
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(
        req.attr("from"),
        Some("alice@localhost"),
        "bare JID stamped"
    );
    assert_eq!(
        req.child_text("status", starling::ns::CLIENT).as_deref(),
        Some("hi")
    );

    b.send("<presence type='subscribed' to='alice@localhost'/>")
        .await;
    let item = push_for(&mut b, "alice@localhost").await;
    assert_eq!(attrs(&item), (Some("from"), None, None));
    let item = push_for(&mut a, "bob@localhost").await;
    assert_eq!(attrs(&item), (Some("to"), None, None));
    presence_of(&mut a, Some("subscribed"), "bob@localhost").await;
    // §3.1.5: the new subscriber gets bob's current presence.
    presence_of(&mut a, None, "bob@localhost/work").await;

    // And the other way round.
    b.send("<presence type='subscribe' to='alice@localhost'/>")
        .await;
    let item = push_for(&mut b, "alice@localhost").await;
    assert_eq!(attrs(&item), (Some("from"), Some("subscribe"), None));
    presence_of(&mut a, Some("subscribe"), "bob@localhost").await;
    a.send("<presence type='subscribed' to='bob@localhost'/>")
        .await;
    assert_eq!(
        push_for(&mut a, "bob@localhost").await.attr("subscription"),
        Some("both")
    );
    assert_eq!(
        push_for(&mut b, "alice@localhost")
            .await
            .attr("subscription"),
        Some("both")
    );
    presence_of(&mut b, None, "alice@localhost/home").await;

    // A presence update reaches the contact; logout sends unavailable.
    a.send("<presence><show>away</show></presence>").await;
    let p = presence_of(&mut b, None, "alice@localhost/home").await;
    assert_eq!(
        p.child_text("show", starling::ns::CLIENT).as_deref(),
        Some("away")
    );
    drop(a);
    presence_of(&mut b, Some("unavailable"), "alice@localhost/home").await;

    // Logging in again: probes bring bob's presence; the broadcast reaches bob.
    let mut a = login(&s, "alice", "home").await;
    a.send("<presence/>").await;
    presence_of(&mut a, None, "bob@localhost/work").await;
    presence_of(&mut b, None, "alice@localhost/home").await;

    // Unsubscribing: alice stops seeing bob; bob's roster says "to".
    a.send("<presence type='unsubscribe' to='bob@localhost'/>")
        .await;
    assert_eq!(
        push_for(&mut b, "alice@localhost")
            .await
            .attr("subscription"),
        Some("to")
    );
    presence_of(&mut a, Some("unavailable"), "bob@localhost/work").await;
    s.stop().await;
}

#[tokio::test]
async fn senseless_subscription_stanzas_are_ignored() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    // Nothing to approve or cancel: no state change, nothing delivered, no error.
    a.send("<presence type='unsubscribed' to='bob@localhost'/>")
        .await;
    a.send("<presence type='unsubscribe' to='bob@localhost'/>")
        .await;
    let seen = drain(&mut b).await;
    assert!(
        seen.iter()
            .all(|e| e.name() != "presence" || e.attr("type") == Some("unsubscribe")),
        "{seen:?}"
    );
    let seen = drain(&mut a).await;
    assert!(
        seen.iter().all(|e| e.attr("type") != Some("error")),
        "{seen:?}"
    );
    let r = a
        .iq(
            "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
            "g",
        )
        .await;
    assert_eq!(r.child("query", ROSTER).unwrap().children().count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn pre_approval_answers_the_request_automatically() {
    let s = server(&["alice", "carol"]).await;
    let mut a = online(&s, "alice", "r").await;
    a.send("<presence type='subscribed' to='carol@localhost'/>")
        .await;
    let item = push_for(&mut a, "carol@localhost").await;
    assert_eq!(attrs(&item), (Some("none"), None, Some("true")));
    let mut c = online(&s, "carol", "r").await;
    c.send("<presence type='subscribe' to='alice@localhost'/>")
        .await;
    presence_of(&mut c, Some("subscribed"), "alice@localhost").await;
    assert_eq!(
        push_for(&mut a, "carol@localhost")
            .await
            .attr("subscription"),
        Some("from")
    );
    presence_of(&mut c, None, "alice@localhost/r").await;
    s.stop().await;
}

#[tokio::test]
async fn unanswered_request_is_resent_at_next_login() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    a.send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    push_for(&mut a, "bob@localhost").await;
    for _ in 0..2 {
        let mut b = login(&s, "bob", "r").await;
        b.send("<presence/>").await;
        presence_of(&mut b, Some("subscribe"), "alice@localhost").await;
    }
    s.stop().await;
}

#[tokio::test]
async fn directed_presence_gets_unavailable_on_disconnect() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    a.send("<presence to='bob@localhost'><status>just you</status></presence>")
        .await;
    presence_of(&mut b, None, "alice@localhost/r").await;
    drop(a);
    presence_of(&mut b, Some("unavailable"), "alice@localhost/r").await;
    s.stop().await;
}

#[tokio::test]
async fn probe_of_offline_contact_gets_last_unavailable_with_delay() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    a.send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    presence_of(&mut b, Some("subscribe"), "alice@localhost").await;
    b.send("<presence type='subscribed' to='alice@localhost'/>")
        .await;
    presence_of(&mut a, None, "bob@localhost/r").await;
    b.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    presence_of(&mut a, Some("unavailable"), "bob@localhost/r").await;
    drop(a);
    let mut a = login(&s, "alice", "r2").await;
    a.send("<presence/>").await;
    let p = presence_of(&mut a, Some("unavailable"), "bob@localhost").await;
    assert_eq!(
        p.child_text("status", starling::ns::CLIENT).as_deref(),
        Some("gone fishing")
    );
    assert!(p.has_child("delay", starling::ns::DELAY), "{p}");
    s.stop().await;
}
