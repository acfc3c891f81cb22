//! XEP-0191: Blocking Command. A blocked JID gets nothing from the user (presence is
//! withheld, messages and IQs from the user's sessions are refused with not-acceptable
//! and `<blocked/>`), and the user gets nothing from it (its messages and IQ requests are
//! answered with service-unavailable, everything else dropped). Changes are pushed to all
//! of the user's resources.
//!
//! Blocking one's own bare JID is refused with not-acceptable: it would cut the user off
//! from their own resources, and nobody means to do it.

use crate::jidext::JidExt;
use crate::module::{Filtered, IqKind, IqTarget, Registry, Verdict};
use crate::ns;
use crate::stanza::{Kind, StanzaError};
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, Jid};

pub struct BlockingQuery {
    pub name: String,
    pub items: Vec<Result<Jid, ()>>,
}

impl TryFrom<&Element> for BlockingQuery {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        let items = el
            .children()
            .filter(|c| c.is("item", ns::BLOCKING))
            .map(|c| c.attr("jid").and_then(|j| Jid::new(j).ok()).ok_or(()))
            .collect();
        Ok(BlockingQuery {
            name: el.name().to_string(),
            items,
        })
    }
}

/// Whether `item` (a blocklist entry) covers `jid`: an exact match, a bare entry for
/// any of its resources, or a domain entry for everything on that domain (XEP-0191 §3.3
/// borrows these rules from privacy lists).
fn matches(item: &str, jid: &Jid) -> bool {
    let Ok(item) = Jid::new(item) else {
        return false;
    };
    if item.domain() != jid.domain() {
        return false;
    }
    match (item.node(), item.resource()) {
        (None, None) => true,
        (None, Some(r)) => jid.node().is_none() && jid.resource() == Some(r),
        (Some(_), None) => item.to_bare() == jid.to_bare(),
        (Some(_), Some(_)) => item.as_str() == jid.as_str(),
    }
}

/// Does `user` block `other`?
pub fn blocks(server: &ServerState, user: &BareJid, other: &Jid) -> bool {
    match server.store.blocklist(user.as_str()) {
        Ok(list) => list.iter().any(|i| matches(i, other)),
        Err(e) => {
            tracing::error!(%user, "reading the blocklist failed: {e}");
            false
        }
    }
}

fn blocked_error() -> StanzaError {
    let mut e = StanzaError::not_acceptable();
    e.app = Some(Box::new(Element::new("blocked", ns::BLOCKING_ERRORS)));
    e
}

fn filter(server: &ServerState, f: &Filtered<'_>) -> Verdict {
    match f {
        Filtered::Outbound { handle, to, stanza } => {
            // Nobody blocks anybody: nothing to look at (the common case, per message).
            if !server.store.any_blocklists() {
                return Verdict::Pass;
            }
            // The user's own account and server stay reachable (to unblock, at least).
            if to.bare_str() == handle.jid.bare_str()
                || to.node().is_none() && to.domain() == handle.jid.domain()
            {
                return Verdict::Pass;
            }
            if !blocks(server, &handle.jid.bare(), to) {
                return Verdict::Pass;
            }
            let ty = stanza.attr("type").unwrap_or("");
            match Kind::of(stanza) {
                Some(Kind::Message) if ty != "error" => Verdict::Bounce(blocked_error()),
                Some(Kind::Iq) if matches!(ty, "get" | "set") => Verdict::Bounce(blocked_error()),
                _ => Verdict::Drop,
            }
        }
        Filtered::Inbound { from, to, stanza } => {
            if !server.store.any_blocklists() {
                return Verdict::Pass;
            }
            if from.bare_str() == to.as_str()
                || from.node().is_none() && from.domain() == to.domain()
            {
                return Verdict::Pass;
            }
            if !blocks(server, to, from) {
                return Verdict::Pass;
            }
            let ty = stanza.attr("type").unwrap_or("");
            match Kind::of(stanza) {
                Some(Kind::Message) if ty != "error" && ty != "groupchat" && ty != "headline" => {
                    Verdict::Bounce(StanzaError::service_unavailable())
                }
                Some(Kind::Iq) if matches!(ty, "get" | "set") => {
                    Verdict::Bounce(StanzaError::service_unavailable())
                }
                _ => Verdict::Drop,
            }
        }
    }
}

fn push(server: &ServerState, user: &BareJid, payload: Element) {
    for r in server.sessions.resources(user) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "block-push")
            .with_attr("to", r.handle.jid.as_str())
            .with_child(payload.clone());
        let _ = r.handle.send(iq);
    }
}

fn store_err(e: crate::store::StoreError) -> StanzaError {
    tracing::error!("blocklist store error: {e}");
    StanzaError::internal_server_error()
}

/// Contacts who receive the user's presence (subscription "from" or "both").
fn subscribed(server: &ServerState, user: &BareJid, jid: &Jid) -> bool {
    server
        .store
        .roster_item(user.as_str(), jid.to_bare().as_str())
        .ok()
        .flatten()
        .is_some_and(|i| i.state.has_from())
}

pub fn register(reg: &mut Registry) {
    reg.spec("0191", "1.3.0", "Blocking Command");
    reg.server_feature(ns::BLOCKING);
    reg.filter(filter);
    for name in ["blocklist", "block", "unblock"] {
        reg.iq(
            IqTarget::Account,
            ns::BLOCKING,
            name,
            |req, q: BlockingQuery| {
                if !req.from_owner() {
                    return Err(StanzaError::service_unavailable());
                }
                let user = req.from_bare();
                let server = req.server;
                match (req.kind, q.name.as_str()) {
                    (IqKind::Get, "blocklist") => {
                        let mut out = Element::new("blocklist", ns::BLOCKING);
                        for j in server.store.blocklist(user.as_str()).map_err(store_err)? {
                            out.push(Element::new("item", ns::BLOCKING).with_attr("jid", j));
                        }
                        Ok(Some(out))
                    }
                    (IqKind::Set, "block") => block(server, &user, q.items),
                    (IqKind::Set, "unblock") => unblock(server, &user, q.items),
                    _ => Err(StanzaError::bad_request()),
                }
            },
        );
    }
}

fn parse_items(items: Vec<Result<Jid, ()>>) -> Result<Vec<Jid>, StanzaError> {
    items
        .into_iter()
        .map(|i| i.map_err(|()| StanzaError::jid_malformed()))
        .collect()
}

fn block(
    server: &ServerState,
    user: &BareJid,
    items: Vec<Result<Jid, ()>>,
) -> crate::module::IqResult {
    let jids = parse_items(items)?;
    if jids.is_empty() {
        return Err(StanzaError::bad_request().with_text("block needs at least one item"));
    }
    if jids
        .iter()
        .any(|j| j.to_bare() == *user && j.resource().is_none())
    {
        return Err(StanzaError::not_acceptable().with_text("you cannot block yourself"));
    }
    let max = server.config.im.max_blocklist_items;
    let mut full = false;
    let mut added = Vec::new();
    server
        .store
        .update_blocklist(user.as_str(), |list| {
            added.clear();
            for j in &jids {
                if !list.iter().any(|i| i == j.as_str()) && !added.contains(j) {
                    added.push(j.clone());
                }
            }
            full = list.len() + added.len() > max;
            if full || added.is_empty() {
                return false;
            }
            list.extend(added.iter().map(|j| j.as_str().to_string()));
            true
        })
        .map_err(store_err)?;
    if full {
        return Err(StanzaError::not_allowed().with_text("the blocklist is full"));
    }
    // The newly blocked stop seeing the user's presence at once.
    for j in &added {
        if subscribed(server, user, j) {
            crate::im::presence::send_unavailable_from_all(server, user, j);
        }
    }
    let mut payload = Element::new("block", ns::BLOCKING);
    for j in &jids {
        payload.push(Element::new("item", ns::BLOCKING).with_attr("jid", j.as_str()));
    }
    push(server, user, payload);
    Ok(None)
}

fn unblock(
    server: &ServerState,
    user: &BareJid,
    items: Vec<Result<Jid, ()>>,
) -> crate::module::IqResult {
    let jids = parse_items(items)?;
    let mut removed: Vec<String> = Vec::new();
    server
        .store
        .update_blocklist(user.as_str(), |list| {
            removed.clear();
            if jids.is_empty() {
                // No items: unblock everyone (XEP-0191 §3.4).
                removed = std::mem::take(list);
            } else {
                list.retain(|i| {
                    let hit = jids.iter().any(|j| j.as_str() == i);
                    if hit {
                        removed.push(i.clone());
                    }
                    !hit
                });
            }
            !removed.is_empty()
        })
        .map_err(store_err)?;
    for j in removed.iter().filter_map(|j| Jid::new(j).ok()) {
        if subscribed(server, user, &j) {
            crate::im::presence::send_current_presence(server, user, &j);
        }
    }
    let mut payload = Element::new("unblock", ns::BLOCKING);
    for j in &jids {
        payload.push(Element::new("item", ns::BLOCKING).with_attr("jid", j.as_str()));
    }
    push(server, user, payload);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        let j = |s| Jid::new(s).unwrap();
        assert!(matches("b@x", &j("b@x/r")));
        assert!(matches("b@x", &j("b@x")));
        assert!(!matches("b@x/r", &j("b@x/s")));
        assert!(matches("b@x/r", &j("b@x/r")));
        assert!(matches("x", &j("b@x/r")));
        assert!(!matches("x", &j("b@y")));
        assert!(!matches("x/r", &j("b@x/r")));
        assert!(matches("x/r", &j("x/r")));
        assert!(!matches("c@x", &j("b@x")));
    }
}
