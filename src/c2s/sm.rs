//! XEP-0198 stream management: acknowledgements and resumption.
//!
//! What the counters mean here:
//! - `inbound` (the `h` we report) counts stanzas from the client the server has
//!   *routed*: handed to a session queue, stored offline, archived, or answered. The
//!   router does all of that synchronously before the count moves, and the store is
//!   flushed before an `<a/>` goes out, so an acknowledgement never covers a stanza a
//!   crash could still lose (DESIGN.md, reliability invariants).
//! - `acked` counts our stanzas the client said it handled; `unacked` holds the ones it
//!   has not, oldest first, so the stanza at `unacked[i]` has number `acked + i + 1`.
//!   Both are 32-bit and wrap (XEP-0198 §5: h is an unsigned 32-bit integer).
//!
//! Resumption: an enabled, resumable session registers its id here together with a
//! channel. Whoever resumes sends a one-shot reply channel down it; the task that owns
//! the session right now — the live connection if it has not noticed its socket died, or
//! the parking task of a detached session — answers by handing the whole session over.
//! So exactly one task owns a session at any time and no stanza can be sent twice.
//!
//! Interplay with the rest of the server:
//! - A detached session keeps its resource bound and its presence: stanzas for it wait
//!   in its queue, as they would for a slow reader, until it is resumed or times out.
//! - On timeout (or any other end of an SM session) the unacknowledged messages and the
//!   queued ones go to offline storage, in order, and not to the account's other
//!   resources: those with carbons enabled already got a copy when the message was first
//!   delivered here, so offering it to them again would duplicate it. The next resource
//!   that comes online gets it from offline storage, and the archive has it anyway.
//! - Carbon copies (`<sent/>`, `<received/>`), groupchat and headlines are not stored:
//!   the original is in its owner's archive or the room's.

use crate::ns;
use crate::router;
use crate::stanza::{Kind, StanzaError};
use crate::xml::Element;
use crate::ServerState;
use jid::BareJid;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// A request to hand a session over to a resuming connection.
pub type TakeoverRequest = oneshot::Sender<Box<super::Live>>;

/// Stream-management state of one session.
pub struct SmState {
    /// Resumption id, when the client asked for resumption.
    pub id: Option<String>,
    pub inbound: u32,
    pub acked: u32,
    pub unacked: VecDeque<Element>,
    /// An `<r/>` went out and its `<a/>` has not come back.
    pub requested: bool,
    /// The client sent `<r/>`; the answer goes out after the current batch is handled.
    pub answer_due: bool,
    /// Where resumption requests for this session arrive.
    pub takeover: Option<mpsc::Receiver<TakeoverRequest>>,
}

/// The client's `h` acknowledges more stanzas than were sent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl SmState {
    pub fn new(id: Option<String>, takeover: Option<mpsc::Receiver<TakeoverRequest>>) -> Self {
        SmState {
            id,
            inbound: 0,
            acked: 0,
            unacked: VecDeque::new(),
            requested: false,
            answer_due: false,
            takeover,
        }
    }

    /// Our count of stanzas sent since enabling.
    pub fn sent(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    /// Records a stanza written to the client.
    pub fn record_sent(&mut self, el: Element) {
        self.unacked.push_back(el);
    }

    /// Records one stanza from the client as handled.
    pub fn record_handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// Applies the client's `h`: drops what it acknowledges.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        // Wrapping distance: correct across the 2^32 boundary as long as fewer than
        // 2^32 stanzas are in flight, which the unacked bound guarantees.
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(TooHigh {
                h,
                sent: self.sent(),
            });
        }
        self.unacked.drain(..newly);
        self.acked = h;
        Ok(())
    }
}

pub fn a(h: u32) -> Element {
    Element::new("a", ns::SM).with_attr("h", h.to_string())
}

pub fn r() -> Element {
    Element::new("r", ns::SM)
}

/// `<failed/>` with a stanza-error condition (and the `h` we know, when we know it).
pub fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut f = Element::new("failed", ns::SM).with_child(Element::new(condition, ns::STANZAS));
    if let Some(h) = h {
        f.set_attr("h", h.to_string());
    }
    f
}

/// The stream error for a client acknowledging stanzas it was never sent.
pub fn too_high_error(t: &TooHigh) -> crate::stanza::StreamError {
    crate::stanza::StreamError::new("undefined-condition").with_text(format!(
        "h='{}' acknowledges more than the {} stanzas sent",
        t.h, t.sent
    ))
}

struct Entry {
    owner: BareJid,
    tx: mpsc::Sender<TakeoverRequest>,
}

/// Resumable sessions by id.
#[derive(Default)]
pub struct Resumable {
    map: Mutex<HashMap<String, Entry>>,
}

pub enum ResumeError {
    /// Unknown, expired, or someone else's.
    NotFound,
}

impl Resumable {
    /// Registers a new resumable session; returns its id and where takeovers arrive.
    pub fn register(&self, owner: BareJid) -> (String, mpsc::Receiver<TakeoverRequest>) {
        use base64::Engine;
        use rand::Rng;
        let (tx, rx) = mpsc::channel(4);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // 144 random bits: guessing another session's id is not a way in (the owner
            // check below is the real guard), and collisions do not happen in practice.
            let bytes: [u8; 18] = rand::thread_rng().gen();
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !map.contains_key(&id) {
                map.insert(
                    id.clone(),
                    Entry {
                        owner: owner.clone(),
                        tx,
                    },
                );
                return (id, rx);
            }
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the session's current owner to hand it over.
    pub async fn take(&self, id: &str, owner: &BareJid) -> Result<Box<super::Live>, ResumeError> {
        let tx = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(id) {
                // Someone else's id is answered exactly like an unknown one.
                Some(e) if &e.owner == owner => e.tx.clone(),
                _ => return Err(ResumeError::NotFound),
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(reply_tx).await.is_err() {
            return Err(ResumeError::NotFound);
        }
        // The owner answers at its next turn of its loop; one that ended meanwhile drops
        // the request, which surfaces here as an error.
        match tokio::time::timeout(std::time::Duration::from_secs(10), reply_rx).await {
            Ok(Ok(live)) => Ok(live),
            _ => Err(ResumeError::NotFound),
        }
    }
}

/// A stanza that was sent (or queued) to an SM session that ended without the client
/// acknowledging it. See the module comment for why messages go to offline storage.
pub fn reroute(server: &ServerState, el: Element) {
    match Kind::of(&el) {
        Some(Kind::Message) => {
            let ty = el.attr("type").unwrap_or("normal");
            let carbon = el.has_child("sent", ns::CARBONS) || el.has_child("received", ns::CARBONS);
            // Archive results answered a query of this session; nobody else wants them.
            let mam_result = el.has_child("result", ns::MAM);
            // A bare chat state ("typing...") is stale by the time anyone reads it.
            let only_chat_state =
                el.children().next().is_some() && el.children().all(|c| c.ns() == ns::CHATSTATES);
            if matches!(ty, "chat" | "normal") && !carbon && !mam_result && !only_chat_state {
                router::offline(server, el);
            }
        }
        Some(Kind::Iq) if matches!(el.attr("type"), Some("get" | "set")) => {
            router::bounce(server, &el, StanzaError::service_unavailable())
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Element {
        Element::new("message", ns::CLIENT).with_attr("id", n.to_string())
    }

    #[test]
    fn acks_drop_exactly_what_they_cover() {
        let mut s = SmState::new(None, None);
        for i in 0..5 {
            s.record_sent(msg(i));
        }
        assert_eq!(s.sent(), 5);
        s.ack(2).unwrap();
        assert_eq!(s.unacked.len(), 3);
        assert_eq!(s.unacked[0].attr("id"), Some("2"));
        // Repeating an old h changes nothing.
        s.ack(2).unwrap();
        assert_eq!(s.unacked.len(), 3);
        assert_eq!(s.ack(6), Err(TooHigh { h: 6, sent: 5 }));
        s.ack(5).unwrap();
        assert!(s.unacked.is_empty());
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut s = SmState::new(None, None);
        s.acked = u32::MAX - 1;
        s.inbound = u32::MAX;
        for i in 0..4 {
            s.record_sent(msg(i));
        }
        assert_eq!(s.sent(), 2);
        // h = u32::MAX covers the first one (number 2^32 - 1).
        s.ack(u32::MAX).unwrap();
        assert_eq!(s.unacked.len(), 3);
        // 0 is the stanza numbered 2^32: the second.
        s.ack(0).unwrap();
        assert_eq!(s.unacked[0].attr("id"), Some("2"));
        s.ack(2).unwrap();
        assert!(s.unacked.is_empty());
        assert!(s.ack(3).is_err());
        s.record_handled();
        assert_eq!(s.inbound, 0);
    }
}
