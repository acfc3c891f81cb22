//! Helpers for the MUC tests: joining, reading status codes and items.

use super::{Client, TestServer};
use starling::ns;
use starling::xml::Element;

pub const MUC: &str = "conference.localhost";

pub async fn user(ts: &TestServer, name: &str) -> Client {
    ts.add_user(name, "pw");
    login(ts, name).await
}

/// Logs in an existing account over STARTTLS. PLAIN (over TLS) keeps these tests about
/// MUC rather than about SCRAM, which tests/c2s.rs covers.
pub async fn login(ts: &TestServer, name: &str) -> Client {
    let mut c = Client::connect(ts.c2s).await;
    c.starttls().await;
    let mut mech = sasl::client::mechanisms::Plain::new(name, "pw");
    let r = c.auth(&mut mech).await;
    assert_eq!(r.name(), "success", "login failed: {r}");
    c.bind(Some("r")).await;
    c
}

pub fn room(name: &str) -> String {
    format!("{name}@{MUC}")
}

/// Sends a MUC join and collects what comes back up to the subject (the end of a
/// successful join) or a presence error.
pub async fn join(c: &mut Client, room_name: &str, nick: &str, inner: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>{inner}</x></presence>",
        room(room_name)
    ))
    .await;
    let mut got = Vec::new();
    loop {
        let e = c.el().await;
        let done = (e.name() == "message" && e.has_child("subject", ns::CLIENT))
            || (e.name() == "presence" && e.attr("type") == Some("error"));
        got.push(e);
        if done {
            return got;
        }
    }
}

/// Creates an instant room (join, then accept the default configuration).
pub async fn create_instant(c: &mut Client, room_name: &str, nick: &str) -> Vec<Element> {
    let got = join(c, room_name, nick, "").await;
    let r = c
        .iq(
            &format!(
                "<iq type='set' id='inst' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
                room(room_name)
            ),
            "inst",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "instant room: {r}");
    got
}

/// Submits config fields as the room owner; returns the IQ reply.
pub async fn configure(c: &mut Client, room_name: &str, fields: &[(&str, &str)]) -> Element {
    let mut f = String::from(
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, v) in fields {
        f.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    c.iq(
        &format!(
            "<iq type='set' id='cfg' to='{}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>{f}</x></query></iq>",
            room(room_name)
        ),
        "cfg",
    )
    .await
}

pub fn codes(e: &Element) -> Vec<String> {
    e.child("x", ns::MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn item(e: &Element) -> Element {
    e.child("x", ns::MUC_USER)
        .and_then(|x| x.child("item", ns::MUC_USER))
        .cloned()
        .unwrap_or_else(|| panic!("no muc#user item in {e}"))
}

pub fn is_presence_from(e: &Element, from: &str) -> bool {
    e.name() == "presence" && e.attr("from") == Some(from)
}

pub fn is_groupchat(e: &Element) -> bool {
    e.name() == "message" && e.attr("type") == Some("groupchat")
}

pub fn body(e: &Element) -> Option<String> {
    e.child_text("body", ns::CLIENT)
}

pub async fn say(c: &mut Client, room_name: &str, id: &str, text: &str) {
    c.send(&format!(
        "<message type='groupchat' to='{}' id='{id}'><body>{text}</body></message>",
        room(room_name)
    ))
    .await;
}
