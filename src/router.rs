//! The router: looks only at `to`, `from` and the stanza kind, and applies the RFC 6121
//! §8.5 delivery rules in one place.
//!
//! Every stanza reaching `route` already carries a `from` the server stamped or trusts.
//! Whatever cannot be delivered is bounced to its sender with the RFC's error (or, for
//! messages to offline users, handed to the offline-storage hook) — never dropped
//! silently, except where the RFC says to ignore (errors, headlines to nobody).

use crate::jidext::JidExt;
use crate::module::{Filtered, IqKind, IqRequest, IqTarget, PresenceEvent, Verdict};
use crate::sessions::{Resource, SendError, SessionHandle, SharedStanza};
use crate::stanza::{error_reply, iq_result, Kind, StanzaError};
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, FullJid, Jid};

/// Where a JID lives, from this server's point of view.
pub enum Destination {
    /// Our own domain, no localpart.
    Server,
    LocalBare(BareJid),
    LocalFull(FullJid),
    /// A domain served by a local service (MUC, components).
    Service(String),
    Remote(String),
}

pub fn classify(server: &ServerState, to: &Jid) -> Destination {
    classify_owned(server, to.clone())
}

/// [`classify`], keeping the JID's string for a local destination instead of copying it.
fn classify_owned(server: &ServerState, to: Jid) -> Destination {
    let domain = to.domain().as_str();
    if domain == server.config.domain {
        match (to.node().is_some(), to.try_into_full()) {
            (false, _) => Destination::Server,
            (true, Ok(full)) => Destination::LocalFull(full),
            (true, Err(bare)) => Destination::LocalBare(bare),
        }
    } else if server.registry.has_domain(domain) {
        Destination::Service(domain.to_string())
    } else {
        Destination::Remote(domain.to_string())
    }
}

/// A stanza from a bound client session, `from` already stamped: outbound filters
/// (blocking), the IM module's outbound presence processing (subscriptions, directed
/// presence) and message hooks (carbons) run here, then the stanza is routed.
pub fn from_client(server: &ServerState, handle: &SessionHandle, stanza: Element) {
    let to = match stanza.attr("to").map(Jid::new) {
        Some(Ok(to)) => Some(to),
        Some(Err(_)) => return bounce(server, &stanza, StanzaError::jid_malformed()),
        None => None,
    };
    from_client_parsed(server, handle, stanza, to)
}

/// [`from_client`] when the session has parsed the stanza's `to` already (`to` must be
/// that attribute, parsed).
pub fn from_client_parsed(
    server: &ServerState,
    handle: &SessionHandle,
    stanza: Element,
    to: Option<Jid>,
) {
    let kind = Kind::of(&stanza);
    if let Some(to) = &to {
        let filtered = Filtered::Outbound {
            handle,
            to,
            stanza: &stanza,
        };
        match server.registry.run_filters(server, &filtered) {
            Verdict::Pass => {}
            Verdict::Drop => return,
            Verdict::Bounce(err) => {
                // The error comes from the server, not from the addressee: the sender
                // must not think the addressee answered.
                if let Some(mut reply) = error_reply(&stanza, &err) {
                    reply.set_attr("from", to.as_str());
                    let _ = send_or_fallback(server, handle, reply, true);
                }
                return;
            }
        }
    }
    let stanza = match kind {
        Some(Kind::Presence) if to.is_some() => match server.registry.presence_outbound_hook() {
            Some(hook) => match hook(server, handle, stanza) {
                Some(s) => s,
                None => return,
            },
            None => stanza,
        },
        Some(Kind::Message) => {
            server.registry.run_sent(server, handle, &stanza);
            stanza
        }
        _ => stanza,
    };
    // The common case, a message or IQ the session stamped with its own JID: the JIDs
    // are parsed already (JID preparation is a large share of the per-message cost), so
    // they are not parsed again. Anything else takes the general path.
    match (kind, to) {
        (Some(kind @ (Kind::Message | Kind::Iq)), to)
            if stanza.attr("from") == Some(handle.jid.as_str()) =>
        {
            route_parsed(server, kind, &handle.jid, to, stanza)
        }
        _ => route(server, stanza),
    }
}

/// Inbound filters for a stanza about to reach a local account; false when it must not.
fn inbound_allowed(server: &ServerState, from: &Jid, to: &BareJid, stanza: &Element) -> bool {
    let filtered = Filtered::Inbound { from, to, stanza };
    match server.registry.run_filters(server, &filtered) {
        Verdict::Pass => true,
        Verdict::Drop => false,
        Verdict::Bounce(err) => {
            bounce(server, stanza, err);
            false
        }
    }
}

/// Routes a stanza whose `from` is already trustworthy.
pub fn route(server: &ServerState, stanza: Element) {
    let Some(kind) = Kind::of(&stanza) else {
        tracing::warn!(name = stanza.name(), "router given a non-stanza; dropped");
        return;
    };
    let from = match stanza.attr("from").map(Jid::new) {
        Some(Ok(from)) => from,
        _ => {
            tracing::warn!("router given a stanza without a valid from; dropped");
            return;
        }
    };
    let to = match stanza.attr("to") {
        None => None,
        Some(t) => match Jid::new(t) {
            Ok(to) => Some(to),
            Err(_) => return bounce(server, &stanza, StanzaError::jid_malformed()),
        },
    };
    route_parsed(server, kind, &from, to, stanza)
}

/// `route` once `from` and `to` (the stanza's own attributes) are parsed. Local services
/// that send many stanzas from one JID (a MUC room's fan-out) parse it once and call
/// this directly.
pub(crate) fn route_parsed(
    server: &ServerState,
    kind: Kind,
    from: &Jid,
    to: Option<Jid>,
    stanza: Element,
) {
    // No `to` means the sender's own account (RFC 6120 §10.3).
    let to = to.unwrap_or_else(|| Jid::from(from.bare()));
    if to.node().is_none() && to.domain().as_str() == server.config.domain {
        return to_server(server, kind, from, &to, stanza);
    }
    match classify_owned(server, to) {
        Destination::Server => {
            // Handled above: the server's own JID is all that classifies as this.
            tracing::warn!("stanza to the server reached the wrong branch; dropped");
        }
        Destination::LocalBare(bare) => {
            if inbound_allowed(server, from, &bare, &stanza) {
                let stanza = inbound_message(server, kind, &bare, stanza);
                to_bare(server, kind, from, bare, stanza)
            }
        }
        Destination::LocalFull(full) => {
            let bare = full.bare();
            if inbound_allowed(server, from, &bare, &stanza) {
                let stanza = inbound_message(server, kind, &bare, stanza);
                to_full(server, kind, from, full, bare, stanza)
            }
        }
        Destination::Service(domain) => server.registry.deliver_to_domain(server, &domain, stanza),
        Destination::Remote(domain) => crate::s2s::send(server, &domain, stanza),
    }
}

/// A room's groupchat fan-out to one occupant session, `to`: a local session gets the
/// shared stanza itself in its queue; anything else (a remote occupant, a session that is
/// gone) takes the ordinary path with a copy of its own.
///
/// The per-account inbound hooks do not run for the shared stanza: they act on what is
/// archived in a user's own archive, which groupchat never is (XEP-0313 §4.1.2), and the
/// room strips every `<stanza-id/>` an occupant wrote before it shares the message.
pub(crate) fn route_shared(
    server: &ServerState,
    from: &Jid,
    to: &FullJid,
    shared: &std::sync::Arc<SharedStanza>,
) {
    if to.domain().as_str() == server.config.domain {
        if let Some((handle, false)) = server.sessions.delivery_handle(to) {
            let bare = to.bare();
            let filtered = Filtered::Inbound {
                from,
                to: &bare,
                stanza: shared.element(),
            };
            match server.registry.run_filters(server, &filtered) {
                Verdict::Pass => {}
                Verdict::Drop => return,
                Verdict::Bounce(err) => {
                    return bounce(server, &shared.to_element(to.as_str()), err);
                }
            }
            settle(server, &handle, handle.send_shared(shared), false);
            return;
        }
    }
    let el = shared.to_element(to.as_str());
    route_parsed(server, Kind::Message, from, Some(Jid::from(to.clone())), el)
}

/// Runs the inbound-message hooks (the archive) exactly once per message and account:
/// here, where a message first reaches the account, rather than in the delivery rules,
/// which may run again for the same message (a resource gone, a session ended).
fn inbound_message(server: &ServerState, kind: Kind, to: &BareJid, stanza: Element) -> Element {
    if kind != Kind::Message {
        return stanza;
    }
    let mut stanza = stanza;
    server.registry.run_inbound(server, to, &mut stanza);
    stanza
}

/// Sends the RFC's error back to the sender of `stanza` (never for errors themselves).
pub fn bounce(server: &ServerState, stanza: &Element, err: StanzaError) {
    if let Some(reply) = error_reply(stanza, &err) {
        if reply.attr("to").is_none() {
            return;
        }
        // The reply's `from` is what the sender addressed; if that was malformed, speak
        // for the server instead.
        let mut reply = reply;
        if reply.attr("from").map(Jid::new).is_some_and(|r| r.is_err()) {
            reply.set_attr("from", server.config.domain.clone());
        }
        route(server, reply);
    }
}

fn to_server(server: &ServerState, kind: Kind, from: &Jid, to: &Jid, stanza: Element) {
    match kind {
        Kind::Iq => handle_iq(server, IqTarget::Server, from, to, stanza),
        // The server itself is not a chat partner; RFC 6120 §10.3.1 lets it handle
        // these as it sees fit, and answering would only invite loops.
        Kind::Message | Kind::Presence => {
            tracing::debug!(%from, kind = ?kind, "stanza to the server itself ignored");
        }
    }
}

fn account_exists(server: &ServerState, bare: &BareJid) -> bool {
    server.sessions.is_online(bare) || matches!(server.store.account(bare.as_str()), Ok(Some(_)))
}

/// RFC 6121 §8.5.2 (and §8.5.1 for accounts that do not exist).
fn to_bare(server: &ServerState, kind: Kind, from: &Jid, bare: BareJid, stanza: Element) {
    if !account_exists(server, &bare) {
        // §8.5.1: messages and IQs get service-unavailable (headlines and errors are
        // ignored); presence to a non-existent user is silently ignored.
        let ty = stanza.attr("type").unwrap_or("");
        if kind == Kind::Presence || ty == "headline" || ty == "error" {
            return;
        }
        if kind == Kind::Iq && (ty == "result" || ty == "error") {
            return;
        }
        return bounce(server, &stanza, StanzaError::service_unavailable());
    }
    match kind {
        Kind::Iq => handle_iq(server, IqTarget::Account, from, &Jid::from(bare), stanza),
        Kind::Message => message_to_bare(server, &bare, stanza),
        Kind::Presence => presence_to_bare(server, &bare, stanza),
    }
}

/// Our choice among RFC 6121 §8.5.2.1.1's options: a chat or normal message goes to every
/// available resource sharing the highest non-negative priority (so two equal desktops
/// both ring; carbons then copy it to the rest); a headline goes to all non-negative
/// resources. Resources with negative priority never get bare-JID messages (§8.5.2.1.1);
/// when only those are online, the message is stored offline as if nobody were.
/// Groupchat to a bare JID is service-unavailable; errors are dropped (never answered).
fn message_to_bare(server: &ServerState, bare: &BareJid, stanza: Element) {
    let ty = stanza.attr("type").unwrap_or("normal");
    let resources: Vec<Resource> = server
        .sessions
        .resources(bare)
        .into_iter()
        .filter(|r| r.available && r.priority >= 0)
        .collect();
    match ty {
        "error" => {}
        "groupchat" => bounce(server, &stanza, StanzaError::service_unavailable()),
        "headline" => {
            // RFC 6121 §8.5.2.1.1: a headline nobody can take is silently ignored.
            for r in &resources {
                let _ = send_or_fallback(server, &r.handle, stanza.clone(), false);
            }
        }
        _ => {
            let Some(top) = resources.iter().map(|r| r.priority).max() else {
                return offline(server, stanza);
            };
            let mut delivered = Vec::new();
            for r in resources.iter().filter(|r| r.priority == top) {
                if send_or_fallback(server, &r.handle, stanza.clone(), false) {
                    delivered.push(r.handle.id);
                }
            }
            if !delivered.is_empty() {
                server
                    .registry
                    .run_delivered(server, bare, &stanza, &delivered);
            }
        }
    }
}

fn presence_to_bare(server: &ServerState, bare: &BareJid, stanza: Element) {
    if let Some(hook) = server.registry.presence_to_account_hook() {
        return hook(server, bare, stanza);
    }
    // Without the IM module: hand presence of any kind to every available resource.
    for r in server.sessions.resources(bare) {
        if r.available {
            let _ = send_or_fallback(server, &r.handle, stanza.clone(), true);
        }
    }
}

/// A message for an account with no resource able to take it.
pub fn offline(server: &ServerState, stanza: Element) {
    match server.registry.offline_hook() {
        Some(store) => {
            if let Err(err) = store(server, &stanza) {
                bounce(server, &stanza, err);
            }
        }
        None => bounce(server, &stanza, StanzaError::service_unavailable()),
    }
}

/// RFC 6121 §8.5.3. `bare` is `full` without its resource.
fn to_full(
    server: &ServerState,
    kind: Kind,
    from: &Jid,
    full: FullJid,
    bare: BareJid,
    stanza: Element,
) {
    let ty = stanza.attr("type").unwrap_or("");
    // Subscription stanzas and probes concern the account, whatever resource they name
    // (RFC 6121 §3.1.3, §4.3.2): the IM module handles them at the bare JID.
    if kind == Kind::Presence
        && matches!(
            ty,
            "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "probe"
        )
    {
        return to_bare(server, kind, from, bare, stanza);
    }
    if let Some((handle, copies)) = server.sessions.delivery_handle(&full) {
        // The delivery hooks (carbons) act only for other resources that asked for
        // copies; without one, the message is not copied for them at all.
        let copy = (kind == Kind::Message && copies).then(|| stanza.clone());
        if send_or_fallback(server, &handle, stanza, false) {
            if let Some(m) = copy {
                server
                    .registry
                    .run_delivered(server, &bare, &m, &[handle.id]);
            }
        }
        return;
    }
    // §8.5.3.2: no such resource.
    match kind {
        Kind::Message => match ty {
            "error" | "headline" => {}
            "groupchat" => bounce(server, &stanza, StanzaError::service_unavailable()),
            _ => to_bare(server, kind, from, bare, stanza),
        },
        // Available and unavailable presence for a resource that is gone is dropped
        // (§8.5.3.2.2); the subscription types were handled above.
        Kind::Presence => {}
        Kind::Iq => match ty {
            "get" | "set" => bounce(server, &stanza, StanzaError::service_unavailable()),
            _ => {}
        },
    }
}

/// Hands a stanza to a session; if the session is gone or stalled, the stanza is routed
/// again by the RFC's rules for an unavailable resource (never lost).
pub fn send_or_fallback(
    server: &ServerState,
    handle: &SessionHandle,
    stanza: Element,
    presence: bool,
) -> bool {
    settle(server, handle, handle.send(stanza), presence)
}

/// What [`send_or_fallback`] does with the outcome of a send: a session that could not
/// take the stanza is unbound, and the stanza (unless it is presence) is routed by the
/// rules for an unavailable resource.
fn settle(
    server: &ServerState,
    handle: &SessionHandle,
    sent: Result<(), SendError>,
    presence: bool,
) -> bool {
    match sent {
        Ok(()) => true,
        Err(SendError::Gone(s)) | Err(SendError::Full(s)) => {
            tracing::debug!(to = %handle.jid, "session could not take a stanza");
            server.sessions.unbind(handle);
            if !presence {
                undeliverable(server, s);
            }
            false
        }
    }
}

/// A stanza that was on its way to a session that has gone: messages go to the account
/// (another resource or offline storage), IQ requests are bounced.
pub fn undeliverable(server: &ServerState, stanza: Element) {
    match Kind::of(&stanza) {
        Some(Kind::Message) => {
            let ty = stanza.attr("type").unwrap_or("normal");
            if ty == "error" || ty == "headline" || ty == "groupchat" {
                return;
            }
            // An archive query's result is an answer to that session, not a message for
            // the account.
            if stanza.has_child("result", crate::ns::MAM) {
                return;
            }
            let bare = stanza
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .map(|j| j.to_bare());
            match bare {
                Some(bare) => message_to_bare(server, &bare, stanza),
                None => offline(server, stanza),
            }
        }
        Some(Kind::Iq) if matches!(stanza.attr("type"), Some("get" | "set")) => {
            bounce(server, &stanza, StanzaError::service_unavailable())
        }
        _ => {}
    }
}

/// IQ get/set to the server or to an account: exactly one answer, always.
fn handle_iq(server: &ServerState, target: IqTarget, from: &Jid, to: &Jid, stanza: Element) {
    let kind = match stanza.attr("type") {
        Some("get") => IqKind::Get,
        Some("set") => IqKind::Set,
        Some("result") | Some("error") => {
            tracing::debug!(%from, "unsolicited IQ response ignored");
            return;
        }
        _ => return bounce(server, &stanza, StanzaError::bad_request()),
    };
    let mut children = stanza.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return bounce(
            server,
            &stanza,
            StanzaError::bad_request().with_text("an IQ request carries exactly one payload"),
        );
    };
    let req = IqRequest {
        server,
        from,
        to,
        kind,
        iq: &stanza,
    };
    let reply = match server.registry.dispatch_iq(target, &req, payload) {
        Some(Ok(payload)) => Some(iq_result(&stanza, payload)),
        Some(Err(err)) => error_reply(&stanza, &err),
        None => error_reply(&stanza, &StanzaError::service_unavailable()),
    };
    if let Some(reply) = reply {
        deliver_reply(server, reply);
    }
}

/// Replies from the server go straight to the requester's session (a reply's `from` may
/// be missing when the request had no `to`, so `route` cannot be used).
pub fn deliver_reply(server: &ServerState, reply: Element) {
    let Some(to) = reply.attr("to").and_then(|t| FullJid::new(t).ok()) else {
        if reply.attr("to").is_some() && reply.attr("from").is_some() {
            route(server, reply);
        }
        return;
    };
    if to.domain().as_str() != server.config.domain {
        if reply.attr("from").is_some() {
            route(server, reply);
        }
        return;
    }
    if let Some(res) = server.sessions.get(&to) {
        let _ = send_or_fallback(server, &res.handle, reply, false);
    }
}

/// Presence with no `to` from a session: records availability and priority, and sends it
/// to the account's own available resources (RFC 6121 §4.2.2, §4.4.2); the IM module
/// adds the contacts.
pub fn broadcast_presence(server: &ServerState, handle: &SessionHandle, stanza: Element) {
    let available = match stanza.attr("type") {
        None => true,
        Some("unavailable") => false,
        Some(_) => {
            return bounce(
                server,
                &stanza,
                StanzaError::bad_request().with_text("this presence type needs a 'to'"),
            )
        }
    };
    let was_available = server
        .sessions
        .set_presence(handle, available.then_some(&stanza));
    if !available && !was_available {
        // Unavailable from a resource that never was available tells nobody anything,
        // except those it sent directed presence to.
        let directed = take_directed(server, handle);
        announce(server, handle, &stanza, false, directed);
        return;
    }
    let bare = handle.jid.to_bare();
    for r in server.sessions.resources(&bare) {
        if r.available || r.handle.id == handle.id {
            let _ = send_or_fallback(server, &r.handle, stanza.clone(), true);
        }
    }
    let directed = if available {
        Vec::new()
    } else {
        take_directed(server, handle)
    };
    announce(server, handle, &stanza, was_available, directed);
    if available && !was_available {
        server.registry.run_available(server, handle, &stanza);
    }
}

fn take_directed(server: &ServerState, handle: &SessionHandle) -> Vec<Jid> {
    server
        .sessions
        .update(&handle.jid, |r| std::mem::take(&mut r.directed))
        .unwrap_or_default()
}

/// Hands a presence change to the IM module (contacts, directed-presence recipients).
/// Without it, only unavailable goes to directed-presence recipients.
pub fn announce(
    server: &ServerState,
    handle: &SessionHandle,
    presence: &Element,
    was_available: bool,
    directed: Vec<Jid>,
) {
    match server.registry.presence_broadcast_hook() {
        Some(hook) => hook(
            server,
            &PresenceEvent {
                handle,
                presence,
                was_available,
                directed,
            },
        ),
        None => {
            for to in directed {
                let mut p = presence.clone();
                p.set_attr("to", to.as_str());
                route(server, p);
            }
        }
    }
}
