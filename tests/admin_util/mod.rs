//! Helpers for driving XEP-0050 commands from the raw test client.
#![allow(dead_code)]

use crate::common::*;
use base64::Engine;
use sasl::client::Mechanism;
use starling::ns;
use starling::xml::Element;
use std::sync::atomic::{AtomicU32, Ordering};

pub const ADMIN: &str = "http://jabber.org/protocol/admin#";

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

fn next_id() -> String {
    format!("cmd{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

pub fn esc(s: &str) -> String {
    starling::xml::element::escape(s)
}

/// A submitted data form with these fields.
pub fn submit(fields: &[(&str, &[&str])]) -> String {
    let mut x = String::from("<x xmlns='jabber:x:data' type='submit'>");
    x.push_str(&format!(
        "<field var='FORM_TYPE' type='hidden'><value>{}</value></field>",
        ns::ADMIN
    ));
    for (var, values) in fields {
        x.push_str(&format!("<field var='{}'>", esc(var)));
        for v in *values {
            x.push_str(&format!("<value>{}</value>", esc(v)));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    x
}

/// Sends one `<command/>` request to the server and returns the IQ reply.
pub async fn command(c: &mut Client, attrs: &str, inner: &str) -> Element {
    let id = next_id();
    c.iq(
        &format!(
            "<iq type='set' id='{id}' to='localhost'><command xmlns='{}' {attrs}>{inner}</command></iq>",
            ns::COMMANDS
        ),
        &id,
    )
    .await
}

pub async fn execute(c: &mut Client, cmd: &str) -> Element {
    command(c, &format!("node='{ADMIN}{cmd}' action='execute'"), "").await
}

/// Continues a session with `action` and a submitted form.
pub async fn step(c: &mut Client, cmd: &str, session: &str, action: &str, form: &str) -> Element {
    command(
        c,
        &format!("node='{ADMIN}{cmd}' sessionid='{session}' action='{action}'"),
        form,
    )
    .await
}

pub fn cmd_el(reply: &Element) -> &Element {
    reply
        .child("command", ns::COMMANDS)
        .unwrap_or_else(|| panic!("no command in {reply}"))
}

pub fn status(reply: &Element) -> String {
    cmd_el(reply).attr("status").unwrap_or("").to_string()
}

pub fn session_id(reply: &Element) -> String {
    cmd_el(reply)
        .attr("sessionid")
        .expect("sessionid")
        .to_string()
}

/// (type, text) of each note.
pub fn notes(reply: &Element) -> Vec<(String, String)> {
    cmd_el(reply)
        .children()
        .filter(|n| n.is("note", ns::COMMANDS))
        .map(|n| (n.attr("type").unwrap_or("info").to_string(), n.text()))
        .collect()
}

/// Values of a field in the reply's form.
pub fn field_values(reply: &Element, var: &str) -> Vec<String> {
    cmd_el(reply)
        .child("x", ns::DATA_FORMS)
        .and_then(|x| {
            x.children()
                .find(|f| f.name() == "field" && f.attr("var") == Some(var))
        })
        .map(|f| {
            f.children()
                .filter(|v| v.name() == "value")
                .map(|v| v.text())
                .collect()
        })
        .unwrap_or_default()
}

/// The XEP-0050 condition inside an error reply (bad-payload, bad-sessionid...).
pub fn command_error(reply: &Element) -> Option<String> {
    reply
        .child("error", ns::CLIENT)
        .and_then(|e| e.child_ns(ns::COMMANDS))
        .map(|c| c.name().to_string())
}

pub fn error_type(reply: &Element) -> Option<String> {
    reply
        .child("error", ns::CLIENT)
        .and_then(|e| e.attr("type"))
        .map(str::to_string)
}

/// Runs a one-form command to its end: execute, then complete with `fields`.
pub async fn run(c: &mut Client, cmd: &str, fields: &[(&str, &[&str])]) -> Element {
    let first = execute(c, cmd).await;
    assert_eq!(status(&first), "executing", "{cmd}: {first}");
    let sid = session_id(&first);
    step(c, cmd, &sid, "complete", &submit(fields)).await
}

/// Runs a command that completes on execute.
pub async fn run_now(c: &mut Client, cmd: &str) -> Element {
    let r = execute(c, cmd).await;
    assert_eq!(status(&r), "completed", "{cmd}: {r}");
    r
}

/// SCRAM-SHA-256 login attempt over STARTTLS: true when SASL succeeds.
pub async fn can_log_in(addr: std::net::SocketAddr, user: &str, password: &str) -> bool {
    let mut c = Client::connect(addr).await;
    c.starttls().await;
    let creds = sasl::common::Credentials::default()
        .with_username(user)
        .with_password(password)
        .with_channel_binding(sasl::common::ChannelBinding::None);
    let mut mech =
        sasl::client::mechanisms::Scram::<sasl::common::scram::Sha256>::from_credentials(creds)
            .expect("mechanism");
    let mech_name = mech.name().to_string();
    let initial = mech.initial();
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech_name}'>{}</auth>",
        B64.encode(initial)
    ))
    .await;
    loop {
        let e = c.el().await;
        match e.name() {
            "challenge" => {
                let data = B64.decode(e.text()).expect("base64");
                let Ok(resp) = mech.response(&data) else {
                    return false;
                };
                c.send(&format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(resp)
                ))
                .await;
            }
            "success" => return true,
            _ => return false,
        }
    }
}

/// Pings the server; true when the session still answers.
pub async fn alive(c: &mut Client) -> bool {
    let id = next_id();
    let r = c
        .iq(
            &format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"),
            &id,
        )
        .await;
    r.attr("type") == Some("result")
}
