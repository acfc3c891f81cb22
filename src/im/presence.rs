//! Presence (RFC 6121 §3, §4): subscription stanzas in both directions through the
//! Appendix A tables, initial presence (probes, broadcast), probe answers with the last
//! unavailable presence, directed presence, and unavailable on logout.

use super::roster::push_change;
use super::subscription::{transition, Direction, State, SubType};
use crate::module::{PresenceEvent, Registry};
use crate::ns;
use crate::router;
use crate::sessions::SessionHandle;
use crate::store::{LastPresence, RosterItem, RosterUpdate};
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, Jid};

pub fn register(reg: &mut Registry) {
    reg.set_presence_outbound(outbound);
    reg.set_presence_to_account(inbound);
    reg.set_presence_broadcast(broadcast);
    reg.on_available(initial);
}

fn is_blocked(server: &ServerState, user: &BareJid, other: &Jid) -> bool {
    crate::services::blocking::blocks(server, user, other)
}

/// Sends a subscription stanza from `user` (bare) to `contact` through the outbound rules
/// (used by roster removal, which implies unsubscribe/unsubscribed).
pub fn send_subscription(server: &ServerState, user: &BareJid, contact: &BareJid, ty: SubType) {
    let p = super::presence(Some(ty.as_str()), user.as_str(), contact.as_str());
    outbound_subscription(server, user, contact, ty, p);
}

/// The presence of each of `user`'s available resources, addressed to `to`.
pub fn send_current_presence(server: &ServerState, user: &BareJid, to: &Jid) {
    for r in server.sessions.resources(user) {
        if let (true, Some(p)) = (r.available, r.presence.as_ref()) {
            let mut p = p.clone();
            p.set_attr("from", r.handle.jid.as_str());
            p.set_attr("to", to.as_str());
            router::route(server, p);
        }
    }
}

pub fn send_unavailable_from_all(server: &ServerState, user: &BareJid, to: &Jid) {
    for r in server.sessions.resources(user) {
        if r.available {
            let p = super::presence(Some("unavailable"), r.handle.jid.as_str(), to.as_str());
            router::route(server, p);
        }
    }
}

/// Presence a client addressed to someone.
fn outbound(server: &ServerState, handle: &SessionHandle, el: Element) -> Option<Element> {
    let to = Jid::new(el.attr("to")?).ok()?;
    let user = handle.jid.to_bare();
    let ty = el.attr("type").map(str::to_string);
    if let Some(st) = ty.as_deref().and_then(SubType::parse) {
        let contact = to.to_bare();
        outbound_subscription(server, &user, &contact, st, el);
        return None;
    }
    match ty.as_deref() {
        Some("probe") => {
            // Probes are the server's business (§4.3); a client's is ignored.
            tracing::debug!(from = %handle.jid, "client-sent probe ignored");
            None
        }
        None | Some("unavailable") => {
            if to.to_bare() != user {
                let subscribed = server
                    .store
                    .roster_item(user.as_str(), to.to_bare().as_str())
                    .ok()
                    .flatten()
                    .is_some_and(|i| i.state.has_from());
                let available = ty.is_none();
                // Contacts with a subscription hear about every change anyway; anyone
                // else is remembered so they learn when this resource goes away.
                if !subscribed || !available {
                    server.sessions.update(&handle.jid, |r| {
                        r.directed.retain(|j| j != &to);
                        if available && r.directed.len() < 256 {
                            r.directed.push(to.clone());
                        }
                    });
                }
            }
            Some(el)
        }
        _ => Some(el),
    }
}

/// RFC 6121 Appendix A.2 plus pre-approval (§3.4).
fn outbound_subscription(
    server: &ServerState,
    user: &BareJid,
    contact: &BareJid,
    st: SubType,
    original: Element,
) {
    if contact == user {
        tracing::debug!(%user, "subscription stanza to oneself ignored");
        return;
    }
    let mut forward = false;
    let change = server
        .store
        .roster_update(user.as_str(), contact.as_str(), |old| {
            let existed = old.is_some();
            let mut item = old.unwrap_or_else(|| RosterItem::new(contact.as_str()));
            let before = item.clone();
            let row = transition(Direction::Outbound, st, item.state);
            forward = row.forward;
            item.state = row.to;
            match st {
                SubType::Subscribe => item.listed = true,
                SubType::Subscribed => {
                    if row.forward {
                        item.listed = true;
                        item.request = None;
                    } else if matches!(item.state, State::None | State::NonePendingOut | State::To)
                    {
                        // §3.4: approve before being asked.
                        item.approved = true;
                        item.listed = true;
                    }
                }
                SubType::Unsubscribed => {
                    item.approved = false;
                    if !item.state.pending_in() {
                        item.request = None;
                    }
                }
                SubType::Unsubscribe => {}
            }
            if !item.listed && item.state == State::None && !item.approved {
                return if existed {
                    RosterUpdate::Remove
                } else {
                    RosterUpdate::Keep
                };
            }
            if existed && item == before {
                RosterUpdate::Keep
            } else {
                RosterUpdate::Put(item)
            }
        });
    let change = match change {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%user, "roster update failed: {e}; subscription stanza dropped");
            return;
        }
    };
    push_change(server, user, &change);
    if !forward {
        return;
    }
    // §3.1.2: the stanza leaves stamped with the user's bare JID.
    let mut out = Element::new("presence", ns::CLIENT)
        .with_attr("type", st.as_str())
        .with_attr("from", user.as_str())
        .with_attr("to", contact.as_str());
    if let Some(id) = original.attr("id") {
        out.set_attr("id", id);
    }
    for child in original.children() {
        out.push(child.clone());
    }
    router::route(server, out);
    let contact = Jid::from(contact.clone());
    match st {
        // §3.1.5: the new subscriber gets the user's current presence.
        SubType::Subscribed => send_current_presence(server, user, &contact),
        // §3.2.2: a cancelled subscriber learns the user is gone.
        SubType::Unsubscribed => send_unavailable_from_all(server, user, &contact),
        _ => {}
    }
}

/// Presence addressed to a local account's bare JID (or a subscription stanza or probe
/// to any of its resources).
fn inbound(server: &ServerState, user: &BareJid, el: Element) {
    let Some(from) = el.attr("from").and_then(|f| Jid::new(f).ok()) else {
        return;
    };
    match el.attr("type") {
        Some(t) => match SubType::parse(t) {
            Some(st) => inbound_subscription(server, user, &from.to_bare(), st, el),
            None if t == "probe" => answer_probe(server, user, &from),
            None if t == "unavailable" || t == "error" => {
                deliver_all(server, user, &el);
            }
            None => tracing::debug!(%user, ty = t, "presence of unknown type ignored"),
        },
        None => {
            deliver_all(server, user, &el);
        }
    }
}

/// §8.5.2.1.1: presence to a bare JID goes to every available resource.
fn deliver_all(server: &ServerState, user: &BareJid, el: &Element) -> bool {
    let mut any = false;
    for r in server.sessions.resources(user) {
        if r.available {
            any |= router::send_or_fallback(server, &r.handle, el.clone(), true);
        }
    }
    any
}

enum Inbound {
    Ignore,
    Deliver,
    /// Answer "subscribed" on the user's behalf (already approved or subscribed).
    AutoApprove,
}

/// RFC 6121 Appendix A.3 plus pre-approval (§3.4).
fn inbound_subscription(
    server: &ServerState,
    user: &BareJid,
    contact: &BareJid,
    st: SubType,
    el: Element,
) {
    if contact == user {
        return;
    }
    let mut action = Inbound::Ignore;
    let mut had_from = false;
    let request = String::from_utf8_lossy(&el.to_bytes("")).into_owned();
    let change = server
        .store
        .roster_update(user.as_str(), contact.as_str(), |old| {
            let existed = old.is_some();
            let mut item = old.unwrap_or_else(|| RosterItem::new(contact.as_str()));
            let before = item.clone();
            had_from = item.state.has_from();
            action = Inbound::Ignore;
            if st == SubType::Subscribe && item.state.has_from() {
                action = Inbound::AutoApprove;
                return RosterUpdate::Keep;
            }
            if st == SubType::Subscribe
                && item.approved
                && matches!(item.state, State::None | State::NonePendingOut | State::To)
            {
                // The pre-approval is used up: the state moves as if the user had
                // answered the request (§3.4).
                item.state = transition(Direction::Outbound, SubType::Subscribed, {
                    transition(Direction::Inbound, SubType::Subscribe, item.state).to
                })
                .to;
                item.approved = false;
                item.listed = true;
                action = Inbound::AutoApprove;
                return RosterUpdate::Put(item);
            }
            let row = transition(Direction::Inbound, st, item.state);
            item.state = row.to;
            if row.forward {
                action = Inbound::Deliver;
            }
            if st == SubType::Subscribe && row.forward {
                item.request = Some(request.clone());
            }
            if !item.state.pending_in() {
                item.request = None;
            }
            if !item.listed && item.state == State::None && !item.approved {
                return if existed {
                    RosterUpdate::Remove
                } else {
                    RosterUpdate::Keep
                };
            }
            if existed && item == before {
                RosterUpdate::Keep
            } else {
                RosterUpdate::Put(item)
            }
        });
    let change = match change {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%user, "roster update failed: {e}; subscription stanza dropped");
            return;
        }
    };
    push_change(server, user, &change);
    let contact_jid = Jid::from(contact.clone());
    match action {
        Inbound::Ignore => {
            tracing::debug!(%user, %contact, ty = st.as_str(), "subscription stanza ignored in this state");
        }
        Inbound::AutoApprove => {
            let p = super::presence(Some("subscribed"), user.as_str(), contact.as_str());
            router::route(server, p);
            send_current_presence(server, user, &contact_jid);
        }
        Inbound::Deliver => {
            let mut out = el;
            out.set_attr("from", contact.as_str());
            // A subscribe nobody is online to see stays in the roster item and is
            // re-sent at the next login (§3.1.3); the others are reflected in the roster.
            deliver_all(server, user, &out);
            if st == SubType::Unsubscribe && had_from {
                // §3.3.3: the former subscriber learns the user is gone.
                send_unavailable_from_all(server, user, &contact_jid);
            }
        }
    }
}

/// §4.3.2: answer a probe from `prober` for `user`'s presence.
fn answer_probe(server: &ServerState, user: &BareJid, prober: &Jid) {
    let prober_bare = prober.to_bare();
    let allowed = prober_bare == *user
        || server
            .store
            .roster_item(user.as_str(), prober_bare.as_str())
            .ok()
            .flatten()
            .is_some_and(|i| i.state.has_from());
    if !allowed {
        // The prober believes it is subscribed and is not: tell it, revealing nothing.
        let p = super::presence(Some("unsubscribed"), user.as_str(), prober_bare.as_str());
        router::route(server, p);
        return;
    }
    if is_blocked(server, user, prober) {
        return;
    }
    let online = server
        .sessions
        .resources(user)
        .into_iter()
        .any(|r| r.available);
    if online {
        return send_current_presence(server, user, prober);
    }
    // Nobody online: the last unavailable presence, stamped with when it was sent.
    let last = server.store.last_presence(user.as_str()).ok().flatten();
    let mut p = last
        .as_ref()
        .and_then(|l| crate::xml::reader::parse_element(l.xml.as_bytes()).ok())
        .unwrap_or_else(|| super::presence(Some("unavailable"), user.as_str(), ""));
    p.set_attr("type", "unavailable");
    p.set_attr("from", user.as_str());
    p.set_attr("to", prober.as_str());
    if let Some(l) = last {
        p.remove_children(|c| c.is("delay", ns::DELAY));
        p.push(
            Element::new("delay", ns::DELAY)
                .with_attr("from", server.config.domain.as_str())
                .with_attr("stamp", crate::datetime::format(l.at)),
        );
    }
    router::route(server, p);
}

/// Contacts allowed to see `user`'s presence.
fn subscribers(server: &ServerState, user: &BareJid) -> Vec<RosterItem> {
    match server.store.roster(user.as_str()) {
        Ok(items) => items.into_iter().filter(|i| i.state.has_from()).collect(),
        Err(e) => {
            tracing::error!(%user, "reading the roster failed: {e}");
            Vec::new()
        }
    }
}

/// §4.2.2, §4.4.2, §4.5.2: a broadcast presence goes to every subscriber; unavailable
/// also to everyone who got directed presence.
fn broadcast(server: &ServerState, ev: &PresenceEvent<'_>) {
    let user = ev.handle.jid.to_bare();
    let unavailable = ev.presence.attr("type") == Some("unavailable");
    let mut sent: Vec<Jid> = Vec::new();
    if ev.was_available || !unavailable {
        for item in subscribers(server, &user) {
            let Ok(to) = Jid::new(&item.jid) else {
                continue;
            };
            if is_blocked(server, &user, &to) {
                continue;
            }
            let mut p = ev.presence.clone();
            p.set_attr("from", ev.handle.jid.as_str());
            p.set_attr("to", to.as_str());
            router::route(server, p);
            sent.push(to);
        }
    }
    if unavailable {
        for to in &ev.directed {
            if sent.contains(to) || is_blocked(server, &user, to) {
                continue;
            }
            let mut p = ev.presence.clone();
            p.set_attr("from", ev.handle.jid.as_str());
            p.set_attr("to", to.as_str());
            router::route(server, p);
        }
        let still_online = server
            .sessions
            .resources(&user)
            .into_iter()
            .any(|r| r.available && r.handle.id != ev.handle.id);
        if ev.was_available && !still_online {
            let mut p = ev.presence.clone();
            p.remove_attr("to");
            let last = LastPresence {
                at: crate::store::now_secs(),
                xml: String::from_utf8_lossy(&p.to_bytes("")).into_owned(),
            };
            if let Err(e) = server.store.set_last_presence(user.as_str(), &last) {
                tracing::warn!(%user, "storing the last presence failed: {e}");
            }
        }
    }
}

/// Initial presence (§4.2): probe the contacts the user is subscribed to, show the new
/// resource the user's other resources, and re-send unanswered subscription requests.
fn initial(server: &ServerState, handle: &SessionHandle, _presence: &Element) {
    let user = handle.jid.to_bare();
    let items = match server.store.roster(user.as_str()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(%user, "reading the roster failed: {e}");
            return;
        }
    };
    for item in &items {
        if item.state.has_to() {
            let Ok(to) = Jid::new(&item.jid) else {
                continue;
            };
            if is_blocked(server, &user, &to) {
                continue;
            }
            let probe = super::presence(Some("probe"), handle.jid.as_str(), &item.jid);
            router::route(server, probe);
        }
    }
    for r in server.sessions.resources(&user) {
        if r.handle.id == handle.id || !r.available {
            continue;
        }
        if let Some(p) = &r.presence {
            let mut p = p.clone();
            p.set_attr("from", r.handle.jid.as_str());
            p.set_attr("to", handle.jid.as_str());
            let _ = handle.send(p);
        }
    }
    for item in &items {
        if !item.state.pending_in() {
            continue;
        }
        let mut p = item
            .request
            .as_ref()
            .and_then(|x| crate::xml::reader::parse_element(x.as_bytes()).ok())
            .unwrap_or_else(|| super::presence(Some("subscribe"), &item.jid, user.as_str()));
        p.set_attr("from", item.jid.as_str());
        p.set_attr("to", user.as_str());
        let _ = handle.send(p);
    }
}
