//! XEP-0352 client state indication: an inactive client gets presence updates and chat
//! states late (coalesced per sender) and messages with a body at once, after what was
//! held, so each sender's order is kept.

mod common;
mod im_util;

use common::*;
use im_util::*;
use starling::ns;
use std::time::Duration;

/// Nothing arrives within a moment.
async fn quiet(c: &mut Client) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(400), c.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

#[tokio::test]
async fn inactive_client_gets_presence_late_and_messages_at_once() {
    let s = server(&["alice", "bob"]).await;
    let mut a = online(&s, "alice", "phone").await;
    let mut b = online(&s, "bob", "desk").await;
    drain(&mut a).await;
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    for show in ["away", "xa", "dnd"] {
        b.send(&format!(
            "<presence to='alice@localhost/phone'><show>{show}</show></presence>"
        ))
        .await;
    }
    b.send("<message to='alice@localhost/phone' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    drain(&mut b).await;
    quiet(&mut a).await;
    // A real message: what was held comes first (only the latest presence), then it.
    b.send("<message to='alice@localhost/phone' type='chat'><body>hi</body></message>")
        .await;
    let p = a.el().await;
    assert_eq!(p.name(), "presence", "{p}");
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("dnd"));
    let cs = a.el().await;
    assert!(cs.has_child("composing", ns::CHATSTATES), "{cs}");
    let m = a.el().await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("hi"));
    // Going active releases what is held.
    b.send("<presence to='alice@localhost/phone'><show>chat</show></presence>")
        .await;
    drain(&mut b).await;
    quiet(&mut a).await;
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    let p = a.el().await;
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("chat"));
    // Active again: presence flows straight through.
    b.send("<presence to='alice@localhost/phone'/>").await;
    let p = a.el().await;
    assert_eq!(p.name(), "presence");
    assert!(p.child("show", ns::CLIENT).is_none());
    s.stop().await;
}
