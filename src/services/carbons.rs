//! XEP-0280: Message Carbons. Resources that enabled carbons get a copy of every
//! eligible message the account sends from another resource (`<sent/>`) or receives on
//! another resource (`<received/>`).

use crate::jidext::JidExt;
use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::sessions::SessionHandle;
use crate::stanza::StanzaError;
use crate::xml::Element;
use crate::ServerState;
use jid::BareJid;

pub struct Toggle {
    pub enable: bool,
}

impl TryFrom<&Element> for Toggle {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        Ok(Toggle {
            enable: el.name() == "enable",
        })
    }
}

/// XEP-0280 §6: chat messages, and normal messages with a body, are copied; nothing
/// marked private or no-copy, and never a carbon of a carbon.
fn eligible(msg: &Element) -> bool {
    let ty = msg.attr("type").unwrap_or("normal");
    let kind_ok = ty == "chat" || (ty == "normal" && msg.has_child("body", ns::CLIENT));
    kind_ok
        && !msg.has_child("private", ns::CARBONS)
        && !msg.has_child("no-copy", ns::HINTS)
        && !msg.has_child("sent", ns::CARBONS)
        && !msg.has_child("received", ns::CARBONS)
        && !msg.has_child("x", ns::MUC_USER)
}

fn wrap(kind: &str, user: &str, to: &str, msg: &Element) -> Element {
    let mut copy = Element::new("message", ns::CLIENT)
        .with_attr("from", user)
        .with_attr("to", to)
        .with_child(
            Element::new(kind, ns::CARBONS)
                .with_child(Element::new("forwarded", ns::FORWARD).with_child(msg.clone())),
        );
    if let Some(t) = msg.attr("type") {
        copy.set_attr("type", t);
    }
    copy
}

fn copy_to(server: &ServerState, user: &str, kind: &str, msg: &Element, skip: &[u64]) {
    // Runs for every message: only the handles of resources that want copies are taken.
    let wanting = server
        .sessions
        .handles_where(user, |r| r.carbons && !skip.contains(&r.handle.id));
    for handle in wanting {
        // A copy is a courtesy: a stalled resource that cannot take it loses nothing
        // it cannot fetch again (the original went where the rules sent it).
        let _ = handle.send(wrap(kind, user, handle.jid.as_str(), msg));
    }
}

fn sent(server: &ServerState, handle: &SessionHandle, msg: &Element) {
    if eligible(msg) {
        copy_to(server, handle.jid.bare_str(), "sent", msg, &[handle.id]);
    }
}

fn delivered(server: &ServerState, user: &BareJid, msg: &Element, to: &[u64]) {
    if eligible(msg) {
        copy_to(server, user.as_str(), "received", msg, to);
    }
}

pub fn register(reg: &mut Registry) {
    reg.spec("0280", "1.0.1", "Message Carbons");
    reg.server_feature(ns::CARBONS);
    reg.on_message_sent(sent);
    reg.on_message_delivered(delivered);
    for name in ["enable", "disable"] {
        reg.iq(IqTarget::Account, ns::CARBONS, name, |req, t: Toggle| {
            if !req.from_owner() {
                return Err(StanzaError::service_unavailable());
            }
            if req.kind != IqKind::Set {
                return Err(StanzaError::bad_request());
            }
            let Ok(full) = req.from.clone().try_into_full() else {
                return Err(StanzaError::bad_request());
            };
            req.server
                .sessions
                .update(&full, |r| r.carbons = t.enable)
                .ok_or_else(StanzaError::internal_server_error)?;
            Ok(None)
        });
    }
}
