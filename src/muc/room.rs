//! One room: its state and the handling of every stanza addressed to it. A room is owned
//! by exactly one task (see `mod.rs`), so nothing here locks or awaits: each stanza is
//! handled to completion before the next, and every occupant sees the same order.

use super::config::{AllowPm, RoomConfig, Whois};
use super::history::{self, History};
use super::perms::{self, AffPriv, Affiliation, Role, RolePriv};
use super::Service;
use crate::ns;
use crate::router::{bounce, route, route_shared};
use crate::sessions::SharedStanza;
use crate::stanza::{error_reply, iq_result, StanzaError};
use crate::store::{now_secs, AffiliationRecord, RoomRecord};
use crate::xml::Element;
use crate::ServerState;
use base64::Engine;
use hmac::{Hmac, Mac};
use jid::{BareJid, FullJid, Jid};
use std::collections::BTreeMap;
use std::sync::Weak;

/// Longest nickname accepted, in bytes (a JID resourcepart's limit).
const MAX_NICK: usize = 1023;

/// What a room's queue carries.
pub enum RoomMsg {
    Stanza(Element),
    /// A session that may have been an occupant has ended.
    SessionEnded(FullJid),
    /// The account was deleted: its affiliation goes.
    AccountRemoved(BareJid),
}

struct Occupant {
    nick: String,
    bare: BareJid,
    /// Sessions of the same user joined under this nick; the first one speaks for it.
    sessions: Vec<FullJid>,
    role: Role,
    /// The occupant's last presence, whose show/status/caps are passed on.
    presence: Element,
    occupant_id: String,
    /// When this occupant last asked for voice (seconds since the epoch).
    voice_requested: Option<u64>,
}

pub struct Room {
    pub jid: BareJid,
    service: Weak<Service>,
    pub config: RoomConfig,
    affiliations: BTreeMap<BareJid, AffiliationRecord>,
    /// In join order, which is the order existing occupants are presented to newcomers.
    occupants: Vec<Occupant>,
    subject: Option<(String, String)>,
    history: History,
    /// Created with the MUC protocol and not configured yet (§10.1.1): owners only.
    locked: bool,
    pub destroyed: bool,
    /// Created by a join that has not been answered yet (status 201 is due).
    pending_201: bool,
    occupant_id_key: Vec<u8>,
    created: u64,
}

/// What happened to a presence's sender, for the status codes of §7.2.
#[derive(Default)]
struct Codes {
    /// Only for the occupant concerned (110, 201, 210).
    own: Vec<u16>,
    /// For everyone (303, 307, 301, 321, 322, 333, 100).
    all: Vec<u16>,
}

fn muc_user_x() -> Element {
    Element::new("x", ns::MUC_USER)
}

fn status(code: u16) -> Element {
    Element::new("status", ns::MUC_USER).with_attr("code", code.to_string())
}

/// Seconds an occupant waits between two voice requests, so moderators are not flooded.
const VOICE_REQUEST_INTERVAL_SECS: u64 = 30;

impl Room {
    fn new(jid: BareJid, service: Weak<Service>, creator: Option<&BareJid>) -> Room {
        let mut affiliations = BTreeMap::new();
        if let Some(c) = creator {
            affiliations.insert(
                c.clone(),
                AffiliationRecord {
                    affiliation: Affiliation::Owner,
                    nick: None,
                    reason: None,
                },
            );
        }
        let key: [u8; 32] = rand::random();
        Room {
            jid,
            service,
            config: RoomConfig::default(),
            affiliations,
            occupants: Vec::new(),
            subject: None,
            history: History::default(),
            locked: false,
            destroyed: false,
            pending_201: false,
            occupant_id_key: key.to_vec(),
            created: now_secs(),
        }
    }

    /// A room being created by `creator`'s join. With the MUC protocol (`<x/>` in the
    /// join) it stays locked until the owner configures it (§10.1); an old groupchat
    /// 1.0 client gets an instant room.
    pub fn create(jid: BareJid, service: Weak<Service>, creator: &BareJid, locked: bool) -> Room {
        let mut room = Room::new(jid, service, Some(creator));
        room.locked = locked;
        room.pending_201 = true;
        room
    }

    pub fn from_record(jid: BareJid, service: Weak<Service>, r: RoomRecord) -> Room {
        let mut room = Room::new(jid, service, None);
        room.config = r.config;
        room.affiliations = r
            .affiliations
            .into_iter()
            .filter_map(|(k, v)| BareJid::new(&k).ok().map(|j| (j, v)))
            .collect();
        room.subject = r.subject;
        if !r.occupant_id_key.is_empty() {
            room.occupant_id_key = r.occupant_id_key;
        }
        room.created = r.created;
        room
    }

    fn record(&self) -> RoomRecord {
        RoomRecord {
            config: self.config.clone(),
            affiliations: self
                .affiliations
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            subject: self.subject.clone(),
            occupant_id_key: self.occupant_id_key.clone(),
            created: self.created,
        }
    }

    /// Writes a persistent room to the store (and removes a room that stopped being one).
    fn save(&self, server: &ServerState) {
        let res = if self.config.persistent && !self.destroyed {
            server.store.save_room(self.jid.as_str(), &self.record())
        } else {
            server.store.delete_room(self.jid.as_str())
        };
        if let Err(e) = res {
            tracing::error!(room = %self.jid, "saving the room failed: {e}");
        }
    }

    /// Nobody inside and nothing to keep: the task may end.
    pub fn finished(&self) -> bool {
        self.destroyed || (self.occupants.is_empty() && !self.config.persistent)
    }

    fn publish(&self) {
        if let Some(s) = self.service.upgrade() {
            s.directory_update(self);
        }
    }

    fn affiliation(&self, bare: &BareJid) -> Affiliation {
        self.affiliations
            .get(bare)
            .map(|r| r.affiliation)
            .unwrap_or(Affiliation::None)
    }

    fn by_session(&self, full: &FullJid) -> Option<usize> {
        self.occupants
            .iter()
            .position(|o| o.sessions.contains(full))
    }

    fn by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    fn occupant_id(&self, bare: &BareJid) -> String {
        // A keyed hash: stable for a user in this room, unlinkable across rooms, and
        // revealing nothing about the real JID (XEP-0421 §4).
        let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(&self.occupant_id_key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(bare.as_str().as_bytes());
        let out = mac.finalize().into_bytes();
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&out[..18])
    }

    fn track(&self, full: &FullJid, joined: bool) {
        if let Some(s) = self.service.upgrade() {
            s.track(full, &self.jid, joined);
        }
    }

    // ----- entry point -----

    pub fn handle(&mut self, server: &ServerState, msg: RoomMsg) {
        match msg {
            RoomMsg::SessionEnded(full) => {
                if let Some(i) = self.by_session(&full) {
                    let presence = Element::new("presence", ns::CLIENT)
                        .with_attr("type", "unavailable")
                        .with_attr("from", full.to_string());
                    self.leave(server, i, &full, &presence);
                }
            }
            RoomMsg::AccountRemoved(bare) => {
                if self.affiliations.contains_key(&bare) {
                    self.set_affiliation(
                        server,
                        bare,
                        Affiliation::None,
                        None,
                        Some("account deleted".into()),
                        None,
                    );
                    self.save(server);
                }
            }
            RoomMsg::Stanza(stanza) => {
                let from = match stanza.attr("from").map(Jid::new) {
                    Some(Ok(j)) => j,
                    _ => return,
                };
                let nick = stanza
                    .attr("to")
                    .and_then(|t| Jid::new(t).ok())
                    .and_then(|j| j.resource().map(|r| r.to_string()));
                let Ok(full) = from.clone().try_into_full() else {
                    // Occupants are sessions; a bare JID can only be a server or
                    // component, which has nothing to do inside a room.
                    return bounce(
                        server,
                        &stanza,
                        StanzaError::bad_request().with_text("a room needs a full JID"),
                    );
                };
                match stanza.name() {
                    "presence" => self.presence(server, stanza, full, nick),
                    "message" => self.message(server, stanza, full, nick),
                    "iq" => self.iq(server, stanza, full, nick),
                    _ => {}
                }
            }
        }
        self.publish();
    }

    // ----- presence -----

    fn presence(&mut self, server: &ServerState, p: Element, from: FullJid, nick: Option<String>) {
        let ty = p.attr("type").unwrap_or("available");
        let me = self.by_session(&from);
        match ty {
            "error" => {
                // The occupant's client bounced something we sent: it is not really
                // there any more (§7.2 "kick on error", status 333).
                if let Some(i) = me {
                    self.remove_session(server, i, &from, &[333], None);
                }
            }
            "unavailable" => {
                if let Some(i) = me {
                    self.leave(server, i, &from, &p);
                }
            }
            "available" => {
                let Some(nick) = nick else {
                    return bounce(
                        server,
                        &p,
                        StanzaError::jid_malformed().with_text("a nickname is required"),
                    );
                };
                match me {
                    Some(i) if self.occupants[i].nick == nick => {
                        self.occupants[i].presence = p;
                        self.broadcast_presence(server, i, &Codes::default());
                    }
                    Some(i) => self.change_nick(server, i, &from, nick, p),
                    None => self.join(server, from, nick, p),
                }
            }
            // Subscriptions and probes mean nothing to a room.
            _ => {}
        }
    }

    fn valid_nick(nick: &str) -> bool {
        !nick.trim().is_empty() && nick.len() <= MAX_NICK
    }

    /// The nick is free for `bare`: not used by someone else's occupant, and not reserved
    /// by another user's affiliation.
    fn nick_free_for(&self, nick: &str, bare: &BareJid) -> bool {
        let used = self
            .occupants
            .iter()
            .any(|o| o.nick == nick && &o.bare != bare);
        let reserved = self
            .affiliations
            .iter()
            .any(|(j, r)| r.nick.as_deref() == Some(nick) && j != bare);
        !used && !reserved
    }

    fn join(&mut self, server: &ServerState, from: FullJid, nick: String, p: Element) {
        let bare = from.to_bare();
        let aff = self.affiliation(&bare);
        let muc_x = p.child("x", ns::MUC);
        let refuse = |err: StanzaError| {
            tracing::debug!(room = %self.jid, %from, "join refused: {err}");
            bounce(server, &p, err);
        };
        if !Self::valid_nick(&nick) {
            return refuse(StanzaError::jid_malformed().with_text("invalid nickname"));
        }
        if self.locked && aff != Affiliation::Owner {
            return refuse(
                StanzaError::item_not_found().with_text("the room is still being configured"),
            );
        }
        if aff == Affiliation::Outcast {
            return refuse(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        let Some(role) = perms::default_role(aff, self.config.moderated, self.config.members_only)
        else {
            return refuse(
                StanzaError::registration_required().with_text("this room is members-only"),
            );
        };
        if !self.nick_free_for(&nick, &bare) {
            return refuse(StanzaError::conflict().with_text("that nickname is taken"));
        }
        let privileged = aff >= Affiliation::Admin;
        if !self.config.password.is_empty() && !privileged {
            let given = muc_x.and_then(|x| x.child_text("password", ns::MUC));
            if given.as_deref() != Some(self.config.password.as_str()) {
                return refuse(StanzaError::not_authorized().with_text("wrong password"));
            }
        }
        let limit = self
            .config
            .max_occupants
            .unwrap_or(super::config::MAX_OCCUPANTS);
        if !privileged && self.by_nick(&nick).is_none() && self.occupants.len() >= limit {
            return refuse(StanzaError::service_unavailable().with_text("the room is full"));
        }
        let history_req = history::Request::parse(muc_x.and_then(|x| x.child("history", ns::MUC)));
        let created = std::mem::take(&mut self.pending_201);
        let mut own = vec![110];
        if created {
            own.push(201);
        }
        let mut all = Vec::new();
        if self.config.whois == Whois::Anyone {
            all.push(100);
        }
        let index = match self.by_nick(&nick) {
            // Same user, another client: it joins the existing occupant (the nick check
            // above made sure the occupant is theirs).
            Some(i) => {
                self.occupants[i].sessions.push(from.clone());
                i
            }
            None => {
                let occupant_id = self.occupant_id(&bare);
                self.occupants.push(Occupant {
                    nick: nick.clone(),
                    bare,
                    sessions: vec![from.clone()],
                    role,
                    presence: p.clone(),
                    occupant_id,
                    voice_requested: None,
                });
                self.occupants.len() - 1
            }
        };
        self.track(&from, true);
        tracing::debug!(room = %self.jid, %nick, "occupant joined");
        // §7.2.3: first everyone already inside, then the newcomer's own presence...
        for (i, o) in self.occupants.iter().enumerate() {
            if i != index {
                let el = self.presence_of(o, &from, false, &[], None);
                route(server, el);
            }
        }
        let joined_existing = self.occupants[index].sessions.len() > 1;
        let codes = Codes { own, all };
        if joined_existing {
            // Others already know this occupant; only the new session needs its presence.
            let el = self.presence_of(
                &self.occupants[index],
                &from,
                false,
                &self.self_codes(&codes),
                None,
            );
            route(server, el);
        } else {
            self.broadcast_presence(server, index, &codes);
        }
        // ...then history (§7.2.14), then the subject (§7.2.15), always last.
        let now = now_secs();
        let mut hist: Vec<Element> = Vec::new();
        for e in self.history.select(&history_req, now) {
            let mut m = e.stanza.clone();
            m.set_attr("to", from.to_string());
            m.push(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", self.jid.to_string())
                    .with_attr("stamp", crate::datetime::format(e.stamp)),
            );
            hist.push(m);
        }
        for m in hist {
            route(server, m);
        }
        route(server, self.subject_message(&from));
    }

    fn subject_message(&self, to: &FullJid) -> Element {
        let (by, text) = match &self.subject {
            Some((by, text)) => (Some(by.as_str()), text.as_str()),
            None => (None, ""),
        };
        let from = match by {
            Some(n) if !n.is_empty() => self.occupant_jid(n),
            _ => self.jid.to_string(),
        };
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", from)
            .with_attr("to", to.to_string())
            .with_attr("id", format!("subject-{}", rand::random::<u32>()))
            .with_child(Element::new("subject", ns::CLIENT).with_text(text))
    }

    fn self_codes(&self, codes: &Codes) -> Vec<u16> {
        let mut v = codes.all.clone();
        v.extend(&codes.own);
        v
    }

    fn can_see_jid(&self, recipient: &FullJid) -> bool {
        self.config.whois == Whois::Anyone
            || self
                .by_session(recipient)
                .is_some_and(|i| self.occupants[i].role == Role::Moderator)
    }

    /// The presence of occupant `o` as `to` sees it.
    fn presence_of(
        &self,
        o: &Occupant,
        to: &FullJid,
        unavailable: bool,
        codes: &[u16],
        extra_item: Option<(&str, Element)>,
    ) -> Element {
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", self.occupant_jid(&o.nick))
            .with_attr("to", to.to_string());
        if unavailable {
            p.set_attr("type", "unavailable");
        }
        // Pass on what the occupant said about itself (show, status, caps...), but
        // never its MUC elements or an occupant id it made up.
        for c in o.presence.children() {
            let ours = c.ns() == ns::MUC || c.ns() == ns::MUC_USER || c.ns() == ns::OCCUPANT_ID;
            let keep = !ours && (!unavailable || c.is("status", ns::CLIENT));
            if keep {
                p.push(c.clone());
            }
        }
        let aff = self.affiliation(&o.bare);
        let role = if unavailable { Role::None } else { o.role };
        let mut item = Element::new("item", ns::MUC_USER)
            .with_attr("affiliation", aff.as_str())
            .with_attr("role", role.as_str());
        if self.can_see_jid(to) {
            if let Some(first) = o.sessions.first() {
                item.set_attr("jid", first.to_string());
            }
        }
        let mut extra_children = Vec::new();
        if let Some((attr_nick, child)) = extra_item {
            if !attr_nick.is_empty() {
                item.set_attr("nick", attr_nick);
            }
            if child.ns() == ns::MUC_USER && child.name() != "x" {
                if child.name() == "destroy" {
                    extra_children.push(child);
                } else {
                    item.push(child);
                }
            } else {
                for c in child.children() {
                    item.push(c.clone());
                }
            }
        }
        let mut x = muc_user_x().with_child(item);
        for c in extra_children {
            x.push(c);
        }
        for c in codes {
            x.push(status(*c));
        }
        p.push(x);
        p.push(Element::new("occupant-id", ns::OCCUPANT_ID).with_attr("id", o.occupant_id.clone()));
        p
    }

    /// Sends occupant `i`'s current presence to every occupant's sessions.
    fn broadcast_presence(&self, server: &ServerState, i: usize, codes: &Codes) {
        let o = &self.occupants[i];
        let own = self.self_codes(codes);
        for r in &self.occupants {
            for s in &r.sessions {
                let c = if o.sessions.contains(s) {
                    &own
                } else {
                    &codes.all
                };
                route(server, self.presence_of(o, s, false, c, None));
            }
        }
    }

    /// Sends occupant `i`'s departure to everyone (itself included), before removing it.
    fn broadcast_unavailable(
        &self,
        server: &ServerState,
        i: usize,
        codes: &Codes,
        extra: Option<(&str, Element)>,
    ) {
        let o = &self.occupants[i];
        let own = self.self_codes(codes);
        for r in &self.occupants {
            for s in &r.sessions {
                let c = if o.sessions.contains(s) {
                    &own
                } else {
                    &codes.all
                };
                route(server, self.presence_of(o, s, true, c, extra.clone()));
            }
        }
    }

    fn leave(&mut self, server: &ServerState, i: usize, from: &FullJid, p: &Element) {
        if self.occupants[i].sessions.len() > 1 {
            // One of several clients leaves: only it hears about it.
            self.occupants[i].sessions.retain(|s| s != from);
            self.track(from, false);
            let mut gone = self.presence_of(&self.occupants[i], from, true, &[110], None);
            gone.set_attr("to", from.to_string());
            route(server, gone);
            return;
        }
        // Keep the status text of the goodbye.
        self.occupants[i].presence = p.clone();
        self.broadcast_unavailable(
            server,
            i,
            &Codes {
                own: vec![110],
                all: vec![],
            },
            None,
        );
        let o = self.occupants.remove(i);
        for s in &o.sessions {
            self.track(s, false);
        }
        tracing::debug!(room = %self.jid, nick = %o.nick, "occupant left");
        self.after_departure(server);
    }

    /// Removes a single session after an error bounce (status 333).
    fn remove_session(
        &mut self,
        server: &ServerState,
        i: usize,
        from: &FullJid,
        codes: &[u16],
        _reason: Option<&str>,
    ) {
        if self.occupants[i].sessions.len() > 1 {
            self.occupants[i].sessions.retain(|s| s != from);
            self.track(from, false);
            return;
        }
        self.broadcast_unavailable(
            server,
            i,
            &Codes {
                own: vec![110],
                all: codes.to_vec(),
            },
            None,
        );
        let o = self.occupants.remove(i);
        for s in &o.sessions {
            self.track(s, false);
        }
        self.after_departure(server);
    }

    /// Removes occupant `i` as a consequence of someone else's action (kick, ban,
    /// affiliation change): everyone sees the codes, the actor and the reason.
    fn expel(
        &mut self,
        server: &ServerState,
        i: usize,
        codes: &[u16],
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        let mut details = Element::new("x", ns::MUC_USER);
        if let Some(a) = actor {
            details.push(Element::new("actor", ns::MUC_USER).with_attr("nick", a));
        }
        if let Some(r) = reason {
            details.push(Element::new("reason", ns::MUC_USER).with_text(r));
        }
        self.occupants[i].presence = Element::new("presence", ns::CLIENT);
        self.broadcast_unavailable(
            server,
            i,
            &Codes {
                own: vec![110],
                all: codes.to_vec(),
            },
            Some(("", details)),
        );
        let o = self.occupants.remove(i);
        for s in &o.sessions {
            self.track(s, false);
        }
        tracing::info!(room = %self.jid, nick = %o.nick, ?codes, "occupant removed");
        self.after_departure(server);
    }

    fn after_departure(&mut self, server: &ServerState) {
        if self.occupants.is_empty() && self.locked {
            // The creator left without configuring: the room never came to exist.
            self.destroyed = true;
            self.save(server);
        }
    }

    fn change_nick(
        &mut self,
        server: &ServerState,
        i: usize,
        from: &FullJid,
        nick: String,
        p: Element,
    ) {
        let bare = self.occupants[i].bare.clone();
        let err = if !Self::valid_nick(&nick) {
            Some(StanzaError::jid_malformed().with_text("invalid nickname"))
        } else if !self.nick_free_for(&nick, &bare) || self.by_nick(&nick).is_some() {
            Some(StanzaError::conflict().with_text("that nickname is taken"))
        } else if !perms::allowed(
            perms::role_cell(self.occupants[i].role, RolePriv::ChangeNick),
            true,
        ) {
            Some(StanzaError::not_allowed())
        } else {
            None
        };
        if let Some(err) = err {
            return bounce(server, &p, err);
        }
        // §7.6: unavailable with 303 and the new nick, then available under the new one.
        self.broadcast_unavailable(
            server,
            i,
            &Codes {
                own: vec![110],
                all: vec![303],
            },
            Some((nick.as_str(), Element::new("x", ns::MUC_USER))),
        );
        tracing::debug!(room = %self.jid, old = %self.occupants[i].nick, new = %nick, %from, "nick change");
        self.occupants[i].nick = nick;
        self.occupants[i].presence = p;
        self.broadcast_presence(
            server,
            i,
            &Codes {
                own: vec![110],
                all: vec![],
            },
        );
    }

    // ----- messages -----

    fn message(&mut self, server: &ServerState, m: Element, from: FullJid, nick: Option<String>) {
        let ty = m.attr("type").unwrap_or("normal");
        let me = self.by_session(&from);
        if ty == "error" {
            // A bounce of something we sent to this session: it is gone (333).
            if let Some(i) = me {
                if nick.is_none() {
                    self.remove_session(server, i, &from, &[333], None);
                }
            }
            return;
        }
        match nick {
            None if ty == "groupchat" => self.groupchat(server, m, me),
            None => self.message_to_room(server, m, &from, me),
            Some(n) => self.private_message(server, m, me, &n),
        }
    }

    fn groupchat(&mut self, server: &ServerState, m: Element, me: Option<usize>) {
        let Some(i) = me else {
            return bounce(
                server,
                &m,
                StanzaError::not_acceptable().with_text("only occupants may speak in the room"),
            );
        };
        let role = self.occupants[i].role;
        let is_subject = m.has_child("subject", ns::CLIENT) && !m.has_child("body", ns::CLIENT);
        if is_subject {
            let may = perms::allowed(
                perms::role_cell(role, RolePriv::ModifySubject),
                self.config.change_subject,
            );
            if !may {
                return bounce(
                    server,
                    &m,
                    StanzaError::forbidden().with_text("you may not change the subject"),
                );
            }
            let text = m.child_text("subject", ns::CLIENT).unwrap_or_default();
            self.subject = Some((self.occupants[i].nick.clone(), text));
            if self.config.persistent {
                self.save(server);
            }
        } else if !perms::allowed(perms::role_cell(role, RolePriv::SendToAll), true) {
            return bounce(
                server,
                &m,
                StanzaError::forbidden().with_text("you have no voice in this room"),
            );
        }
        let mut out = m;
        out.remove_attr("to");
        out.set_attr("from", self.occupant_jid(&self.occupants[i].nick));
        // Occupant ids and stanza ids are the room's to give (XEP-0421, XEP-0359): any an
        // occupant wrote is a forgery. No recipient's server strips them per recipient
        // either, since the message is shared (see `route_shared`).
        out.remove_children(|c| c.ns() == ns::OCCUPANT_ID || c.is("stanza-id", ns::SID));
        out.push(
            Element::new("occupant-id", ns::OCCUPANT_ID)
                .with_attr("id", self.occupants[i].occupant_id.clone()),
        );
        if !is_subject {
            // The room's archive (XEP-0313 §5.1.2) stamps its id on what everyone gets.
            crate::services::mam::room_archive(server, &self.jid, &mut out);
        }
        if !is_subject && out.has_child("body", ns::CLIENT) && self.config.history_length > 0 {
            self.history
                .push(out.clone(), now_secs(), self.config.history_length);
        }
        // One pass over the occupants in the room's order: every stanza the room handles
        // is fully sent before the next, so everyone sees the same sequence. The stanza is
        // built once and shared by every local occupant's queue (see `SharedStanza`), the
        // sender's room JID is parsed once, and each recipient's is already a FullJid.
        let Some(from) = out.attr("from").and_then(|f| Jid::new(f).ok()) else {
            tracing::warn!(room = %self.jid, "occupant JID does not parse; message dropped");
            return;
        };
        let shared = SharedStanza::new(out);
        for o in &self.occupants {
            for s in &o.sessions {
                route_shared(server, &from, s, &shared);
            }
        }
    }

    fn private_message(&mut self, server: &ServerState, m: Element, me: Option<usize>, nick: &str) {
        if m.attr("type") == Some("groupchat") {
            return bounce(
                server,
                &m,
                StanzaError::bad_request().with_text("private messages are not groupchat"),
            );
        }
        let Some(i) = me else {
            return bounce(
                server,
                &m,
                StanzaError::not_acceptable().with_text("only occupants may send private messages"),
            );
        };
        let role = self.occupants[i].role;
        let allowed = perms::allowed(perms::role_cell(role, RolePriv::SendPrivateMessages), true)
            && match self.config.allow_pm {
                AllowPm::Anyone => true,
                AllowPm::Participants => role >= Role::Participant,
                AllowPm::Moderators => role == Role::Moderator,
                AllowPm::None => false,
            };
        if !allowed {
            return bounce(
                server,
                &m,
                StanzaError::forbidden().with_text("private messages are not allowed here"),
            );
        }
        let Some(t) = self.by_nick(nick) else {
            return bounce(server, &m, StanzaError::item_not_found());
        };
        let mut out = m;
        out.set_attr("from", self.occupant_jid(&self.occupants[i].nick));
        out.remove_children(|c| c.ns() == ns::OCCUPANT_ID);
        if !out.has_child("x", ns::MUC_USER) {
            out.push(muc_user_x());
        }
        for s in &self.occupants[t].sessions {
            let mut copy = out.clone();
            copy.set_attr("to", s.to_string());
            route(server, copy);
        }
    }

    /// Non-groupchat messages to the room itself: mediated invitations and declines.
    fn message_to_room(
        &mut self,
        server: &ServerState,
        m: Element,
        from: &FullJid,
        me: Option<usize>,
    ) {
        if let Some(form) = m.child("x", ns::DATA_FORMS) {
            let request = crate::forms::Form::try_from(form)
                .ok()
                .filter(|f| f.value("FORM_TYPE") == Some(ns::MUC_REQUEST));
            if let Some(form) = request {
                return self.voice_form(server, &m, &form, from, me);
            }
        }
        let Some(x) = m.child("x", ns::MUC_USER) else {
            return bounce(
                server,
                &m,
                StanzaError::bad_request().with_text("messages to a room are groupchat"),
            );
        };
        if let Some(decline) = x.child("decline", ns::MUC_USER) {
            let Some(to) = decline.attr("to").and_then(|t| Jid::new(t).ok()) else {
                return bounce(server, &m, StanzaError::bad_request());
            };
            let mut d =
                Element::new("decline", ns::MUC_USER).with_attr("from", from.to_bare().to_string());
            if let Some(r) = decline.child("reason", ns::MUC_USER) {
                d.push(r.clone());
            }
            let out = Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("to", to.to_string())
                .with_child(muc_user_x().with_child(d));
            return route(server, out);
        }
        let invites: Vec<&Element> = x
            .children()
            .filter(|c| c.is("invite", ns::MUC_USER))
            .collect();
        if invites.is_empty() {
            return bounce(server, &m, StanzaError::bad_request());
        }
        let Some(i) = me else {
            return bounce(
                server,
                &m,
                StanzaError::not_acceptable().with_text("only occupants may invite"),
            );
        };
        let role = self.occupants[i].role;
        let aff = self.affiliation(&self.occupants[i].bare);
        let may = perms::allowed(
            perms::role_cell(role, RolePriv::InviteUsers),
            self.config.allow_invites,
        ) || aff >= Affiliation::Admin;
        if !may {
            return bounce(
                server,
                &m,
                StanzaError::forbidden().with_text("you may not invite people here"),
            );
        }
        let mut changed = false;
        for inv in invites {
            let Some(to) = inv.attr("to").and_then(|t| Jid::new(t).ok()) else {
                return bounce(server, &m, StanzaError::jid_malformed());
            };
            // §7.8.2: in a members-only room, an admin's invitation makes the invitee a
            // member, or they could not come in.
            if self.config.members_only && aff >= Affiliation::Admin {
                let bare = to.to_bare();
                if self.affiliation(&bare) == Affiliation::None {
                    self.affiliations.insert(
                        bare,
                        AffiliationRecord {
                            affiliation: Affiliation::Member,
                            nick: None,
                            reason: None,
                        },
                    );
                    changed = true;
                }
            }
            let mut invite =
                Element::new("invite", ns::MUC_USER).with_attr("from", from.to_string());
            if let Some(r) = inv.child("reason", ns::MUC_USER) {
                invite.push(r.clone());
            }
            let mut xo = muc_user_x().with_child(invite);
            if !self.config.password.is_empty() {
                xo.push(
                    Element::new("password", ns::MUC_USER).with_text(self.config.password.clone()),
                );
            }
            let out = Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("to", to.to_string())
                .with_child(xo);
            route(server, out);
        }
        if changed && self.config.persistent {
            self.save(server);
        }
    }

    // ----- IQs -----

    fn iq(&mut self, server: &ServerState, iq: Element, from: FullJid, nick: Option<String>) {
        let ty = iq.attr("type").unwrap_or("");
        if let Some(nick) = nick {
            return self.iq_to_occupant(server, iq, &from, &nick);
        }
        if ty != "get" && ty != "set" {
            return;
        }
        let payload = {
            let mut ch = iq.children();
            match (ch.next(), ch.next()) {
                (Some(p), None) => p.clone(),
                _ => return bounce(server, &iq, StanzaError::bad_request()),
            }
        };
        let result = match (ty, payload.name(), payload.ns()) {
            ("get", "query", ns::DISCO_INFO) => self.disco_info(&from, &payload),
            ("get", "query", ns::DISCO_ITEMS) => Ok(Some(self.disco_items(&from))),
            ("get", "ping", ns::PING) => Ok(None),
            ("get", "query", ns::MUC_OWNER) => self.owner_get(&from),
            ("set", "query", ns::MUC_OWNER) => self.owner_set(server, &from, &payload),
            ("get", "query", ns::MUC_ADMIN) => self.admin_get(&from, &payload),
            ("set", "query", ns::MUC_ADMIN) => self.admin_set(server, &from, &payload),
            ("get" | "set", "query", ns::MAM) => self.mam_query(server, &from, &payload, ty),
            ("get", "query", ns::REGISTER) => self.registration_form(&from),
            ("set", "query", ns::REGISTER) => self.register(server, &from, &payload),
            _ => Err(StanzaError::service_unavailable()),
        };
        let reply = match result {
            Ok(p) => Some(iq_result(&iq, p)),
            Err(e) => {
                tracing::debug!(room = %self.jid, %from, "IQ refused: {e}");
                error_reply(&iq, &e)
            }
        };
        if let Some(r) = reply {
            route(server, r);
        }
    }

    /// XEP-0313 queries to the room's archive: anyone may read the archive of a room
    /// anyone may join; a members-only room's archive is for its members and occupants.
    fn mam_query(
        &self,
        server: &ServerState,
        from: &FullJid,
        payload: &Element,
        ty: &str,
    ) -> Result<Option<Element>, StanzaError> {
        use crate::services::mam;
        if !server.config.mam.enabled {
            return Err(StanzaError::service_unavailable());
        }
        let member = self.affiliation(&from.to_bare()) >= Affiliation::Member;
        if self.config.members_only && !member && self.by_session(from).is_none() {
            return Err(StanzaError::forbidden().with_text("the archive is for members"));
        }
        let q = mam::Query::try_from(payload)?;
        if ty == "get" {
            return Ok(Some(mam::form()));
        }
        mam::run_query(server, self.jid.as_str(), self.jid.as_str(), from, &q)
    }

    /// IQs to `room/nick`: self-pings are answered here (XEP-0410); the rest goes to the
    /// occupant's first session, with the sender hidden behind its own occupant JID.
    fn iq_to_occupant(&mut self, server: &ServerState, iq: Element, from: &FullJid, nick: &str) {
        let ty = iq.attr("type").unwrap_or("");
        let request = ty == "get" || ty == "set";
        let Some(me) = self.by_session(from) else {
            if request {
                bounce(
                    server,
                    &iq,
                    StanzaError::not_acceptable().with_text("you are not in this room"),
                );
            }
            return;
        };
        if request && iq.has_child("ping", ns::PING) && self.occupants[me].nick == nick {
            return route(server, iq_result(&iq, None));
        }
        let Some(t) = self.by_nick(nick) else {
            if request {
                bounce(server, &iq, StanzaError::item_not_found());
            }
            return;
        };
        let Some(target) = self.occupants[t].sessions.first() else {
            return;
        };
        let mut out = iq;
        out.set_attr("from", self.occupant_jid(&self.occupants[me].nick));
        out.set_attr("to", target.to_string());
        route(server, out);
    }

    fn disco_info(&self, from: &FullJid, q: &Element) -> Result<Option<Element>, StanzaError> {
        match q.attr("node") {
            None => {}
            // §7.12: the nick this user has reserved, as the identity's name.
            Some(node @ "x-roomuser-item") => {
                let mut query = Element::new("query", ns::DISCO_INFO).with_attr("node", node);
                if let Some(nick) = self.reserved_nick(&from.to_bare()) {
                    query.push(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", nick),
                    );
                }
                return Ok(Some(query));
            }
            Some(_) => return Err(StanzaError::item_not_found()),
        }
        let c = &self.config;
        let name = if c.name.is_empty() {
            self.jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            c.name.clone()
        };
        let mut query = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let pick = |b: bool, y: &'static str, n: &'static str| if b { y } else { n };
        let features = [
            ns::MUC,
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::MUC_SELF_PING,
            ns::OCCUPANT_ID,
            ns::REGISTER,
            ns::MUC_REQUEST,
            pick(c.public, "muc_public", "muc_hidden"),
            pick(c.persistent, "muc_persistent", "muc_temporary"),
            pick(c.members_only, "muc_membersonly", "muc_open"),
            pick(c.moderated, "muc_moderated", "muc_unmoderated"),
            pick(
                c.whois == Whois::Anyone,
                "muc_nonanonymous",
                "muc_semianonymous",
            ),
            pick(
                !c.password.is_empty(),
                "muc_passwordprotected",
                "muc_unsecured",
            ),
        ];
        for f in features {
            query.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        let field = |var: &str, value: String| {
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
        };
        let form = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "result")
            .with_child(super::config::form_type(ns::MUC_ROOMINFO))
            .with_child(field("muc#roominfo_description", c.description.clone()))
            .with_child(field(
                "muc#roominfo_occupants",
                self.occupants.len().to_string(),
            ))
            .with_child(field(
                "muc#roominfo_subject",
                self.subject
                    .as_ref()
                    .map(|s| s.1.clone())
                    .unwrap_or_default(),
            ))
            .with_child(field(
                "muc#roominfo_changesubject",
                if c.change_subject { "1" } else { "0" }.into(),
            ))
            .with_child(field("muc#roomconfig_roomname", c.name.clone()))
            .with_child(field("muc#maxhistoryfetch", c.history_length.to_string()));
        let form = if c.lang.is_empty() {
            form
        } else {
            form.with_child(field("muc#roominfo_lang", c.lang.clone()))
        };
        query.push(form);
        Ok(Some(query))
    }

    /// Occupants are listed to other occupants only; outsiders learn the count from
    /// disco#info, not who is inside.
    fn disco_items(&self, from: &FullJid) -> Element {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        if self.by_session(from).is_some() {
            for o in &self.occupants {
                q.push(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", self.occupant_jid(&o.nick))
                        .with_attr("name", o.nick.clone()),
                );
            }
        }
        q
    }

    fn require(&self, from: &FullJid, p: AffPriv) -> Result<Affiliation, StanzaError> {
        let aff = self.affiliation(&from.to_bare());
        if perms::allowed(perms::affiliation_cell(aff, p), false) {
            Ok(aff)
        } else {
            Err(StanzaError::forbidden())
        }
    }

    fn owner_get(&self, from: &FullJid) -> Result<Option<Element>, StanzaError> {
        self.require(from, AffPriv::ChangeConfiguration)?;
        Ok(Some(
            Element::new("query", ns::MUC_OWNER).with_child(self.config.to_form()),
        ))
    }

    fn owner_set(
        &mut self,
        server: &ServerState,
        from: &FullJid,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if let Some(d) = q.child("destroy", ns::MUC_OWNER) {
            self.require(from, AffPriv::DestroyRoom)?;
            self.destroy(server, d);
            return Ok(None);
        }
        self.require(from, AffPriv::ChangeConfiguration)?;
        let Some(x) = q.child("x", ns::DATA_FORMS) else {
            return Err(StanzaError::bad_request());
        };
        match x.attr("type") {
            Some("cancel") => {
                if self.locked {
                    // §10.1.3: cancelling the initial configuration destroys the room.
                    self.destroy(server, &Element::new("destroy", ns::MUC_OWNER));
                }
                Ok(None)
            }
            Some("submit") => {
                let new = self.config.apply_form(x)?;
                self.reconfigure(server, new);
                Ok(None)
            }
            _ => Err(StanzaError::bad_request().with_text("expected a submitted form")),
        }
    }

    fn reconfigure(&mut self, server: &ServerState, new: RoomConfig) {
        let old = std::mem::replace(&mut self.config, new);
        let was_locked = self.locked;
        self.locked = false;
        self.history.trim(self.config.history_length);
        let mut codes = Vec::new();
        if !was_locked {
            codes.push(104);
        }
        if old.whois != self.config.whois {
            codes.push(if self.config.whois == Whois::Anyone {
                172
            } else {
                173
            });
        }
        self.save(server);
        tracing::info!(room = %self.jid, "room configured");
        if !codes.is_empty() {
            let mut x = muc_user_x();
            for c in &codes {
                x.push(status(*c));
            }
            for o in &self.occupants {
                for s in &o.sessions {
                    route(
                        server,
                        Element::new("message", ns::CLIENT)
                            .with_attr("type", "groupchat")
                            .with_attr("from", self.jid.to_string())
                            .with_attr("to", s.to_string())
                            .with_attr("id", format!("config-{}", rand::random::<u32>()))
                            .with_child(x.clone()),
                    );
                }
            }
        }
        // §10.2: turning members-only on removes everyone who is not a member (322).
        if self.config.members_only && !old.members_only {
            while let Some(i) = self
                .occupants
                .iter()
                .position(|o| self.affiliation(&o.bare) == Affiliation::None)
            {
                self.expel(server, i, &[322], None, None);
            }
        }
        // Moderation switched: recompute the default roles of occupants without one set
        // by hand (visitors become participants and back).
        if self.config.moderated != old.moderated {
            for i in 0..self.occupants.len() {
                let aff = self.affiliation(&self.occupants[i].bare);
                if aff == Affiliation::None && self.occupants[i].role != Role::Moderator {
                    let role = if self.config.moderated {
                        Role::Visitor
                    } else {
                        Role::Participant
                    };
                    if self.occupants[i].role != role {
                        self.occupants[i].role = role;
                        self.broadcast_presence(server, i, &Codes::default());
                    }
                }
            }
        }
    }

    fn destroy(&mut self, server: &ServerState, d: &Element) {
        let mut destroy = Element::new("destroy", ns::MUC_USER);
        if let Some(j) = d.attr("jid") {
            destroy.set_attr("jid", j);
        }
        if let Some(r) = d.child_text("reason", ns::MUC_OWNER) {
            destroy.push(Element::new("reason", ns::MUC_USER).with_text(r));
        }
        if let Some(pw) = d.child_text("password", ns::MUC_OWNER) {
            destroy.push(Element::new("password", ns::MUC_USER).with_text(pw));
        }
        for o in &self.occupants {
            for s in &o.sessions {
                let mut p = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", self.occupant_jid(&o.nick))
                    .with_attr("to", s.to_string());
                let mut x = muc_user_x().with_child(
                    Element::new("item", ns::MUC_USER)
                        .with_attr("affiliation", "none")
                        .with_attr("role", "none"),
                );
                x.push(destroy.clone());
                if o.sessions.contains(s) {
                    x.push(status(110));
                }
                p.push(x);
                route(server, p);
            }
        }
        for o in std::mem::take(&mut self.occupants) {
            for s in &o.sessions {
                self.track(s, false);
            }
        }
        self.destroyed = true;
        self.save(server);
        tracing::info!(room = %self.jid, "room destroyed");
    }

    fn admin_get(&self, from: &FullJid, q: &Element) -> Result<Option<Element>, StanzaError> {
        let Some(item) = q.child("item", ns::MUC_ADMIN) else {
            return Err(StanzaError::bad_request());
        };
        let mut out = Element::new("query", ns::MUC_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let want = Affiliation::parse(a).ok_or_else(StanzaError::bad_request)?;
            let needed = match want {
                Affiliation::Member => AffPriv::RetrieveMemberList,
                Affiliation::Outcast => AffPriv::Ban,
                Affiliation::Admin => AffPriv::EditAdminList,
                Affiliation::Owner => AffPriv::EditOwnerList,
                Affiliation::None => return Err(StanzaError::bad_request()),
            };
            // Admins may read the admin and owner lists too; they just cannot edit them.
            let aff = self.affiliation(&from.to_bare());
            let readable = perms::allowed(perms::affiliation_cell(aff, needed), false)
                || (aff == Affiliation::Admin && want >= Affiliation::Admin);
            if !readable {
                return Err(StanzaError::forbidden());
            }
            for (jid, r) in self
                .affiliations
                .iter()
                .filter(|(_, r)| r.affiliation == want)
            {
                let mut it = Element::new("item", ns::MUC_ADMIN)
                    .with_attr("affiliation", want.as_str())
                    .with_attr("jid", jid.to_string());
                if let Some(n) = &r.nick {
                    it.set_attr("nick", n.clone());
                }
                if let Some(reason) = &r.reason {
                    it.push(Element::new("reason", ns::MUC_ADMIN).with_text(reason.clone()));
                }
                out.push(it);
            }
            return Ok(Some(out));
        }
        if let Some(r) = item.attr("role") {
            let want = Role::parse(r).ok_or_else(StanzaError::bad_request)?;
            let me = self.by_session(from).ok_or_else(StanzaError::forbidden)?;
            if self.occupants[me].role != Role::Moderator || want == Role::None {
                return Err(StanzaError::forbidden());
            }
            for o in self.occupants.iter().filter(|o| o.role == want) {
                let mut it = Element::new("item", ns::MUC_ADMIN)
                    .with_attr("role", want.as_str())
                    .with_attr("nick", o.nick.clone())
                    .with_attr("affiliation", self.affiliation(&o.bare).as_str());
                if let Some(s) = o.sessions.first() {
                    it.set_attr("jid", s.to_string());
                }
                out.push(it);
            }
            return Ok(Some(out));
        }
        Err(StanzaError::bad_request())
    }

    /// Every item is checked before any is applied, so a refused batch changes nothing.
    fn admin_set(
        &mut self,
        server: &ServerState,
        from: &FullJid,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        enum Change {
            Role {
                nick: String,
                role: Role,
            },
            Aff {
                jid: BareJid,
                aff: Affiliation,
                nick: Option<String>,
            },
        }
        let actor_bare = from.to_bare();
        let actor_aff = self.affiliation(&actor_bare);
        let actor_idx = self.by_session(from);
        let actor_role = actor_idx
            .map(|i| self.occupants[i].role)
            .unwrap_or(Role::None);
        let actor_nick = actor_idx.map(|i| self.occupants[i].nick.clone());
        let mut changes = Vec::new();
        let mut reasons = Vec::new();
        // The affiliation map as it will be once every earlier item is applied, to count
        // owners correctly in a batch.
        let mut projected = self.affiliations.clone();
        let items: Vec<&Element> = q
            .children()
            .filter(|c| c.is("item", ns::MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(StanzaError::bad_request());
        }
        for item in items {
            let reason = item.child_text("reason", ns::MUC_ADMIN);
            if let Some(r) = item.attr("role") {
                let role = Role::parse(r)
                    .ok_or_else(|| StanzaError::bad_request().with_text("unknown role"))?;
                let nick = item.attr("nick").ok_or_else(|| {
                    StanzaError::bad_request().with_text("a role change needs a nick")
                })?;
                let t = self.by_nick(nick).ok_or_else(StanzaError::item_not_found)?;
                if actor_role != Role::Moderator {
                    return Err(StanzaError::forbidden());
                }
                let target_aff = self.affiliation(&self.occupants[t].bare);
                if !perms::may_change_role(
                    actor_aff,
                    actor_role,
                    target_aff,
                    self.occupants[t].role,
                    role,
                ) {
                    return Err(StanzaError::not_allowed()
                        .with_text("you may not change this occupant's role"));
                }
                changes.push(Change::Role {
                    nick: nick.to_string(),
                    role,
                });
            } else if let Some(a) = item.attr("affiliation") {
                let aff = Affiliation::parse(a)
                    .ok_or_else(|| StanzaError::bad_request().with_text("unknown affiliation"))?;
                let jid = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => BareJid::new(j)
                        .or_else(|_| Jid::new(j).map(|j| j.to_bare()))
                        .map_err(|_| StanzaError::jid_malformed())?,
                    (None, Some(n)) => {
                        let t = self.by_nick(n).ok_or_else(StanzaError::item_not_found)?;
                        self.occupants[t].bare.clone()
                    }
                    (None, None) => return Err(StanzaError::bad_request()),
                };
                if actor_aff < Affiliation::Admin {
                    return Err(StanzaError::forbidden());
                }
                let current = projected
                    .get(&jid)
                    .map(|r| r.affiliation)
                    .unwrap_or(Affiliation::None);
                if !perms::may_change_affiliation(actor_aff, current, aff) {
                    return Err(StanzaError::not_allowed()
                        .with_text("you may not change this user's affiliation"));
                }
                if current == Affiliation::Owner && aff != Affiliation::Owner {
                    let owners = projected
                        .values()
                        .filter(|r| r.affiliation == Affiliation::Owner)
                        .count();
                    if owners <= 1 {
                        return Err(StanzaError::conflict().with_text("a room needs an owner"));
                    }
                }
                if aff == Affiliation::None {
                    projected.remove(&jid);
                } else {
                    projected.insert(
                        jid.clone(),
                        AffiliationRecord {
                            affiliation: aff,
                            nick: None,
                            reason: None,
                        },
                    );
                }
                changes.push(Change::Aff {
                    jid,
                    aff,
                    nick: item.attr("nick").map(str::to_string),
                });
            } else {
                return Err(StanzaError::bad_request());
            }
            reasons.push(reason);
        }
        let actor = actor_nick.as_deref();
        for (change, reason) in changes.into_iter().zip(reasons) {
            match change {
                Change::Role { nick, role } => {
                    // Found again by nick: an earlier item in the batch may have removed
                    // someone and shifted the positions.
                    let Some(t) = self.by_nick(&nick) else {
                        continue;
                    };
                    if role == Role::None {
                        self.expel(server, t, &[307], actor, reason.as_deref());
                    } else {
                        self.occupants[t].role = role;
                        self.broadcast_presence(server, t, &Codes::default());
                    }
                }
                Change::Aff { jid, aff, nick } => {
                    self.set_affiliation(server, jid, aff, nick, reason, actor);
                }
            }
        }
        self.save(server);
        Ok(None)
    }

    // ----- voice requests (§7.13, §8.6) -----

    /// A `muc#request` form sent to the room: a visitor asking for voice, or a moderator
    /// answering such a request.
    fn voice_form(
        &mut self,
        server: &ServerState,
        m: &Element,
        form: &crate::forms::Form,
        from: &FullJid,
        me: Option<usize>,
    ) {
        let Some(i) = me else {
            return bounce(
                server,
                m,
                StanzaError::not_acceptable().with_text("you are not in this room"),
            );
        };
        if form.get("muc#request_allow").is_some() {
            return self.voice_decision(server, m, form, i);
        }
        if form.value("muc#role") != Some("participant") {
            return bounce(
                server,
                m,
                StanzaError::bad_request()
                    .with_text("only voice (role participant) can be asked for"),
            );
        }
        if self.occupants[i].role != Role::Visitor {
            return bounce(
                server,
                m,
                StanzaError::not_acceptable().with_text("you already have voice"),
            );
        }
        let now = now_secs();
        if self.occupants[i]
            .voice_requested
            .is_some_and(|t| now.saturating_sub(t) < VOICE_REQUEST_INTERVAL_SECS)
        {
            return bounce(
                server,
                m,
                StanzaError::resource_constraint()
                    .with_text("your last voice request is still with the moderators"),
            );
        }
        self.occupants[i].voice_requested = Some(now);
        let nick = self.occupants[i].nick.clone();
        tracing::info!(room = %self.jid, %nick, "voice requested");
        let approval = Self::voice_approval_form(&nick, from);
        for o in self.occupants.iter().filter(|o| o.role == Role::Moderator) {
            for s in &o.sessions {
                let out = Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.to_string())
                    .with_attr("to", s.to_string())
                    .with_child(approval.clone());
                route(server, out);
            }
        }
    }

    /// The form moderators get for a voice request; they grant voice by submitting it
    /// with `muc#request_allow` true.
    fn voice_approval_form(nick: &str, requester: &FullJid) -> Element {
        use crate::forms::{Field, FieldType, Form, FormType};
        Form::typed(FormType::Form, ns::MUC_REQUEST)
            .title("Voice request")
            .instructions(format!(
                "{nick} asks for voice. Allow the request and submit this form to grant it."
            ))
            .field(
                Field::new("muc#role", FieldType::ListSingle)
                    .label("Requested role")
                    .option("Participant", "participant")
                    .value("participant"),
            )
            .field(
                Field::new("muc#jid", FieldType::JidSingle)
                    .label("User ID")
                    .value(requester.to_bare().to_string()),
            )
            .field(
                Field::new("muc#roomnick", FieldType::TextSingle)
                    .label("Room nickname")
                    .value(nick),
            )
            .field(
                Field::new("muc#request_allow", FieldType::Boolean)
                    .label("Grant voice to this person?")
                    .value("false"),
            )
            .to_element()
    }

    /// A moderator's answer to a voice request (§8.6).
    fn voice_decision(
        &mut self,
        server: &ServerState,
        m: &Element,
        form: &crate::forms::Form,
        moderator: usize,
    ) {
        if self.occupants[moderator].role != Role::Moderator {
            return bounce(
                server,
                m,
                StanzaError::forbidden().with_text("only moderators decide voice requests"),
            );
        }
        if !matches!(form.value("muc#request_allow"), Some("true" | "1")) {
            // Declined: nothing changes for the visitor.
            return;
        }
        let Some(nick) = form.value("muc#roomnick") else {
            return bounce(
                server,
                m,
                StanzaError::bad_request().with_text("muc#roomnick is missing"),
            );
        };
        let Some(t) = self.by_nick(nick) else {
            return bounce(
                server,
                m,
                StanzaError::item_not_found().with_text("no such occupant"),
            );
        };
        if self.occupants[t].role == Role::Visitor {
            tracing::info!(room = %self.jid, nick = %nick, by = %self.occupants[moderator].nick, "voice granted");
            self.occupants[t].role = Role::Participant;
            self.occupants[t].voice_requested = None;
            self.broadcast_presence(server, t, &Codes::default());
        }
    }

    // ----- nickname registration (§7.10) -----

    fn reserved_nick(&self, bare: &BareJid) -> Option<String> {
        self.affiliations.get(bare).and_then(|r| r.nick.clone())
    }

    fn registration_form(&self, from: &FullJid) -> Result<Option<Element>, StanzaError> {
        use crate::forms::{Field, FieldType, Form, FormType};
        let bare = from.to_bare();
        if self.affiliation(&bare) == Affiliation::Outcast {
            return Err(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        let mut q = Element::new("query", ns::REGISTER);
        if let Some(nick) = self.reserved_nick(&bare) {
            q.push(Element::new("registered", ns::REGISTER));
            q.push(Element::new("username", ns::REGISTER).with_text(nick));
            return Ok(Some(q));
        }
        q.push(
            Element::new("instructions", ns::REGISTER)
                .with_text("Choose the nickname to reserve in this room."),
        );
        q.push(
            Form::typed(FormType::Form, ns::MUC_REGISTER)
                .title("Room registration")
                .field(
                    Field::new("muc#register_roomnick", FieldType::TextSingle)
                        .label("Nickname")
                        .required(),
                )
                .to_element(),
        );
        Ok(Some(q))
    }

    /// Registers the sender with the room: a reserved nickname, and membership if the
    /// user had no affiliation. A `<remove/>` gives both up again.
    fn register(
        &mut self,
        server: &ServerState,
        from: &FullJid,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        use crate::forms::{Field, FieldType, Form, FormType};
        let bare = from.to_bare();
        let aff = self.affiliation(&bare);
        if aff == Affiliation::Outcast {
            return Err(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        if q.has_child("remove", ns::REGISTER) {
            if aff == Affiliation::None {
                return Err(StanzaError::item_not_found().with_text("you are not registered"));
            }
            if aff == Affiliation::Member {
                self.set_affiliation(server, bare, Affiliation::None, None, None, None);
            } else if let Some(r) = self.affiliations.get_mut(&bare) {
                r.nick = None;
            }
            self.save(server);
            return Ok(None);
        }
        if self.config.members_only && aff == Affiliation::None {
            return Err(StanzaError::not_allowed()
                .with_text("members of this room are chosen by its admins"));
        }
        let x = q
            .child("x", ns::DATA_FORMS)
            .ok_or_else(|| StanzaError::bad_request().with_text("expected a submitted form"))?;
        let submitted = Form::try_from(x)?;
        if submitted.kind == FormType::Cancel {
            return Ok(None);
        }
        let shown = Form::typed(FormType::Form, ns::MUC_REGISTER)
            .field(Field::new("muc#register_roomnick", FieldType::TextSingle).required());
        shown
            .check_submission(&submitted)
            .map_err(|t| StanzaError::bad_request().with_text(t))?;
        let nick = submitted
            .value("muc#register_roomnick")
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        if !Self::valid_nick(&nick) {
            return Err(StanzaError::jid_malformed().with_text("invalid nickname"));
        }
        if !self.nick_free_for(&nick, &bare) {
            return Err(StanzaError::conflict().with_text("that nickname is taken"));
        }
        let new_aff = aff.max(Affiliation::Member);
        tracing::info!(room = %self.jid, user = %bare, %nick, "nickname registered");
        self.set_affiliation(server, bare, new_aff, Some(nick), None, None);
        self.save(server);
        Ok(None)
    }

    fn set_affiliation(
        &mut self,
        server: &ServerState,
        jid: BareJid,
        aff: Affiliation,
        nick: Option<String>,
        reason: Option<String>,
        actor: Option<&str>,
    ) {
        tracing::info!(room = %self.jid, user = %jid, affiliation = aff.as_str(), "affiliation changed");
        if aff == Affiliation::None {
            self.affiliations.remove(&jid);
        } else {
            self.affiliations.insert(
                jid.clone(),
                AffiliationRecord {
                    affiliation: aff,
                    nick: nick.filter(|n| Self::valid_nick(n)),
                    reason: reason.clone(),
                },
            );
        }
        // Consequences for the user's occupant, if inside (§9.1, §9.4, §10.6).
        let Some(i) = self.occupants.iter().position(|o| o.bare == jid) else {
            return;
        };
        match aff {
            Affiliation::Outcast => self.expel(server, i, &[301], actor, reason.as_deref()),
            Affiliation::None if self.config.members_only => {
                self.expel(server, i, &[321], actor, reason.as_deref())
            }
            _ => {
                if let Some(role) =
                    perms::default_role(aff, self.config.moderated, self.config.members_only)
                {
                    self.occupants[i].role = role;
                }
                self.broadcast_presence(server, i, &Codes::default());
            }
        }
    }
}
