//! The router: looks only at `to`, `from` and the stanza kind, and applies the RFC 6121
//! §8.5 delivery rules in one place.
//!
//! Every stanza reaching `route` already carries a `from` the server stamped or trusts.
//! Whatever cannot be delivered is bounced to its sender with the RFC's error (or, for
//! messages to offline users, handed to the offline-storage hook) — never dropped
//! silently, except where the RFC says to ignore (errors, headlines to nobody).

use crate::module::{IqKind, IqRequest, IqTarget};
use crate::sessions::{Resource, SendError, SessionHandle};
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
    let domain = to.domain().as_str();
    if domain == server.config.domain {
        match (to.node(), to.clone().try_into_full()) {
            (None, _) => Destination::Server,
            (Some(_), Ok(full)) => Destination::LocalFull(full),
            (Some(_), Err(bare)) => Destination::LocalBare(bare),
        }
    } else if server.registry.has_domain(domain) {
        Destination::Service(domain.to_string())
    } else {
        Destination::Remote(domain.to_string())
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
        None => {
            // No `to` means the sender's own account (RFC 6120 §10.3).
            Jid::from(from.to_bare())
        }
        Some(t) => match Jid::new(t) {
            Ok(to) => to,
            Err(_) => return bounce(server, &stanza, StanzaError::jid_malformed()),
        },
    };
    match classify(server, &to) {
        Destination::Server => to_server(server, kind, &from, &to, stanza),
        Destination::LocalBare(bare) => to_bare(server, kind, &from, bare, stanza),
        Destination::LocalFull(full) => to_full(server, kind, &from, full, stanza),
        Destination::Service(domain) => server.registry.deliver_to_domain(server, &domain, stanza),
        Destination::Remote(domain) => crate::s2s::send(server, &domain, stanza),
    }
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
/// available resource sharing the highest non-negative priority (carbons then copy it to
/// the rest); a headline goes to all non-negative resources.
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
            for r in &resources {
                let _ = send_or_fallback(server, &r.handle, stanza.clone(), false);
            }
        }
        _ => {
            let Some(top) = resources.iter().map(|r| r.priority).max() else {
                return offline(server, stanza);
            };
            for r in resources.iter().filter(|r| r.priority == top) {
                let _ = send_or_fallback(server, &r.handle, stanza.clone(), false);
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

/// RFC 6121 §8.5.3.
fn to_full(server: &ServerState, kind: Kind, from: &Jid, full: FullJid, stanza: Element) {
    if let Some(res) = server.sessions.get(&full) {
        let _ = send_or_fallback(server, &res.handle, stanza, false);
        return;
    }
    // §8.5.3.2: no such resource.
    let ty = stanza.attr("type").unwrap_or("");
    match kind {
        Kind::Message => match ty {
            "error" | "headline" => {}
            "groupchat" => bounce(server, &stanza, StanzaError::service_unavailable()),
            _ => to_bare(server, kind, from, full.to_bare(), stanza),
        },
        Kind::Presence => match ty {
            "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
                to_bare(server, kind, from, full.to_bare(), stanza)
            }
            _ => {}
        },
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
    match handle.send(stanza) {
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
    server
        .sessions
        .set_presence(handle, available.then_some(&stanza));
    let bare = handle.jid.to_bare();
    for r in server.sessions.resources(&bare) {
        if r.available || r.handle.id == handle.id {
            let _ = send_or_fallback(server, &r.handle, stanza.clone(), true);
        }
    }
    if let Some(hook) = server.registry.presence_broadcast_hook() {
        hook(server, handle, &stanza);
    }
}
