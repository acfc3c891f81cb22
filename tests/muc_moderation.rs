//! XEP-0045 moderation over real sockets: kick, ban and the ban list, voice in moderated
//! rooms, member/admin/owner lists, members-only consequences, the owner's protections
//! and room destruction.

mod common;

use common::muc::*;
use common::{stanza_error, Client, TestServer};
use starling::ns;
use starling::xml::Element;

async fn admin_set(c: &mut Client, room_name: &str, id: &str, items: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='{id}' to='{}'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>",
            room(room_name)
        ),
        id,
    )
    .await
}

async fn admin_list(c: &mut Client, room_name: &str, id: &str, attr: &str) -> Vec<Element> {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='{id}' to='{}'><query xmlns='http://jabber.org/protocol/muc#admin'><item {attr}/></query></iq>",
                room(room_name)
            ),
            id,
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.child("query", ns::MUC_ADMIN)
        .unwrap()
        .children()
        .cloned()
        .collect()
}

fn unavailable_from(e: &Element, occupant: &str) -> bool {
    is_presence_from(e, occupant) && e.attr("type") == Some("unavailable")
}

#[tokio::test]
async fn kick_and_ban_with_status_codes_and_ban_list() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;
    create_instant(&mut alice, "mod", "Alice").await;
    join(&mut bob, "mod", "Bob", "").await;
    join(&mut carol, "mod", "Carol", "").await;

    // Kick (§8.2): 307 for everyone, 110 too for the one kicked, with actor and reason.
    let r = admin_set(
        &mut alice,
        "mod",
        "k1",
        "<item nick='Bob' role='none'><reason>spam</reason></item>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let bob_jid = format!("{}/Bob", room("mod"));
    let p = bob.wait_for(|e| unavailable_from(e, &bob_jid)).await;
    assert_eq!(codes(&p), ["307", "110"]);
    let it = item(&p);
    assert_eq!(it.attr("role"), Some("none"));
    assert_eq!(
        it.child_text("reason", ns::MUC_USER).as_deref(),
        Some("spam")
    );
    assert_eq!(
        it.child("actor", ns::MUC_USER).and_then(|a| a.attr("nick")),
        Some("Alice")
    );
    let p = carol.wait_for(|e| unavailable_from(e, &bob_jid)).await;
    assert_eq!(codes(&p), ["307"]);
    // A participant cannot kick.
    let r = admin_set(&mut carol, "mod", "k2", "<item nick='Alice' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Ban (§9.1): 301, then the user is on the ban list and cannot come back.
    join(&mut bob, "mod", "Bob", "").await;
    let r = admin_set(
        &mut alice,
        "mod",
        "b1",
        "<item jid='bob@localhost' affiliation='outcast'><reason>again</reason></item>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = carol.wait_for(|e| unavailable_from(e, &bob_jid)).await;
    assert_eq!(codes(&p), ["301"]);
    assert_eq!(item(&p).attr("affiliation"), Some("outcast"));
    let bans = admin_list(&mut alice, "mod", "bl", "affiliation='outcast'").await;
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].attr("jid"), Some("bob@localhost"));
    assert_eq!(
        bans[0].child_text("reason", ns::MUC_ADMIN).as_deref(),
        Some("again")
    );
    let refused = join(&mut bob, "mod", "Bob", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("forbidden")
    );
    // Participants may not read the ban list.
    let r = carol
        .iq(&format!("<iq type='get' id='bl2' to='{}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>", room("mod")), "bl2")
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    // Unban.
    let r = admin_set(
        &mut alice,
        "mod",
        "b2",
        "<item jid='bob@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let got = join(&mut bob, "mod", "Bob", "").await;
    assert!(got.iter().any(|e| codes(e).contains(&"110".into())));
    ts.stop().await;
}

#[tokio::test]
async fn admins_cannot_touch_owners_and_the_last_owner_stays() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    create_instant(&mut alice, "ranks", "Alice").await;
    let r = admin_set(
        &mut alice,
        "ranks",
        "a1",
        "<item jid='bob@localhost' affiliation='admin'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    join(&mut bob, "ranks", "Bob", "").await;

    // An admin may not ban the owner, nor kick them.
    let r = admin_set(
        &mut bob,
        "ranks",
        "a2",
        "<item jid='alice@localhost' affiliation='outcast'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    let r = admin_set(&mut bob, "ranks", "a3", "<item nick='Alice' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    // ...nor make anyone an owner.
    let r = admin_set(
        &mut bob,
        "ranks",
        "a4",
        "<item jid='carol@localhost' affiliation='owner'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    // The last owner cannot step down.
    let r = admin_set(
        &mut alice,
        "ranks",
        "a5",
        "<item jid='alice@localhost' affiliation='admin'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));
    // A refused batch changes nothing: the valid first item is not applied either.
    let r = admin_set(
        &mut alice,
        "ranks",
        "a6",
        "<item jid='dave@localhost' affiliation='member'/><item jid='alice@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));
    let members = admin_list(&mut alice, "ranks", "l1", "affiliation='member'").await;
    assert!(members.is_empty());
    // Owner and admin lists.
    let owners = admin_list(&mut alice, "ranks", "l2", "affiliation='owner'").await;
    assert_eq!(owners.len(), 1);
    let admins = admin_list(&mut alice, "ranks", "l3", "affiliation='admin'").await;
    assert_eq!(admins[0].attr("jid"), Some("bob@localhost"));
    // With a second owner, the first may step down.
    let r = admin_set(
        &mut alice,
        "ranks",
        "a7",
        "<item jid='bob@localhost' affiliation='owner'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = admin_set(
        &mut alice,
        "ranks",
        "a8",
        "<item jid='alice@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = bob
        .wait_for(|e| {
            is_presence_from(e, &format!("{}/Alice", room("ranks")))
                && item(e).attr("affiliation") == Some("member")
        })
        .await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    ts.stop().await;
}

#[tokio::test]
async fn voice_in_moderated_rooms() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    join(&mut alice, "quiet", "Alice", "").await;
    let r = configure(
        &mut alice,
        "quiet",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let got = join(&mut bob, "quiet", "Bob", "").await;
    let me = got
        .iter()
        .find(|e| codes(e).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(me).attr("role"), Some("visitor"));
    // A visitor without voice may not speak.
    say(&mut bob, "quiet", "v1", "can I talk?").await;
    let e = bob.wait_for(|e| e.attr("id") == Some("v1")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("forbidden"));
    // Grant voice.
    let r = admin_set(
        &mut alice,
        "quiet",
        "g1",
        "<item nick='Bob' role='participant'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = bob
        .wait_for(|e| is_presence_from(e, &format!("{}/Bob", room("quiet"))))
        .await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    say(&mut bob, "quiet", "v2", "thanks").await;
    let m = alice.wait_for(|e| e.attr("id") == Some("v2")).await;
    assert_eq!(body(&m).as_deref(), Some("thanks"));
    // Revoke it again, and list the voice holders.
    let r = admin_set(
        &mut alice,
        "quiet",
        "g2",
        "<item nick='Bob' role='visitor'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let participants = admin_list(&mut alice, "quiet", "g3", "role='participant'").await;
    assert!(participants.is_empty());
    say(&mut bob, "quiet", "v3", "hmm").await;
    let e = bob.wait_for(|e| e.attr("id") == Some("v3")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("forbidden"));
    // Visitors may not change the subject either.
    bob.send(&format!(
        "<message type='groupchat' to='{}' id='v4'><subject>x</subject></message>",
        room("quiet")
    ))
    .await;
    let e = bob.wait_for(|e| e.attr("id") == Some("v4")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("forbidden"));
    ts.stop().await;
}

#[tokio::test]
async fn members_only_and_password_rooms() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;
    create_instant(&mut alice, "club", "Alice").await;
    join(&mut carol, "club", "Carol", "").await;
    let r = admin_set(
        &mut alice,
        "club",
        "m1",
        "<item jid='bob@localhost' affiliation='member' nick='Bobby'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Turning members-only on removes non-members with 322, and says 104.
    let r = configure(&mut alice, "club", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = carol
        .wait_for(|e| unavailable_from(e, &format!("{}/Carol", room("club"))))
        .await;
    assert!(codes(&p).contains(&"322".into()), "{p}");
    let refused = join(&mut carol, "club", "Carol", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("registration-required")
    );
    // The nick reserved for Bob is his.
    let refused = join(&mut alice, "club", "Bobby", "").await;
    assert!(refused
        .iter()
        .any(|e| stanza_error(e).as_deref() == Some("conflict")));
    let got = join(&mut bob, "club", "Bobby", "").await;
    assert!(got.iter().any(|e| codes(e).contains(&"110".into())));
    // Losing membership in a members-only room removes the occupant (321).
    let r = admin_set(
        &mut alice,
        "club",
        "m2",
        "<item jid='bob@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = bob
        .wait_for(|e| unavailable_from(e, &format!("{}/Bobby", room("club"))))
        .await;
    assert_eq!(codes(&p), ["321", "110"]);

    // Password-protected room.
    create_instant(&mut carol, "secret", "Carol").await;
    let r = configure(
        &mut carol,
        "secret",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "hunter2"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let refused = join(&mut bob, "secret", "Bob", "").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("not-authorized")
    );
    let refused = join(&mut bob, "secret", "Bob", "<password>wrong</password>").await;
    assert_eq!(
        stanza_error(refused.last().unwrap()).as_deref(),
        Some("not-authorized")
    );
    let got = join(&mut bob, "secret", "Bob", "<password>hunter2</password>").await;
    assert!(got.iter().any(|e| codes(e).contains(&"110".into())));
    ts.stop().await;
}

#[tokio::test]
async fn destroy_with_alternate_venue() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    create_instant(&mut alice, "old", "Alice").await;
    join(&mut bob, "old", "Bob", "").await;
    let r = bob
        .iq(&format!("<iq type='set' id='d0' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query></iq>", room("old")), "d0")
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let r = alice
        .iq(
            &format!("<iq type='set' id='d1' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='{}'><reason>moved</reason></destroy></query></iq>", room("old"), room("new")),
            "d1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = bob
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    let d = p
        .child("x", ns::MUC_USER)
        .and_then(|x| x.child("destroy", ns::MUC_USER))
        .expect("destroy element");
    assert_eq!(d.attr("jid"), Some(room("new").as_str()));
    assert_eq!(
        d.child_text("reason", ns::MUC_USER).as_deref(),
        Some("moved")
    );
    // The room is gone.
    let r = bob
        .iq(&format!("<iq type='get' id='d2' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("old")), "d2")
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    ts.stop().await;
}

fn form_value(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|f| f.name() == "field" && f.attr("var") == Some(var))
        .and_then(|f| f.child_text("value", ns::DATA_FORMS))
}

/// §7.13 and §8.6: a visitor asks for voice with a muc#request form; every moderator gets
/// an approval form naming the visitor; a moderator's approval makes the visitor a
/// participant. Asking twice at once, asking with voice, or approving without being a
/// moderator are refused.
#[tokio::test]
async fn voice_requests_reach_moderators_and_approval_grants_voice() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;
    join(&mut alice, "asking", "Alice", "").await;
    let r = configure(
        &mut alice,
        "asking",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    join(&mut bob, "asking", "Bob", "").await;
    join(&mut carol, "asking", "Carol", "").await;
    let request = |id: &str| {
        format!(
            "<message to='{}' id='{id}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role' type='list-single'><value>participant</value></field></x></message>",
            room("asking")
        )
    };
    bob.send(&request("vr1")).await;
    let ask = alice
        .wait_for(|e| e.name() == "message" && e.has_child("x", ns::DATA_FORMS))
        .await;
    assert_eq!(ask.attr("from"), Some(room("asking").as_str()));
    let form = ask.child("x", ns::DATA_FORMS).unwrap();
    assert_eq!(form.attr("type"), Some("form"));
    assert_eq!(
        form_value(form, "FORM_TYPE").as_deref(),
        Some("http://jabber.org/protocol/muc#request")
    );
    assert_eq!(form_value(form, "muc#roomnick").as_deref(), Some("Bob"));
    assert_eq!(
        form_value(form, "muc#jid").as_deref(),
        Some("bob@localhost")
    );
    assert_eq!(form_value(form, "muc#role").as_deref(), Some("participant"));
    assert_eq!(
        form_value(form, "muc#request_allow").as_deref(),
        Some("false")
    );
    // A second request right away is refused, not passed on.
    bob.send(&request("vr2")).await;
    let e = bob.wait_for(|e| e.attr("id") == Some("vr2")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("resource-constraint"));
    // Carol, a visitor herself, cannot approve Bob's request.
    let approve = |id: &str| {
        format!(
            "<message to='{}' id='{id}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field><field var='muc#roomnick'><value>Bob</value></field><field var='muc#request_allow'><value>true</value></field></x></message>",
            room("asking")
        )
    };
    carol.send(&approve("ap1")).await;
    let e = carol.wait_for(|e| e.attr("id") == Some("ap1")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("forbidden"));
    // The moderator approves: Bob's presence shows him a participant, and he may speak.
    alice.send(&approve("ap2")).await;
    let bob_jid = format!("{}/Bob", room("asking"));
    let p = bob.wait_for(|e| is_presence_from(e, &bob_jid)).await;
    assert_eq!(item(&p).attr("role"), Some("participant"), "{p}");
    say(&mut bob, "asking", "spoke", "thank you").await;
    let m = alice.wait_for(|e| e.attr("id") == Some("spoke")).await;
    assert_eq!(body(&m).as_deref(), Some("thank you"));
    // With voice, there is nothing to ask for.
    bob.send(&request("vr3")).await;
    let e = bob.wait_for(|e| e.attr("id") == Some("vr3")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    ts.stop().await;
}

/// §7.10 and §7.12: registering with a room reserves a nickname and makes the user a
/// member; the reservation shows in disco#info's x-roomuser-item node, keeps others from
/// the nick, and `<remove/>` gives it up. Members-only rooms do not let strangers in by
/// registering.
#[tokio::test]
async fn nickname_registration_reserves_the_nick_and_grants_membership() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    let mut bob = user(&ts, "bob").await;
    let mut carol = user(&ts, "carol").await;
    create_instant(&mut alice, "club", "Alice").await;
    let reg_get = format!(
        "<iq type='get' id='rg1' to='{}'><query xmlns='jabber:iq:register'/></iq>",
        room("club")
    );
    let r = bob.iq(&reg_get, "rg1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let form = r
        .child("query", ns::REGISTER)
        .and_then(|q| q.child("x", ns::DATA_FORMS))
        .unwrap_or_else(|| panic!("no form in {r}"));
    assert_eq!(
        form_value(form, "FORM_TYPE").as_deref(),
        Some("http://jabber.org/protocol/muc#register")
    );
    assert!(form
        .children()
        .any(|f| f.attr("var") == Some("muc#register_roomnick")
            && f.has_child("required", ns::DATA_FORMS)));
    let submit = |id: &str, nick: &str| {
        format!(
            "<iq type='set' id='{id}' to='{}'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field><field var='muc#register_roomnick'><value>{nick}</value></field></x></query></iq>",
            room("club")
        )
    };
    let r = bob.iq(&submit("rs1", "Bobby"), "rs1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Now registered: the form gives way to the registration.
    let r = bob.iq(&reg_get.replace("rg1", "rg2"), "rg2").await;
    let q = r.child("query", ns::REGISTER).unwrap();
    assert!(q.has_child("registered", ns::REGISTER), "{r}");
    assert_eq!(
        q.child_text("username", ns::REGISTER).as_deref(),
        Some("Bobby")
    );
    // §7.12: the reserved nick as the identity of the x-roomuser-item node.
    let r = bob
        .iq(
            &format!(
                "<iq type='get' id='di' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>",
                room("club")
            ),
            "di",
        )
        .await;
    let identity = r
        .child("query", ns::DISCO_INFO)
        .and_then(|q| q.child("identity", ns::DISCO_INFO))
        .unwrap_or_else(|| panic!("no identity in {r}"));
    assert_eq!(identity.attr("name"), Some("Bobby"));
    // Bob is a member now.
    let members = admin_list(&mut alice, "club", "ml", "affiliation='member'").await;
    assert!(
        members
            .iter()
            .any(|i| i.attr("jid") == Some("bob@localhost")),
        "members: {members:?}"
    );
    // Carol can neither register nor join under Bob's reserved nick.
    let r = carol.iq(&submit("rs2", "Bobby"), "rs2").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"), "{r}");
    let got = join(&mut carol, "club", "Bobby", "").await;
    let last = got.last().unwrap();
    assert_eq!(last.attr("type"), Some("error"), "{last}");
    assert_eq!(stanza_error(last).as_deref(), Some("conflict"));
    // Unregistering frees the nick and ends the membership.
    let r = bob
        .iq(
            &format!(
                "<iq type='set' id='un' to='{}'><query xmlns='jabber:iq:register'><remove/></query></iq>",
                room("club")
            ),
            "un",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let members = admin_list(&mut alice, "club", "ml2", "affiliation='member'").await;
    assert!(members.is_empty(), "members: {members:?}");
    let r = carol.iq(&submit("rs3", "Bobby"), "rs3").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // In a members-only room, registering is not a way in.
    create_instant(&mut alice, "closed", "Alice").await;
    let r = configure(&mut alice, "closed", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = bob
        .iq(
            &submit("rs4", "Bob").replace(&room("club"), &room("closed")),
            "rs4",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"), "{r}");
    ts.stop().await;
}

/// A deleted account loses its affiliations in running rooms, so whoever registers the
/// same name later inherits nothing.
#[tokio::test]
async fn a_deleted_account_keeps_no_affiliation() {
    let ts = TestServer::start().await;
    let mut alice = user(&ts, "alice").await;
    create_instant(&mut alice, "kept", "Alice").await;
    let r = configure(
        &mut alice,
        "kept",
        &[("muc#roomconfig_persistentroom", "1")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = admin_set(
        &mut alice,
        "kept",
        "a1",
        "<item jid='bob@localhost' affiliation='admin'/><item jid='carol@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    ts.add_user("bob", "pw");
    let bob = jid::BareJid::new("bob@localhost").unwrap();
    ts.state().delete_account(&bob, "test").unwrap();
    let admins = admin_list(&mut alice, "kept", "l1", "affiliation='admin'").await;
    assert!(admins.is_empty(), "admins after deletion: {admins:?}");
    let members = admin_list(&mut alice, "kept", "l2", "affiliation='member'").await;
    let jids: Vec<_> = members.iter().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(jids, vec!["carol@localhost"]);
    // The stored room agrees.
    let stored = ts.state().store.room(&room("kept")).unwrap().unwrap();
    assert!(!stored.affiliations.contains_key("bob@localhost"));
    ts.stop().await;
}
