//! XEP-0313 message archives with XEP-0059 paging and XEP-0359 stanza ids: user
//! archives (both sides), filters, paging, preferences, offline delivery, rooms.

mod common;
mod im_util;

use common::*;
use im_util::*;
use starling::ns;
use starling::xml::Element;

const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const RSM: &str = "http://jabber.org/protocol/rsm";

fn body(e: &Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

/// The archived message inside a result.
fn archived(e: &Element) -> (String, Element) {
    let r = e.child("result", MAM).expect("result");
    let m = r
        .child("forwarded", "urn:xmpp:forward:0")
        .and_then(|f| f.child("message", ns::CLIENT))
        .expect("forwarded message");
    (r.attr("id").unwrap_or("").to_string(), m.clone())
}

/// Runs a query; returns (results, fin).
async fn query(
    c: &mut Client,
    to: Option<&str>,
    fields: &[(&str, &str)],
    rsm: &str,
) -> (Vec<Element>, Element) {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    c.send(&format!(
        "<iq type='set' id='q'{to}><query xmlns='urn:xmpp:mam:2' queryid='Q1'>{x}{rsm}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let e = c.el().await;
        if e.name() == "iq" && e.attr("id") == Some("q") {
            let fin = match e.child("fin", MAM) {
                Some(f) => f.clone(),
                None => e.clone(),
            };
            return (results, fin);
        }
        if e.has_child("result", MAM) {
            assert_eq!(
                e.child("result", MAM).and_then(|r| r.attr("queryid")),
                Some("Q1")
            );
            results.push(e);
        }
    }
}

fn bodies(results: &[Element]) -> Vec<String> {
    results
        .iter()
        .filter_map(|e| body(&archived(e).1))
        .collect()
}

fn rsm(fin: &Element, name: &str) -> Option<String> {
    fin.child("set", RSM).and_then(|s| s.child_text(name, RSM))
}

/// XEP-0059's `<count/>` and the `index` of `<first/>`, as numbers.
fn count_and_index(fin: &Element) -> (Option<usize>, Option<usize>) {
    let set = fin.child("set", RSM);
    let count = set
        .and_then(|s| s.child_text("count", RSM))
        .and_then(|c| c.parse().ok());
    let index = set
        .and_then(|s| s.child("first", RSM))
        .and_then(|f| f.attr("index"))
        .and_then(|i| i.parse().ok());
    (count, index)
}

#[tokio::test]
async fn both_sides_archived_with_stanza_ids() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "r").await;
    let mut delivered_ids = Vec::new();
    for i in 0..5 {
        // A forged stanza-id in bob's name is removed; one by someone else is kept.
        a.send(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='elsewhere.example' id='x{i}'/></message>"
        ))
        .await;
        let m = b.wait_for(|e| e.name() == "message").await;
        let ours: Vec<&Element> = m
            .children()
            .filter(|c| c.is("stanza-id", SID) && c.attr("by") == Some("bob@localhost"))
            .collect();
        assert_eq!(ours.len(), 1, "{m}");
        assert_ne!(ours[0].attr("id"), Some("forged"));
        assert!(m
            .children()
            .any(|c| c.is("stanza-id", SID) && c.attr("by") == Some("elsewhere.example")));
        delivered_ids.push(ours[0].attr("id").unwrap_or("").to_string());
    }
    let (results, fin) = query(&mut b, None, &[], "").await;
    assert_eq!(bodies(&results), vec!["m0", "m1", "m2", "m3", "m4"]);
    let ids: Vec<String> = results.iter().map(|r| archived(r).0).collect();
    assert_eq!(ids, delivered_ids);
    assert_eq!(fin.attr("complete"), Some("true"));
    assert_eq!(rsm(&fin, "first").as_deref(), Some(ids[0].as_str()));
    assert_eq!(rsm(&fin, "last").as_deref(), Some(ids[4].as_str()));
    // The sender's archive has them too.
    let (results, _) = query(&mut a, None, &[("with", "bob@localhost")], "").await;
    assert_eq!(bodies(&results), vec!["m0", "m1", "m2", "m3", "m4"]);
    // Someone else's archive is not readable.
    let r = a
        .iq(
            "<iq type='set' id='x' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>",
            "x",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    // The form lists the filters, and the account advertises the features.
    let r = a
        .iq(
            "<iq type='get' id='f'><query xmlns='urn:xmpp:mam:2'/></iq>",
            "f",
        )
        .await;
    let fields: Vec<String> = r
        .child("query", MAM)
        .and_then(|q| q.child("x", "jabber:x:data"))
        .map(|x| {
            x.children()
                .filter_map(|f| f.attr("var"))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    assert!(fields.iter().any(|f| f == "with") && fields.iter().any(|f| f == "ids"));
    let r = a
        .iq(
            "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    let info = format!("{r}");
    assert!(info.contains(MAM) && info.contains(SID), "{info}");
    s.stop().await;
}

#[tokio::test]
async fn paging_and_filters() {
    let s = server(&["alice", "bob", "carol"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut c = online(&s, "carol", "r").await;
    for i in 0..10 {
        let (to, who) = if i % 2 == 0 {
            ("bob@localhost", &mut a)
        } else {
            ("bob@localhost", &mut c)
        };
        who.send(&format!(
            "<message to='{to}' type='chat'><body>m{i}</body></message>"
        ))
        .await;
        drain(who).await;
    }
    let mut b = online(&s, "bob", "r").await;
    drain(&mut b).await;
    // Forward paging, three at a time.
    let (p1, fin) = query(
        &mut b,
        None,
        &[],
        "<set xmlns='http://jabber.org/protocol/rsm'><max>3</max></set>",
    )
    .await;
    assert_eq!(bodies(&p1), vec!["m0", "m1", "m2"]);
    assert_ne!(fin.attr("complete"), Some("true"));
    // The full set has ten; this page starts at its beginning.
    assert_eq!(count_and_index(&fin), (Some(10), Some(0)));
    let last = rsm(&fin, "last").expect("last");
    let (p2, fin) = query(
        &mut b,
        None,
        &[],
        &format!(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>3</max><after>{last}</after></set>"
        ),
    )
    .await;
    assert_eq!(bodies(&p2), vec!["m3", "m4", "m5"]);
    // Paging with <after/> moves the index along; the count stays the full set's.
    assert_eq!(count_and_index(&fin), (Some(10), Some(3)));
    // The last page, then the page before it.
    let (p, fin) = query(
        &mut b,
        None,
        &[],
        "<set xmlns='http://jabber.org/protocol/rsm'><max>4</max><before/></set>",
    )
    .await;
    assert_eq!(bodies(&p), vec!["m6", "m7", "m8", "m9"]);
    assert_eq!(count_and_index(&fin), (Some(10), Some(6)));
    let first = rsm(&fin, "first").expect("first");
    let (p, fin) = query(
        &mut b,
        None,
        &[],
        &format!("<set xmlns='http://jabber.org/protocol/rsm'><max>4</max><before>{first}</before></set>"),
    )
    .await;
    assert_eq!(bodies(&p), vec!["m2", "m3", "m4", "m5"]);
    assert_ne!(fin.attr("complete"), Some("true"));
    assert_eq!(count_and_index(&fin), (Some(10), Some(2)));
    // A flipped page: the same items, delivered newest first; <first/> and <last/> still
    // name the page's oldest and newest, so paging on from them works as without.
    let (p, flipped) = query(
        &mut b,
        None,
        &[],
        &format!("<set xmlns='http://jabber.org/protocol/rsm'><max>4</max><before>{first}</before></set><flip-page/>"),
    )
    .await;
    assert_eq!(bodies(&p), vec!["m5", "m4", "m3", "m2"]);
    assert_eq!(rsm(&flipped, "first"), rsm(&fin, "first"));
    assert_eq!(rsm(&flipped, "last"), rsm(&fin, "last"));
    assert_eq!(count_and_index(&flipped), (Some(10), Some(2)));
    // Only the count (max 0): no items, no first or last.
    let (p, fin) = query(
        &mut b,
        None,
        &[],
        "<set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set>",
    )
    .await;
    assert!(p.is_empty());
    assert_eq!(count_and_index(&fin), (Some(10), None));
    assert_eq!(rsm(&fin, "first"), None);
    // One conversation; an index into the range.
    let (p, fin) = query(&mut b, None, &[("with", "carol@localhost")], "").await;
    assert_eq!(bodies(&p), vec!["m1", "m3", "m5", "m7", "m9"]);
    assert_eq!(count_and_index(&fin), (Some(5), Some(0)));
    let (p, fin) = query(
        &mut b,
        None,
        &[],
        "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><index>7</index></set>",
    )
    .await;
    assert_eq!(bodies(&p), vec!["m7", "m8"]);
    assert_eq!(count_and_index(&fin), (Some(10), Some(7)));
    // By id: after-id/before-id and an id list.
    let ids: Vec<String> = query(&mut b, None, &[], "")
        .await
        .0
        .iter()
        .map(|r| archived(r).0)
        .collect();
    let (p, fin) = query(
        &mut b,
        None,
        &[("after-id", &ids[2]), ("before-id", &ids[6])],
        "",
    )
    .await;
    assert_eq!(bodies(&p), vec!["m3", "m4", "m5"]);
    // The form's id bounds define the full set (unlike RSM's paging).
    assert_eq!(count_and_index(&fin), (Some(3), Some(0)));
    let (p, fin) = query(&mut b, None, &[("ids", &ids[8]), ("ids", &ids[1])], "").await;
    assert_eq!(bodies(&p), vec!["m1", "m8"]);
    assert_eq!(count_and_index(&fin), (Some(2), Some(0)));
    // Time: everything from the far past, nothing from the far future.
    let (p, _) = query(&mut b, None, &[("start", "2000-01-01T00:00:00Z")], "").await;
    assert_eq!(p.len(), 10);
    let (p, fin) = query(&mut b, None, &[("start", "2999-01-01T00:00:00Z")], "").await;
    assert!(p.is_empty());
    assert_eq!(fin.attr("complete"), Some("true"));
    assert_eq!(count_and_index(&fin), (Some(0), None));
    let (p, _) = query(&mut b, None, &[("end", "2000-01-01T00:00:00Z")], "").await;
    assert!(p.is_empty());
    // An id the archive never had, and a date that is not one.
    let (_, e) = query(
        &mut b,
        None,
        &[],
        "<set xmlns='http://jabber.org/protocol/rsm'><after>00000000000000ff</after></set>",
    )
    .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("item-not-found"));
    let (_, e) = query(&mut b, None, &[("start", "yesterday")], "").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("bad-request"));
    s.stop().await;
}

#[tokio::test]
async fn preferences_and_offline_messages() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    // Bob is offline: the message is archived and stored offline with the same id.
    a.send("<message to='bob@localhost' type='chat'><body>while away</body></message>")
        .await;
    drain(&mut a).await;
    let mut b = online(&s, "bob", "r").await;
    let m = b.wait_for(|e| e.name() == "message").await;
    let sid = m
        .child("stanza-id", SID)
        .and_then(|s| s.attr("id"))
        .expect("stanza-id on the offline copy")
        .to_string();
    let (p, _) = query(&mut b, None, &[], "").await;
    assert_eq!(p.len(), 1);
    assert_eq!(archived(&p[0]).0, sid);
    // Never archive alice: her next message is delivered without a stanza-id.
    let r = b
        .iq(
            "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>alice@localhost</jid></never></prefs></iq>",
            "p",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = b
        .iq(
            "<iq type='get' id='g'><prefs xmlns='urn:xmpp:mam:2'/></iq>",
            "g",
        )
        .await;
    let prefs = r.child("prefs", MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("always"));
    assert!(format!("{prefs}").contains("alice@localhost"));
    a.send("<message to='bob@localhost' type='chat'><body>unarchived</body></message>")
        .await;
    let m = b.wait_for(|e| e.name() == "message").await;
    assert!(!m.has_child("stanza-id", SID), "{m}");
    // A no-store hint is honoured too (alice's own archive).
    a.send("<message to='bob@localhost' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>")
        .await;
    b.wait_for(|e| e.name() == "message").await;
    let (p, _) = query(&mut a, None, &[], "").await;
    assert_eq!(bodies(&p), vec!["while away", "unarchived"]);
    let (p, _) = query(&mut b, None, &[], "").await;
    assert_eq!(p.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn room_archive() {
    use common::muc;
    let s = TestServer::start().await;
    let mut owner = muc::user(&s, "owner").await;
    muc::create_instant(&mut owner, "lounge", "boss").await;
    muc::say(&mut owner, "lounge", "g1", "hello room").await;
    let mut guest = muc::user(&s, "guest").await;
    let joined = muc::join(&mut guest, "lounge", "guest", "").await;
    assert!(!joined.is_empty());
    let room = muc::room("lounge");
    let (p, fin) = query(&mut guest, Some(&room), &[], "").await;
    assert_eq!(fin.attr("complete"), Some("true"), "{fin}");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].attr("from"), Some(room.as_str()));
    let (_, m) = archived(&p[0]);
    assert_eq!(body(&m).as_deref(), Some("hello room"));
    assert_eq!(m.attr("from"), Some(format!("{room}/boss").as_str()));
    // What occupants receive carries the room archive's id.
    guest
        .send(&format!(
            "<message to='{room}' type='groupchat'><body>from guest</body></message>"
        ))
        .await;
    let m = owner
        .wait_for(|e| e.name() == "message" && body(e).as_deref() == Some("from guest"))
        .await;
    let sid = m.child("stanza-id", SID).expect("room stanza-id");
    assert_eq!(sid.attr("by"), Some(room.as_str()));
    s.stop().await;
}
