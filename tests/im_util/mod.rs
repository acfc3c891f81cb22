//! Helpers shared by the instant-messaging integration tests.
#![allow(dead_code)]

use crate::common::*;
use starling::xml::Element;

pub const ROSTER: &str = "jabber:iq:roster";

pub async fn server(users: &[&str]) -> TestServer {
    server_with(users, |_| {}).await
}

pub async fn server_with(users: &[&str], tweak: impl FnOnce(&mut starling::Config)) -> TestServer {
    let s = TestServer::start_with(tweak).await;
    for u in users {
        s.add_user(u, "pw");
    }
    s
}

/// STARTTLS, PLAIN (these tests are about IM, not SASL), bind; no presence yet.
pub async fn login(s: &TestServer, user: &str, res: &str) -> Client {
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    let mut mech = sasl::client::mechanisms::Plain::new(user, "pw");
    let r = c.auth(&mut mech).await;
    assert_eq!(r.name(), "success", "login failed: {r}");
    c.bind(Some(res)).await;
    c
}

/// Logs in, fetches the roster (to get pushes) and sends initial presence.
pub async fn online(s: &TestServer, user: &str, res: &str) -> Client {
    let mut c = login(s, user, res).await;
    let r = c
        .iq(
            "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>",
            "r0",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    c.available().await;
    c
}

pub fn is_push(e: &Element) -> bool {
    e.name() == "iq" && e.attr("type") == Some("set") && e.has_child("query", ROSTER)
}

pub fn push_item(e: &Element) -> &Element {
    e.child("query", ROSTER)
        .and_then(|q| q.child("item", ROSTER))
        .expect("roster push item")
}

/// Waits for the roster push about `jid`; returns its item.
pub async fn push_for(c: &mut Client, jid: &str) -> Element {
    let e = c
        .wait_for(|e| is_push(e) && push_item(e).attr("jid") == Some(jid))
        .await;
    push_item(&e).clone()
}

pub async fn presence_of(c: &mut Client, ty: Option<&str>, from: &str) -> Element {
    c.wait_for(|e| e.name() == "presence" && e.attr("type") == ty && e.attr("from") == Some(from))
        .await
}

/// A round trip proving everything sent before it has been processed, returning what
/// arrived meanwhile.
pub async fn drain(c: &mut Client) -> Vec<Element> {
    c.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut seen = Vec::new();
    loop {
        let e = c.el().await;
        if e.name() == "iq" && e.attr("id") == Some("sync") {
            return seen;
        }
        seen.push(e);
    }
}

pub fn attrs(e: &Element) -> (Option<&str>, Option<&str>, Option<&str>) {
    (e.attr("subscription"), e.attr("ask"), e.attr("approved"))
}
