//! XEP-0045 over real sockets: creation, joining, messages, subject, history, nick
//! changes, leaving, private messages, invitations, discovery, self-ping (XEP-0410),
//! occupant ids (XEP-0421), persistence across a restart and bad input.

mod common;

use common::muc::*;
use common::{stanza_error, TestServer};
use starling::ns;

#[tokio::test]
async fn create_lock_configure_join_talk_and_leave() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;

    // §10.1.2: the creator's self-presence has 110 and 201; the room is locked.
    let got = join(&mut alice, "lounge", "Alice", "").await;
    let me = got
        .iter()
        .find(|e| is_presence_from(e, &format!("{}/Alice", room("lounge"))))
        .expect("self-presence");
    let c = codes(me);
    assert!(
        c.contains(&"110".into()) && c.contains(&"201".into()),
        "{me}"
    );
    assert_eq!(item(me).attr("affiliation"), Some("owner"));
    assert_eq!(item(me).attr("role"), Some("moderator"));
    assert!(me.child("occupant-id", ns::OCCUPANT_ID).is_some());
    let subject = got.last().unwrap();
    assert_eq!(
        subject.child_text("subject", ns::CLIENT).as_deref(),
        Some("")
    );

    // Locked: nobody else gets in until the owner has configured it.
    let refused = join(&mut bob, "lounge", "Bob", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("item-not-found")
    );

    // Instant room: accept the default configuration.
    let r = configure(&mut alice, "lounge", &[]).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    let got = join(&mut bob, "lounge", "Bob", "").await;
    // Existing occupants first, then the newcomer's own presence with 110, then subject.
    let names: Vec<&str> = got.iter().filter_map(|e| e.attr("from")).collect();
    assert_eq!(
        names,
        [
            format!("{}/Alice", room("lounge")),
            format!("{}/Bob", room("lounge")),
            room("lounge")
        ]
    );
    assert_eq!(codes(&got[1]), ["110"]);
    assert_eq!(item(&got[1]).attr("role"), Some("participant"));
    // Semi-anonymous by default: Bob does not see Alice's real JID; Alice (a moderator)
    // sees Bob's.
    assert_eq!(item(&got[0]).attr("jid"), None);
    let bob_seen = alice
        .wait_for(|e| is_presence_from(e, &format!("{}/Bob", room("lounge"))))
        .await;
    assert_eq!(item(&bob_seen).attr("jid"), Some("bob@localhost/r"));

    // Nick conflict for another user.
    let refused = join(&mut carol, "lounge", "Bob", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("conflict")
    );

    // Groupchat: every occupant sees the same messages in the same order, ids kept.
    for i in 0..5 {
        let (c, n) = if i % 2 == 0 {
            (&mut alice, "a")
        } else {
            (&mut bob, "b")
        };
        say(c, "lounge", &format!("{n}{i}"), &format!("msg {i}")).await;
    }
    let mut orders = Vec::new();
    for c in [&mut alice, &mut bob] {
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let e = c.wait_for(is_groupchat).await;
            assert!(e.child("occupant-id", ns::OCCUPANT_ID).is_some());
            // The sender's id comes back with the reflection (clients match on it).
            seen.push((e.attr("id").unwrap().to_string(), body(&e).unwrap()));
        }
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1], "both occupants see one order");
    for (id, text) in &orders[0] {
        assert_eq!(&id[1..], &text[4..], "id {id} belongs to {text}");
    }

    // Subject change, broadcast from the changer's occupant JID.
    alice
        .send(&format!(
            "<message type='groupchat' to='{}'><subject>Tea</subject></message>",
            room("lounge")
        ))
        .await;
    let s = bob
        .wait_for(|e| e.name() == "message" && e.has_child("subject", ns::CLIENT))
        .await;
    assert_eq!(
        s.attr("from"),
        Some(format!("{}/Alice", room("lounge")).as_str())
    );
    assert_eq!(s.child_text("subject", ns::CLIENT).as_deref(), Some("Tea"));

    // Nick change: 303 with the new nick, then available as the new nick.
    bob.send(&format!("<presence to='{}/Robert'/>", room("lounge")))
        .await;
    let gone = alice
        .wait_for(|e| is_presence_from(e, &format!("{}/Bob", room("lounge"))))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert_eq!(codes(&gone), ["303"]);
    assert_eq!(item(&gone).attr("nick"), Some("Robert"));
    let back = alice
        .wait_for(|e| is_presence_from(e, &format!("{}/Robert", room("lounge"))))
        .await;
    assert_eq!(back.attr("type"), None);
    let own = bob
        .wait_for(|e| is_presence_from(e, &format!("{}/Bob", room("lounge"))))
        .await;
    assert_eq!(codes(&own), ["303", "110"]);

    // Leaving: unavailable to everyone, with 110 for the one who left.
    bob.send(&format!(
        "<presence type='unavailable' to='{}/Robert'><status>bye</status></presence>",
        room("lounge")
    ))
    .await;
    let own = bob
        .wait_for(|e| {
            is_presence_from(e, &format!("{}/Robert", room("lounge")))
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(codes(&own), ["110"]);
    let seen = alice
        .wait_for(|e| {
            is_presence_from(e, &format!("{}/Robert", room("lounge")))
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(
        seen.child_text("status", ns::CLIENT).as_deref(),
        Some("bye")
    );
    ts.stop().await;
}

#[tokio::test]
async fn reflection_order_is_identical_for_everyone() {
    let ts = TestServer::start().await;
    let mut clients = Vec::new();
    let names = ["u1", "u2", "u3", "u4"];
    for (i, n) in names.iter().enumerate() {
        let mut c = user(&ts, n).await;
        if i == 0 {
            create_instant(&mut c, "order", n).await;
        } else {
            join(&mut c, "order", n, "").await;
        }
        clients.push(c);
    }
    // Everyone talks at once.
    for round in 0..10 {
        for (i, c) in clients.iter_mut().enumerate() {
            say(c, "order", &format!("{i}-{round}"), &format!("{i}-{round}")).await;
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let e = c.wait_for(is_groupchat).await;
            if let Some(b) = body(&e) {
                seen.push(b);
            }
        }
        orders.push(seen);
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0], "every occupant sees one order");
    }
    ts.stop().await;
}

#[tokio::test]
async fn history_on_join_honours_limits_and_carries_delay() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    create_instant(&mut alice, "hist", "Alice").await;
    for i in 0..5 {
        say(
            &mut alice,
            "hist",
            &format!("h{i}"),
            &format!("history {i}"),
        )
        .await;
        alice.wait_for(is_groupchat).await;
    }
    let mut bob = user(&ts, "bob").await;
    let got = join(&mut bob, "hist", "Bob", "<history maxstanzas='2'/>").await;
    let hist: Vec<_> = got.iter().filter(|e| body(e).is_some()).collect();
    assert_eq!(
        hist.iter().map(|e| body(e).unwrap()).collect::<Vec<_>>(),
        ["history 3", "history 4"]
    );
    for h in &hist {
        let d = h.child("delay", ns::DELAY).expect("delay");
        assert_eq!(d.attr("from"), Some(room("hist").as_str()));
        assert!(d.attr("stamp").unwrap().ends_with('Z'));
        assert_eq!(
            h.attr("from"),
            Some(format!("{}/Alice", room("hist")).as_str())
        );
    }
    // The subject comes after the history.
    assert!(got.last().unwrap().has_child("subject", ns::CLIENT));

    let mut carol = user(&ts, "carol").await;
    let got = join(&mut carol, "hist", "Carol", "<history maxchars='0'/>").await;
    assert!(
        got.iter().all(|e| body(e).is_none()),
        "maxchars=0: no history"
    );

    let mut dave = user(&ts, "dave").await;
    let got = join(
        &mut dave,
        "hist",
        "Dave",
        "<history since='2999-01-01T00:00:00Z'/>",
    )
    .await;
    assert!(
        got.iter().all(|e| body(e).is_none()),
        "since in the future: none"
    );

    let mut erin = user(&ts, "erin").await;
    let got = join(&mut erin, "hist", "Erin", "").await;
    assert_eq!(got.iter().filter(|e| body(e).is_some()).count(), 5);
    ts.stop().await;
}

#[tokio::test]
async fn persistent_room_survives_restart() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    join(&mut alice, "keep", "Alice", "").await;
    let r = configure(
        &mut alice,
        "keep",
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_roomname", "Kept room"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = alice
        .iq(
            &format!("<iq type='set' id='m1' to='{}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member' jid='bob@localhost'/></query></iq>", room("keep")),
            "m1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    alice
        .send(&format!(
            "<message type='groupchat' to='{}'><subject>Kept subject</subject></message>",
            room("keep")
        ))
        .await;
    alice
        .wait_for(|e| e.name() == "message" && e.has_child("subject", ns::CLIENT))
        .await;
    drop(alice);
    ts.add_user("bob", "pw");
    ts.add_user("carol", "pw");
    let dir = ts.stop_keep_dir().await;

    let ts = TestServer::start_in(dir).await;
    // The room is back in the directory, with its configuration.
    let mut bob = login(&ts, "bob").await;
    let items = bob
        .iq(&format!("<iq type='get' id='d1' to='{MUC}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"), "d1")
        .await;
    let q = items.child("query", ns::DISCO_ITEMS).unwrap();
    assert!(q.children().any(
        |i| i.attr("jid") == Some(room("keep").as_str()) && i.attr("name") == Some("Kept room")
    ));
    // Members-only, and Bob's membership survived.
    let got = join(&mut bob, "keep", "Bob", "").await;
    let me = got
        .iter()
        .find(|e| codes(e).contains(&"110".into()))
        .expect("joined");
    assert_eq!(item(me).attr("affiliation"), Some("member"));
    assert_eq!(
        got.last()
            .unwrap()
            .child_text("subject", ns::CLIENT)
            .as_deref(),
        Some("Kept subject")
    );
    let mut carol = login(&ts, "carol").await;
    let refused = join(&mut carol, "keep", "Carol", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("registration-required")
    );
    // And Alice is still its owner.
    let mut alice = login(&ts, "alice").await;
    let got = join(&mut alice, "keep", "Alice", "").await;
    let me = got
        .iter()
        .find(|e| codes(e).contains(&"110".into()))
        .expect("joined");
    assert_eq!(item(me).attr("affiliation"), Some("owner"));
    assert!(!codes(me).contains(&"201".into()));
    ts.stop().await;
}

#[tokio::test]
async fn private_messages_invitations_and_self_ping() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;
    create_instant(&mut alice, "pm", "Alice").await;
    join(&mut bob, "pm", "Bob", "").await;

    // Private message, relayed from the sender's occupant JID.
    alice
        .send(&format!(
            "<message type='chat' to='{}/Bob' id='pm1'><body>psst</body></message>",
            room("pm")
        ))
        .await;
    let m = bob.wait_for(|e| e.attr("id") == Some("pm1")).await;
    assert_eq!(
        m.attr("from"),
        Some(format!("{}/Alice", room("pm")).as_str())
    );
    assert!(m.has_child("x", ns::MUC_USER));
    // To an absent nick.
    alice
        .send(&format!(
            "<message type='chat' to='{}/Nobody' id='pm2'><body>?</body></message>",
            room("pm")
        ))
        .await;
    let e = alice.wait_for(|e| e.attr("id") == Some("pm2")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("item-not-found"));
    // From a non-occupant.
    carol
        .send(&format!(
            "<message type='chat' to='{}/Bob' id='pm3'><body>hi</body></message>",
            room("pm")
        ))
        .await;
    let e = carol.wait_for(|e| e.attr("id") == Some("pm3")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));

    // Mediated invitation (§7.8.2) from the owner, to Carol's bare JID (so she must be
    // available to receive it).
    carol.available().await;
    alice
        .send(&format!(
            "<message to='{}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='carol@localhost'><reason>join us</reason></invite></x></message>",
            room("pm")
        ))
        .await;
    let inv = carol
        .wait_for(|e| e.name() == "message" && e.has_child("x", ns::MUC_USER))
        .await;
    assert_eq!(inv.attr("from"), Some(room("pm").as_str()));
    let invite = inv
        .child("x", ns::MUC_USER)
        .and_then(|x| x.child("invite", ns::MUC_USER))
        .unwrap();
    assert_eq!(invite.attr("from"), Some("alice@localhost/r"));
    assert_eq!(
        invite.child_text("reason", ns::MUC_USER).as_deref(),
        Some("join us")
    );

    // Direct invitation (XEP-0249) passes through unchanged.
    alice
        .send(&format!(
            "<message to='carol@localhost/r' id='dinv'><x xmlns='jabber:x:conference' jid='{}' reason='come'/></message>",
            room("pm")
        ))
        .await;
    let d = carol.wait_for(|e| e.attr("id") == Some("dinv")).await;
    let x = d.child("x", ns::CONFERENCE).unwrap();
    assert_eq!(x.attr("jid"), Some(room("pm").as_str()));

    // XEP-0410 self-ping: answered for an occupant, refused for anyone else.
    let r = bob
        .iq(
            &format!(
                "<iq type='get' id='sp1' to='{}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>",
                room("pm")
            ),
            "sp1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = carol
        .iq(
            &format!(
                "<iq type='get' id='sp2' to='{}/Carol'><ping xmlns='urn:xmpp:ping'/></iq>",
                room("pm")
            ),
            "sp2",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
    ts.stop().await;
}

#[tokio::test]
async fn discovery_and_occupant_ids() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    // The server lists the MUC service.
    let items = alice
        .iq("<iq type='get' id='s1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "s1")
        .await;
    assert!(items
        .child("query", ns::DISCO_ITEMS)
        .unwrap()
        .children()
        .any(|i| i.attr("jid") == Some(MUC)));
    let info = alice
        .iq(&format!("<iq type='get' id='s2' to='{MUC}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"), "s2")
        .await;
    let q = info.child("query", ns::DISCO_INFO).unwrap();
    assert!(q
        .children()
        .any(|c| c.attr("category") == Some("conference")));
    assert!(q.children().any(|c| c.attr("var") == Some(ns::MUC)));

    let got = create_instant(&mut alice, "disco", "Alice").await;
    let first_id = got
        .iter()
        .find(|e| e.name() == "presence")
        .and_then(|p| p.child("occupant-id", ns::OCCUPANT_ID))
        .and_then(|o| o.attr("id"))
        .unwrap()
        .to_string();
    let info = alice
        .iq(&format!("<iq type='get' id='r1' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("disco")), "r1")
        .await;
    let q = info.child("query", ns::DISCO_INFO).unwrap();
    for f in [
        ns::MUC,
        "muc_public",
        "muc_temporary",
        "muc_open",
        "muc_semianonymous",
        ns::OCCUPANT_ID,
        ns::MUC_SELF_PING,
    ] {
        assert!(
            q.children().any(|c| c.attr("var") == Some(f)),
            "missing {f}: {q}"
        );
    }
    let form = q.child("x", ns::DATA_FORMS).unwrap();
    assert!(form.children().any(|f| f.attr("var") == Some("FORM_TYPE")
        && f.child_text("value", ns::DATA_FORMS).as_deref() == Some(ns::MUC_ROOMINFO)));
    assert!(form
        .children()
        .any(|f| f.attr("var") == Some("muc#roominfo_occupants")
            && f.child_text("value", ns::DATA_FORMS).as_deref() == Some("1")));
    let items = alice
        .iq(&format!("<iq type='get' id='s3' to='{MUC}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"), "s3")
        .await;
    assert!(items
        .child("query", ns::DISCO_ITEMS)
        .unwrap()
        .children()
        .any(|i| i.attr("jid") == Some(room("disco").as_str())));
    // Occupants listed to occupants.
    let items = alice
        .iq(&format!("<iq type='get' id='r2' to='{}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", room("disco")), "r2")
        .await;
    assert!(items
        .child("query", ns::DISCO_ITEMS)
        .unwrap()
        .children()
        .any(|i| i.attr("jid") == Some(format!("{}/Alice", room("disco")).as_str())));

    // The occupant id is the same after leaving and coming back under another nick
    // (Bob stays, so the room lives on).
    let mut bob = user(&ts, "bob").await;
    join(&mut bob, "disco", "Bob", "").await;
    alice
        .send(&format!(
            "<presence type='unavailable' to='{}/Alice'/>",
            room("disco")
        ))
        .await;
    alice
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    join(&mut alice, "disco", "Ally", "").await;
    let p = bob
        .wait_for(|e| is_presence_from(e, &format!("{}/Ally", room("disco"))))
        .await;
    let again = p
        .child("occupant-id", ns::OCCUPANT_ID)
        .and_then(|o| o.attr("id"))
        .unwrap();
    assert_eq!(again, first_id);
    ts.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_xep_errors_and_the_room_keeps_working() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    create_instant(&mut alice, "bad", "Alice").await;

    // Presence to the room without a nick.
    bob.send(&format!(
        "<presence to='{}'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        room("bad")
    ))
    .await;
    let e = bob.wait_for(|e| e.name() == "presence").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("jid-malformed"));
    // A whitespace-only nick.
    bob.send(&format!(
        "<presence to='{}/ '><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        room("bad")
    ))
    .await;
    let e = bob.wait_for(|e| e.name() == "presence").await;
    assert!(stanza_error(&e).is_some(), "{e}");
    // Groupchat from a non-occupant.
    say(&mut bob, "bad", "x1", "let me in").await;
    let e = bob.wait_for(|e| e.attr("id") == Some("x1")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    // A message to a room that does not exist.
    say(&mut bob, "nosuchroom", "x2", "hello?").await;
    let e = bob.wait_for(|e| e.attr("id") == Some("x2")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("item-not-found"));
    // Config forms with unknown or out-of-range fields; non-owners may not configure.
    for fields in [
        &[("muc#roomconfig_nonsense", "1")][..],
        &[("muc#roomconfig_maxusers", "-1")],
        &[("muc#maxhistoryfetch", "1000000")],
    ] {
        let r = configure(&mut alice, "bad", fields).await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("not-acceptable"),
            "{fields:?}"
        );
    }
    join(&mut bob, "bad", "Bob", "").await;
    let r = configure(&mut bob, "bad", &[]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Many join/leave cycles; the room still works for everyone else.
    let mut carol = user(&ts, "carol").await;
    for i in 0..300 {
        let nick = format!("c{i}");
        carol
            .send(&format!(
                "<presence to='{}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence><presence type='unavailable' to='{}/{nick}'/>",
                room("bad"),
                room("bad")
            ))
            .await;
    }
    say(&mut carol, "bad", "late", "not inside").await;
    let e = carol.wait_for(|e| e.attr("id") == Some("late")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    say(&mut alice, "bad", "ok", "still here").await;
    let m = bob.wait_for(|e| e.attr("id") == Some("ok")).await;
    assert_eq!(body(&m).as_deref(), Some("still here"));
    ts.stop().await;
}

/// A groupchat message is built once and shared by every occupant's queue: each copy
/// still says who it is for, stream management counts it, an inactive (XEP-0352) client
/// still gets it, and ids an occupant forged are gone from every copy.
#[tokio::test]
async fn shared_fan_out_reaches_every_kind_of_session() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    create_instant(&mut alice, "fan", "Alice").await;
    let mut bob = user(&ts, "bob").await;
    join(&mut bob, "fan", "Bob", "").await;
    let mut carol = user(&ts, "carol").await;
    join(&mut carol, "fan", "Carol", "").await;
    carol.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    bob.wait_for(|e| is_presence_from(e, &format!("{}/Carol", room("fan"))))
        .await;
    // From here on the groupchat message is the only stanza Bob gets.
    bob.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    bob.wait_for(|e| e.name() == "enabled").await;
    alice
        .wait_for(|e| is_presence_from(e, &format!("{}/Carol", room("fan"))))
        .await;
    alice
        .send(&format!(
            "<message type='groupchat' to='{}' id='g1'><body>to &amp; all</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged-1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{}' id='forged-2'/>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged-3'/></message>",
            room("fan"),
            room("fan")
        ))
        .await;
    let mut ids = Vec::new();
    for (c, who) in [
        (&mut alice, "alice@localhost/r"),
        (&mut bob, "bob@localhost/r"),
        (&mut carol, "carol@localhost/r"),
    ] {
        let m = c.wait_for(is_groupchat).await;
        assert_eq!(m.attr("to"), Some(who), "{m}");
        assert_eq!(
            m.attr("from"),
            Some(format!("{}/Alice", room("fan")).as_str())
        );
        assert_eq!(m.attr("id"), Some("g1"));
        assert_eq!(body(&m).as_deref(), Some("to & all"));
        let sids: Vec<&starling::xml::Element> = m
            .children()
            .filter(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
            .collect();
        assert!(
            sids.iter()
                .all(|s| s.attr("by") == Some(room("fan").as_str())
                    && !s.attr("id").unwrap_or("").starts_with("forged")),
            "forged stanza-id kept: {m}"
        );
        let oid = m.child("occupant-id", ns::OCCUPANT_ID).unwrap();
        assert_ne!(oid.attr("id"), Some("forged-3"));
        ids.push((
            oid.attr("id").map(str::to_string),
            sids.first().and_then(|s| s.attr("id")).map(str::to_string),
        ));
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "copies differ: {ids:?}"
    );
    // Stream management counted it: the server asks Bob to acknowledge, and takes an
    // acknowledgement of exactly one stanza (one more than it sent is a stream error).
    bob.wait_for(|e| e.name() == "r" && e.ns() == "urn:xmpp:sm:3")
        .await;
    bob.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    let pong = bob
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    ts.stop().await;
}
