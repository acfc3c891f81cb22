//! XEP-0045 Multi-User Chat: the service on the MUC domain and its rooms.
//!
//! Each room is one actor: a task owning the room's state, fed by a bounded queue. The
//! router's domain hook only looks the room up and enqueues (never waits), so one busy
//! room cannot hold up the connection that talks to it, and every occupant sees the
//! room's single order. Sends from a room to occupants go through the router, whose
//! per-session queues are non-blocking and disconnect stalled readers, so a slow
//! occupant cannot slow the room either.

pub mod config;
pub mod history;
pub mod perms;
mod room;

use crate::module::Registry;
use crate::ns;
use crate::router::{bounce, route};
use crate::stanza::{error_reply, iq_result, StanzaError};
use crate::xml::Element;
use crate::{Config, ServerState};
use jid::{BareJid, FullJid, Jid};
use room::{Room, RoomMsg};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use tokio::sync::mpsc;

/// Stanzas waiting for one room before new ones are refused with resource-constraint.
const ROOM_QUEUE: usize = 1024;

/// What the service knows about a room without asking it (for disco#items).
struct DirEntry {
    name: String,
    public: bool,
}

pub struct Service {
    server: OnceLock<Weak<ServerState>>,
    rooms: Mutex<HashMap<BareJid, mpsc::Sender<RoomMsg>>>,
    /// Occupant session -> rooms it is in, so a session's end reaches those rooms.
    joined: Mutex<HashMap<FullJid, HashSet<BareJid>>>,
    directory: Mutex<BTreeMap<BareJid, DirEntry>>,
}

/// A poisoned lock here only means a panic elsewhere mid-update of a plain map entry;
/// the map itself is still consistent, so keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn register(reg: &mut Registry, config: &Config) {
    reg.spec("0045", "1.35.1", "Multi-User Chat");
    reg.spec("0249", "1.2", "Direct MUC Invitations");
    reg.spec("0410", "1.1.0", "MUC Self-Ping (Schrödinger's Chat)");
    reg.spec(
        "0421",
        "0.2.0",
        "Anonymous unique occupant identifiers for MUCs",
    );
    let service = Arc::new(Service {
        server: OnceLock::new(),
        rooms: Mutex::new(HashMap::new()),
        joined: Mutex::new(HashMap::new()),
        directory: Mutex::new(BTreeMap::new()),
    });
    let s = service.clone();
    reg.on_start(move |server| s.start(server));
    let s = service.clone();
    reg.domain(config.muc_domain(), move |server, stanza| {
        s.handle(server, stanza)
    });
    let s = service.clone();
    reg.on_account_removed(move |store, bare| s.account_removed(store, bare));
    let s = service;
    reg.on_session_end(move |_server, jid| {
        if let Ok(full) = jid.clone().try_into_full() {
            s.session_ended(full);
        }
    });
}

impl Service {
    /// Brings every stored (persistent) room back.
    fn start(self: &Arc<Self>, server: &Arc<ServerState>) {
        let _ = self.server.set(Arc::downgrade(server));
        let stored = match server.store.load_rooms() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("loading MUC rooms failed: {e}");
                return;
            }
        };
        let mut rooms = lock(&self.rooms);
        for (jid, record) in stored {
            let Ok(jid) = BareJid::new(&jid) else {
                tracing::error!(room = %jid, "stored room with an invalid JID skipped");
                continue;
            };
            let room = Room::from_record(jid.clone(), Arc::downgrade(self), record);
            self.directory_update(&room);
            let tx = self.spawn(room);
            rooms.insert(jid, tx);
        }
        if !rooms.is_empty() {
            tracing::info!(count = rooms.len(), "persistent rooms loaded");
        }
    }

    fn spawn(self: &Arc<Self>, mut room: Room) -> mpsc::Sender<RoomMsg> {
        let (tx, mut rx) = mpsc::channel(ROOM_QUEUE);
        let service = Arc::downgrade(self);
        let server = self.server.get().cloned().unwrap_or_default();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Some(state) = server.upgrade() else { break };
                room.handle(&state, msg);
                if !room.finished() {
                    continue;
                }
                let Some(svc) = service.upgrade() else { break };
                let mut rooms = lock(&svc.rooms);
                // Enqueuers hold this lock while sending, so an empty queue seen here
                // stays empty: nothing can be lost between this check and the removal.
                if room.destroyed || rx.is_empty() {
                    rooms.remove(&room.jid);
                    drop(rooms);
                    lock(&svc.directory).remove(&room.jid);
                    rx.close();
                    // A destroyed room may still have stanzas queued: they are answered,
                    // not dropped.
                    while let Ok(msg) = rx.try_recv() {
                        if let RoomMsg::Stanza(s) = msg {
                            gone(&state, &s);
                        }
                    }
                    tracing::debug!(room = %room.jid, "room closed");
                    break;
                }
            }
        });
        tx
    }

    fn directory_update(&self, room: &Room) {
        let mut dir = lock(&self.directory);
        if room.destroyed {
            dir.remove(&room.jid);
        } else {
            dir.insert(
                room.jid.clone(),
                DirEntry {
                    name: room.config.name.clone(),
                    public: room.config.public,
                },
            );
        }
    }

    fn track(&self, full: &FullJid, room: &BareJid, joined: bool) {
        let mut map = lock(&self.joined);
        if joined {
            map.entry(full.clone()).or_default().insert(room.clone());
        } else if let Some(set) = map.get_mut(full) {
            set.remove(room);
            if set.is_empty() {
                map.remove(full);
            }
        }
    }

    fn session_ended(&self, full: FullJid) {
        let Some(rooms) = lock(&self.joined).remove(&full) else {
            return;
        };
        let map = lock(&self.rooms);
        for r in rooms {
            let Some(tx) = map.get(&r) else { continue };
            if let Err(mpsc::error::TrySendError::Full(msg)) =
                tx.try_send(RoomMsg::SessionEnded(full.clone()))
            {
                // The room is busy; this notice must still arrive, so wait for room in
                // the queue off to the side instead of dropping it.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    /// A deleted account keeps no affiliation anywhere: whoever registers the name later
    /// must not inherit ownership or membership of its rooms.
    fn account_removed(&self, store: &crate::store::Store, bare: &BareJid) {
        if self.server.get().and_then(Weak::upgrade).is_some() {
            // Running: every persistent room is live, and each room changes (and saves)
            // its own state.
            let map = lock(&self.rooms);
            for tx in map.values() {
                if let Err(mpsc::error::TrySendError::Full(msg)) =
                    tx.try_send(RoomMsg::AccountRemoved(bare.clone()))
                {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        let tx = tx.clone();
                        rt.spawn(async move {
                            let _ = tx.send(msg).await;
                        });
                    }
                }
            }
            return;
        }
        // No server running here (the command line): edit the stored rooms.
        let rooms = match store.load_rooms() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(account = %bare, "reading rooms to drop affiliations failed: {e}");
                return;
            }
        };
        for (jid, mut record) in rooms {
            if record.affiliations.remove(bare.as_str()).is_none() {
                continue;
            }
            match store.save_room(&jid, &record) {
                Ok(()) => {
                    tracing::info!(room = %jid, account = %bare, "affiliation of a deleted account removed")
                }
                Err(e) => {
                    tracing::error!(room = %jid, account = %bare, "removing an affiliation failed: {e}")
                }
            }
        }
    }

    /// The domain hook: synchronous, it only routes into a room's queue.
    fn handle(self: &Arc<Self>, server: &ServerState, stanza: Element) {
        let Some(to) = stanza.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if to.node().is_none() {
            return self.service_stanza(server, stanza);
        }
        let room_jid = to.to_bare();
        let mut rooms = lock(&self.rooms);
        if let Some(tx) = rooms.get(&room_jid) {
            match tx.try_send(RoomMsg::Stanza(stanza)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(RoomMsg::Stanza(s))) => {
                    drop(rooms);
                    tracing::warn!(room = %room_jid, "room queue full; stanza refused");
                    return bounce(
                        server,
                        &s,
                        StanzaError::resource_constraint().with_text("the room is busy"),
                    );
                }
                Err(mpsc::error::TrySendError::Closed(RoomMsg::Stanza(s))) => {
                    // The room ended between lookups; fall through to create it anew.
                    rooms.remove(&room_jid);
                    return self.create_or_refuse(server, rooms, room_jid, s, &to);
                }
                Err(_) => return,
            }
        }
        self.create_or_refuse(server, rooms, room_jid, stanza, &to)
    }

    fn create_or_refuse(
        self: &Arc<Self>,
        server: &ServerState,
        mut rooms: MutexGuard<'_, HashMap<BareJid, mpsc::Sender<RoomMsg>>>,
        room_jid: BareJid,
        stanza: Element,
        to: &Jid,
    ) {
        let is_join =
            stanza.name() == "presence" && stanza.attr("type").is_none() && to.resource().is_some();
        let creator = stanza
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .map(|j| j.to_bare());
        match creator {
            Some(creator) if is_join => {
                let locked = stanza.has_child("x", ns::MUC);
                let room = Room::create(room_jid.clone(), Arc::downgrade(self), &creator, locked);
                tracing::info!(room = %room_jid, %creator, "room created");
                let tx = self.spawn(room);
                // A fresh queue has room for one stanza.
                let _ = tx.try_send(RoomMsg::Stanza(stanza));
                rooms.insert(room_jid, tx);
            }
            _ => {
                drop(rooms);
                gone(server, &stanza);
            }
        }
    }

    /// Stanzas to the service itself: discovery and pings.
    fn service_stanza(&self, server: &ServerState, stanza: Element) {
        if stanza.name() != "iq" {
            if stanza.attr("type") != Some("error") && stanza.name() == "message" {
                bounce(server, &stanza, StanzaError::service_unavailable());
            }
            return;
        }
        let ty = stanza.attr("type").unwrap_or("");
        if ty != "get" && ty != "set" {
            return;
        }
        let payload = stanza.children().next().cloned();
        let result = match (ty, payload.as_ref().map(|p| (p.name(), p.ns()))) {
            ("get", Some(("query", ns::DISCO_INFO))) => Ok(Some(
                Element::new("query", ns::DISCO_INFO)
                    .with_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", "Chatrooms"),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS),
                    )
                    .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::MUC))
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::OCCUPANT_ID),
                    )
                    .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::PING)),
            )),
            ("get", Some(("query", ns::DISCO_ITEMS))) => {
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (jid, e) in lock(&self.directory).iter().filter(|(_, e)| e.public) {
                    let mut item =
                        Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid.to_string());
                    if !e.name.is_empty() {
                        item.set_attr("name", e.name.clone());
                    }
                    q.push(item);
                }
                Ok(Some(q))
            }
            ("get", Some(("ping", ns::PING))) => Ok(None),
            _ => Err(StanzaError::service_unavailable()),
        };
        let reply = match result {
            Ok(p) => Some(iq_result(&stanza, p)),
            Err(e) => error_reply(&stanza, &e),
        };
        if let Some(r) = reply {
            route(server, r);
        }
    }
}

/// The answer for a stanza to a room that does not exist (§7.2: item-not-found for
/// messages and IQ requests; stray presence is ignored).
fn gone(server: &ServerState, stanza: &Element) {
    let ty = stanza.attr("type").unwrap_or("");
    match stanza.name() {
        "iq" if ty == "get" || ty == "set" => bounce(server, stanza, StanzaError::item_not_found()),
        "message" if ty != "error" => bounce(server, stanza, StanzaError::item_not_found()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::module::Registry;
    use crate::store::{AffiliationRecord, RoomRecord, Store};
    use crate::Config;
    use std::collections::BTreeMap;

    /// With no server running (the command line), deleting an account edits the stored
    /// rooms: its affiliation is gone, everyone else's stays.
    #[test]
    fn deleting_an_account_offline_drops_its_affiliations() {
        let store = Store::temporary().unwrap();
        let config = Config::default();
        let mut registry = Registry::default();
        crate::services::register_all(&mut registry, &config);
        let bob = jid::BareJid::new("bob@localhost").unwrap();
        crate::accounts::create(&store, &bob, "pw").unwrap();
        let aff = |a| AffiliationRecord {
            affiliation: a,
            nick: Some("nick".into()),
            reason: None,
        };
        let mut affiliations = BTreeMap::new();
        affiliations.insert(
            "alice@localhost".to_string(),
            aff(super::perms::Affiliation::Owner),
        );
        affiliations.insert(
            "bob@localhost".to_string(),
            aff(super::perms::Affiliation::Admin),
        );
        let record = RoomRecord {
            config: Default::default(),
            affiliations,
            subject: None,
            occupant_id_key: vec![1; 32],
            created: 0,
        };
        store
            .save_room("room@conference.localhost", &record)
            .unwrap();
        crate::accounts::delete(&store, &registry, &bob).unwrap();
        let after = store.room("room@conference.localhost").unwrap().unwrap();
        let left: Vec<&str> = after.affiliations.keys().map(String::as_str).collect();
        assert_eq!(left, vec!["alice@localhost"]);
    }
}
