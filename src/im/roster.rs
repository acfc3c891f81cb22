//! Roster management (RFC 6121 §2): get with versioning (§2.6), set, remove, and roster
//! pushes to every resource that asked for the roster.

use super::presence::send_subscription;
use super::subscription::SubType;
use crate::module::{IqKind, IqTarget, Registry};
use crate::ns;
use crate::stanza::StanzaError;
use crate::store::{RosterItem, RosterUpdate};
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, Jid};

/// Longest name or group we keep; RFC 6121 §2.3.3 lets a server refuse longer ones.
const MAX_TEXT: usize = 1023;
const MAX_GROUPS: usize = 64;

/// A roster item as the client sent it in a set.
pub struct ItemIn {
    pub jid: BareJid,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub remove: bool,
}

pub struct RosterQuery {
    pub ver: Option<String>,
    /// Parsing errors of the item are kept for a set (a get ignores items).
    pub item: Option<Result<ItemIn, StanzaError>>,
    pub item_count: usize,
}

impl TryFrom<&Element> for RosterQuery {
    type Error = StanzaError;
    fn try_from(el: &Element) -> Result<Self, StanzaError> {
        let items: Vec<&Element> = el.children().filter(|c| c.is("item", ns::ROSTER)).collect();
        Ok(RosterQuery {
            ver: el.attr("ver").map(str::to_string),
            item_count: items.len(),
            item: items.first().map(|i| parse_item(i)),
        })
    }
}

fn parse_item(el: &Element) -> Result<ItemIn, StanzaError> {
    let raw = el
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request().with_text("item without a jid"))?;
    let jid = match Jid::new(raw).map(Jid::try_into_full) {
        Ok(Err(bare)) => bare,
        Ok(Ok(_)) => {
            return Err(StanzaError::jid_malformed().with_text("roster items are bare JIDs"))
        }
        Err(_) => return Err(StanzaError::jid_malformed()),
    };
    let name = el
        .attr("name")
        .map(str::to_string)
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > MAX_TEXT) {
        return Err(StanzaError::not_acceptable().with_text("name too long"));
    }
    let mut groups = Vec::new();
    for g in el.children().filter(|c| c.is("group", ns::ROSTER)) {
        let g = g.text();
        if g.is_empty() || g.len() > MAX_TEXT {
            return Err(StanzaError::not_acceptable().with_text("empty or overlong group"));
        }
        if groups.contains(&g) {
            return Err(StanzaError::bad_request().with_text("duplicate group"));
        }
        groups.push(g);
    }
    if groups.len() > MAX_GROUPS {
        return Err(StanzaError::not_acceptable().with_text("too many groups"));
    }
    Ok(ItemIn {
        jid,
        name,
        groups,
        // Any other subscription value from a client is ignored (§2.1.2.5).
        remove: el.attr("subscription") == Some("remove"),
    })
}

pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_attr("subscription", item.state.attr());
    if let Some(n) = &item.name {
        el.set_attr("name", n.as_str());
    }
    if item.state.pending_out() {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push(Element::new("group", ns::ROSTER).with_text(g.as_str()));
    }
    el
}

/// Sends a roster push (§2.1.6) to every resource of `user` that asked for the roster.
/// `item` is the item after the change, or (jid, None) for a removal.
pub fn push(server: &ServerState, user: &BareJid, jid: &str, item: Option<&RosterItem>, ver: u64) {
    let item_el = match item {
        Some(i) => item_element(i),
        None => Element::new("item", ns::ROSTER)
            .with_attr("jid", jid)
            .with_attr("subscription", "remove"),
    };
    let query = Element::new("query", ns::ROSTER)
        .with_attr("ver", ver.to_string())
        .with_child(item_el);
    for r in server.sessions.resources(user) {
        if !r.interested {
            continue;
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{ver}"))
            .with_attr("to", r.handle.jid.as_str())
            .with_child(query.clone());
        // A push that cannot be queued is not worth re-routing: the client refetches
        // the roster when it reconnects.
        let _ = r.handle.send(iq);
    }
}

/// Pushes the result of a store change, if the roster visibly changed.
pub fn push_change(server: &ServerState, user: &BareJid, change: &crate::store::RosterChange) {
    let Some(ver) = change.ver else { return };
    let was_listed = change.before.as_ref().is_some_and(|i| i.listed);
    match &change.after {
        Some(item) if item.listed => push(server, user, &item.jid, Some(item), ver),
        Some(_) => {}
        None if was_listed => {
            if let Some(before) = &change.before {
                push(server, user, &before.jid, None, ver)
            }
        }
        None => {}
    }
}

fn store_err(e: crate::store::StoreError) -> StanzaError {
    tracing::error!("roster store error: {e}");
    StanzaError::internal_server_error()
}

pub fn register(reg: &mut Registry) {
    reg.stream_feature(Element::new("ver", ns::ROSTER_VER));
    reg.stream_feature(Element::new("sub", ns::PRE_APPROVAL));
    reg.iq(
        IqTarget::Account,
        ns::ROSTER,
        "query",
        |req, q: RosterQuery| {
            // Only the owner reads or writes a roster; to anyone else it does not exist.
            if !req.from_owner() {
                return Err(StanzaError::service_unavailable());
            }
            let user = req.from_bare();
            match req.kind {
                IqKind::Get => get(req.server, req.from, &user, q.ver.as_deref()),
                IqKind::Set => set(req.server, &user, q),
            }
        },
    );
}

fn get(
    server: &ServerState,
    from: &Jid,
    user: &BareJid,
    ver: Option<&str>,
) -> crate::module::IqResult {
    if let Ok(full) = from.clone().try_into_full() {
        server.sessions.update(&full, |r| r.interested = true);
    }
    let meta = server.store.roster_meta(user.as_str()).map_err(store_err)?;
    let items = server.store.roster(user.as_str()).map_err(store_err)?;
    let listed = items.into_iter().filter(|i| i.listed);
    let Some(client_ver) = ver else {
        let mut q = Element::new("query", ns::ROSTER);
        for i in listed {
            q.push(item_element(&i));
        }
        return Ok(Some(q));
    };
    // §2.6.3: an up-to-date client gets an empty result; one that missed only additions
    // and changes gets them as pushes; anything older (or unparsable) gets it all.
    match client_ver.parse::<u64>() {
        Ok(v) if v == meta.ver => Ok(None),
        Ok(v) if v >= meta.floor && v < meta.ver => {
            let changed: Vec<RosterItem> = listed.filter(|i| i.ver > v).collect();
            if let Ok(full) = from.clone().try_into_full() {
                if let Some(r) = server.sessions.get(&full) {
                    // These are queued just before the empty result (a handler returns
                    // its reply); each push carries its own version, so a client that
                    // applies them in order ends up at the current version either way.
                    let mut sorted = changed;
                    sorted.sort_by_key(|i| i.ver);
                    for i in sorted {
                        let iq = Element::new("iq", ns::CLIENT)
                            .with_attr("type", "set")
                            .with_attr("id", format!("push{}", i.ver))
                            .with_attr("to", full.as_str())
                            .with_child(
                                Element::new("query", ns::ROSTER)
                                    .with_attr("ver", i.ver.to_string())
                                    .with_child(item_element(&i)),
                            );
                        let _ = r.handle.send(iq);
                    }
                }
            }
            Ok(None)
        }
        _ => {
            let mut q = Element::new("query", ns::ROSTER).with_attr("ver", meta.ver.to_string());
            for i in listed {
                q.push(item_element(&i));
            }
            Ok(Some(q))
        }
    }
}

fn set(server: &ServerState, user: &BareJid, q: RosterQuery) -> crate::module::IqResult {
    if q.item_count != 1 {
        return Err(StanzaError::bad_request().with_text("a roster set carries exactly one item"));
    }
    let item = match q.item {
        Some(Ok(i)) => i,
        Some(Err(e)) => return Err(e),
        None => return Err(StanzaError::bad_request()),
    };
    let contact = item.jid.as_str().to_string();
    if item.remove {
        return remove(server, user, &contact);
    }
    let limit = server.config.im.max_roster_items;
    let count = server
        .store
        .roster(user.as_str())
        .map_err(store_err)?
        .iter()
        .filter(|i| i.listed)
        .count();
    let mut too_many = false;
    let change = server
        .store
        .roster_update(user.as_str(), &contact, |old| {
            too_many = false;
            let mut it = match old {
                Some(i) => {
                    if !i.listed && count >= limit {
                        too_many = true;
                        return RosterUpdate::Keep;
                    }
                    i
                }
                None => {
                    if count >= limit {
                        too_many = true;
                        return RosterUpdate::Keep;
                    }
                    RosterItem::new(contact.clone())
                }
            };
            it.name = item.name.clone();
            it.groups = item.groups.clone();
            it.listed = true;
            RosterUpdate::Put(it)
        })
        .map_err(store_err)?;
    if too_many {
        // RFC 6121 §2.5.3 (roster size): not-allowed.
        return Err(StanzaError::not_allowed().with_text("the roster is full"));
    }
    push_change(server, user, &change);
    Ok(None)
}

/// §2.5: removing an item also cancels both subscriptions, telling the contact.
fn remove(server: &ServerState, user: &BareJid, contact: &str) -> crate::module::IqResult {
    let change = server
        .store
        .roster_update(user.as_str(), contact, |old| match old {
            Some(_) => RosterUpdate::Remove,
            None => RosterUpdate::Keep,
        })
        .map_err(store_err)?;
    let Some(before) = change.before.as_ref() else {
        return Err(StanzaError::item_not_found());
    };
    if let Ok(contact_jid) = BareJid::new(contact) {
        let s = before.state;
        if s.has_to() || s.pending_out() {
            send_subscription(server, user, &contact_jid, SubType::Unsubscribe);
        }
        if s.has_from() || s.pending_in() || before.approved {
            send_subscription(server, user, &contact_jid, SubType::Unsubscribed);
        }
        if s.has_from() {
            super::presence::send_unavailable_from_all(server, user, &Jid::from(contact_jid));
        }
    }
    push_change(server, user, &change);
    Ok(None)
}
