//! RFC 6121 §8.5 delivery by type and priority, and XEP-0160 offline storage with
//! XEP-0203 delay stamps, in order, within a quota.

mod common;
mod im_util;

use common::*;
use im_util::*;
use starling::ns;

fn body(e: &starling::xml::Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

#[tokio::test]
async fn bare_jid_message_goes_to_highest_priority_resources() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut hi = login(&s, "bob", "hi").await;
    hi.send("<presence><priority>5</priority></presence>").await;
    let mut lo = login(&s, "bob", "lo").await;
    lo.send("<presence><priority>1</priority></presence>").await;
    let mut neg = login(&s, "bob", "neg").await;
    neg.send("<presence><priority>-1</priority></presence>")
        .await;
    drain(&mut hi).await;
    drain(&mut lo).await;
    drain(&mut neg).await;
    a.send("<message to='bob@localhost' type='chat'><body>one</body></message>")
        .await;
    let m = hi.wait_for(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("one"));
    assert!(drain(&mut lo).await.iter().all(|e| e.name() != "message"));
    assert!(drain(&mut neg).await.iter().all(|e| e.name() != "message"));
    // Equal priorities: both get it.
    lo.send("<presence><priority>5</priority></presence>").await;
    drain(&mut lo).await;
    a.send("<message to='bob@localhost'><body>two</body></message>")
        .await;
    hi.wait_for(|e| e.name() == "message").await;
    lo.wait_for(|e| e.name() == "message").await;
    // A headline goes to every non-negative resource; the negative one still nothing.
    a.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    hi.wait_for(|e| e.name() == "message").await;
    lo.wait_for(|e| e.name() == "message").await;
    assert!(drain(&mut neg).await.iter().all(|e| e.name() != "message"));
    // Groupchat to a bare JID: service-unavailable.
    a.send("<message to='bob@localhost' type='groupchat' id='gc'><body>x</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("gc")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    // Errors are never answered with errors, even to nobody.
    a.send("<message to='nobody@localhost' type='error' id='err'/>")
        .await;
    assert!(drain(&mut a)
        .await
        .iter()
        .all(|e| e.attr("id") != Some("err")));
    s.stop().await;
}

#[tokio::test]
async fn message_to_gone_full_jid_falls_back_to_the_account() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    let mut b = online(&s, "bob", "desk").await;
    a.send("<message to='bob@localhost/phone' type='chat'><body>hi</body></message>")
        .await;
    let m = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hi"));
    s.stop().await;
}

#[tokio::test]
async fn offline_messages_are_delivered_in_order_with_delay() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    for i in 0..5 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat'><body>m{i}</body></message>"
        ))
        .await;
    }
    a.send("<message to='bob@localhost/gone' type='normal'><body>m5</body></message>")
        .await;
    // A headline for nobody is dropped as the RFC says, not stored.
    a.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    assert!(drain(&mut a)
        .await
        .iter()
        .all(|e| e.attr("type") != Some("error")));
    // Negative priority does not trigger delivery.
    let mut neg = login(&s, "bob", "neg").await;
    neg.send("<presence><priority>-1</priority></presence>")
        .await;
    assert!(drain(&mut neg).await.iter().all(|e| e.name() != "message"));
    let mut b = login(&s, "bob", "r").await;
    b.send("<presence/>").await;
    let mut got = Vec::new();
    while got.len() < 6 {
        let m = b.wait_for(|e| e.name() == "message").await;
        let d = m.child("delay", ns::DELAY).expect("delay stamp");
        assert_eq!(d.attr("from"), Some("localhost"));
        let stamp = d.attr("stamp").unwrap();
        assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");
        assert_eq!(m.attr("from"), Some("alice@localhost/r"));
        got.push(body(&m).unwrap());
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // Delivered once only.
    drop(b);
    let mut b = login(&s, "bob", "r2").await;
    b.send("<presence/>").await;
    assert!(drain(&mut b).await.iter().all(|e| e.name() != "message"));
    s.stop().await;
}

#[tokio::test]
async fn offline_quota_overflow_is_an_error_to_the_sender() {
    let s = server_with(&["alice", "bob"], |c| c.im.offline_quota = 2).await;
    let mut a = online(&s, "alice", "r").await;
    for i in 0..4 {
        a.send(&format!(
            "<message to='bob@localhost' id='q{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let seen = drain(&mut a).await;
    let errors: Vec<_> = seen
        .iter()
        .filter(|e| e.attr("type") == Some("error"))
        .map(|e| (e.attr("id").unwrap().to_string(), stanza_error(e).unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            ("q2".to_string(), "service-unavailable".to_string()),
            ("q3".to_string(), "service-unavailable".to_string())
        ]
    );
    let mut b = login(&s, "bob", "r").await;
    b.send("<presence/>").await;
    let m0 = b.wait_for(|e| e.name() == "message").await;
    let m1 = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(
        (body(&m0).unwrap(), body(&m1).unwrap()),
        ("0".into(), "1".into())
    );
    s.stop().await;
}

#[tokio::test]
async fn offline_messages_survive_a_restart() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "r").await;
    a.send("<message to='bob@localhost'><body>kept</body></message>")
        .await;
    drain(&mut a).await;
    drop(a);
    let dir = s.dir.path().to_owned();
    let TestServer {
        server, dir: tmp, ..
    } = s;
    if let Some(srv) = server {
        srv.shutdown().await;
    }
    let s2 = TestServer::start_with(|c| c.data_dir = dir).await;
    let mut b = login(&s2, "bob", "r").await;
    b.send("<presence/>").await;
    let m = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("kept"));
    s2.stop().await;
    drop(tmp);
}
