//! Who is online: bare JID -> resources, each with its presence state and queue handle.
//!
//! This is one of the two scale-out seams (DESIGN.md): the router asks it where a JID
//! lives. The map is sharded so that logins on different users do not contend, and no
//! lock is ever held across an `.await` (every method here is synchronous).

use crate::jidext::JidExt;
use crate::stanza::StreamError;
use crate::xml::Element;
use jid::{BareJid, FullJid};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{mpsc, Notify};

const SHARDS: usize = 64;

/// What a session's connection task receives from the rest of the server.
#[derive(Debug)]
pub enum Outbound {
    Stanza(Element),
    /// A stanza many sessions receive alike; this session is its `to`.
    Shared(Arc<SharedStanza>),
}

impl Outbound {
    /// The stanza as an element of its own, addressed to `to` (the receiving session).
    pub fn into_element(self, to: &FullJid) -> Element {
        match self {
            Outbound::Stanza(el) => el,
            Outbound::Shared(s) => s.to_element(to.as_str()),
        }
    }
}

/// One stanza that many sessions receive identical but for `to`: a room's groupchat
/// message goes to every occupant. It is built once and shared by all the queues it is
/// in, instead of copied into each; a client stream serialises it once as well and
/// splices each recipient's JID into the bytes ([`SharedStanza::write_client`]).
#[derive(Debug)]
pub struct SharedStanza {
    /// The stanza without `to`.
    el: Element,
    /// `el` serialised as a child of a stream whose default namespace is `jabber:client`,
    /// made by the first session that writes it.
    client_bytes: OnceLock<Vec<u8>>,
}

impl SharedStanza {
    pub fn new(mut el: Element) -> Arc<SharedStanza> {
        el.remove_attr("to");
        Arc::new(SharedStanza {
            el,
            client_bytes: OnceLock::new(),
        })
    }

    /// The shared stanza itself (it has no `to`).
    pub fn element(&self) -> &Element {
        &self.el
    }

    /// A copy of its own, addressed to `to`.
    pub fn to_element(&self, to: &str) -> Element {
        let mut el = self.el.clone();
        el.set_attr("to", to);
        el
    }

    /// Appends the stanza addressed to `to`, as [`Element::write_to`] with `jabber:client`
    /// as the parent namespace would, but serialising the shared part only once.
    pub fn write_client(&self, out: &mut Vec<u8>, to: &str) {
        let bytes = self
            .client_bytes
            .get_or_init(|| self.el.to_bytes(crate::ns::CLIENT));
        // The serialisation starts with `<name`; `to` goes right after it (attribute
        // order carries no meaning).
        let at = (1 + self.el.name().len()).min(bytes.len());
        out.extend_from_slice(&bytes[..at]);
        out.extend_from_slice(b" to=\"");
        crate::xml::element::escape_into(out, to, true);
        out.push(b'"');
        out.extend_from_slice(&bytes[at..]);
    }
}

/// Out-of-band orders for a session (rare: one slot, never a queue).
#[derive(Debug)]
pub enum Control {
    /// Close the stream with this error (conflict, policy-violation, system-shutdown...).
    Close(StreamError),
}

/// How the rest of the server reaches one bound session. Cloning it (the message path
/// does, once per delivery) is one reference count, not a copy of the JID and the queue.
#[derive(Clone, Debug)]
pub struct SessionHandle(Arc<HandleInner>);

#[derive(Debug)]
pub struct HandleInner {
    pub id: u64,
    pub jid: FullJid,
    tx: mpsc::Sender<Box<Outbound>>,
    control: Arc<ControlSlot>,
}

impl std::ops::Deref for SessionHandle {
    type Target = HandleInner;
    fn deref(&self) -> &HandleInner {
        &self.0
    }
}

/// Where a session's out-of-band order waits. A tokio channel would allocate a block of
/// 32 slots for every session up front; an idle session should cost as little as we can
/// make it, and only the first order matters anyway (the session ends on it).
#[derive(Debug, Default)]
struct ControlSlot {
    order: Mutex<Option<Control>>,
    notify: Notify,
    /// Set once an order has been put: a session polls this on every event, which is
    /// cheaper than polling the notifier (a lock) each time.
    posted: AtomicBool,
}

impl ControlSlot {
    fn put(&self, order: Control) {
        let mut slot = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(order);
            self.posted.store(true, Ordering::Release);
            drop(slot);
            // notify_one keeps a permit when nobody waits yet, so no order is missed.
            self.notify.notify_one();
        }
    }

    fn take(&self) -> Option<Control> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Why a stanza could not be handed to a session.
#[derive(Debug)]
pub enum SendError {
    /// The session is gone; the stanza comes back to the caller.
    Gone(Element),
    /// The session's queue is full (a stalled reader); the stanza comes back.
    Full(Element),
}

impl SessionHandle {
    pub fn send(&self, stanza: Element) -> Result<(), SendError> {
        self.send_outbound(Outbound::Stanza(stanza))
    }

    /// Queues a shared stanza for this session (it is addressed to the session's JID).
    /// On failure the caller gets a copy of its own back.
    pub fn send_shared(&self, stanza: &Arc<SharedStanza>) -> Result<(), SendError> {
        self.send_outbound(Outbound::Shared(stanza.clone()))
    }

    fn send_outbound(&self, out: Outbound) -> Result<(), SendError> {
        match self.tx.try_send(Box::new(out)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(s)) => {
                // A reader this far behind will not catch up: close it, and let the
                // caller store or bounce what did not fit.
                self.control.put(Control::Close(
                    StreamError::new("policy-violation").with_text("too slow reading"),
                ));
                Err(SendError::Full(s.into_element(&self.jid)))
            }
            Err(mpsc::error::TrySendError::Closed(s)) => {
                Err(SendError::Gone(s.into_element(&self.jid)))
            }
        }
    }

    pub fn close(&self, err: StreamError) {
        self.control.put(Control::Close(err));
    }
}

/// One bound resource as the router sees it.
#[derive(Clone, Debug)]
pub struct Resource {
    pub handle: SessionHandle,
    /// Has sent available presence (and not unavailable since).
    pub available: bool,
    pub priority: i8,
    /// The last available presence broadcast by this resource (for probes).
    pub presence: Option<Element>,
    /// Asked for the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Enabled message carbons (XEP-0280).
    pub carbons: bool,
    /// Who got directed presence from this resource without a subscription: they are
    /// told when it goes unavailable (RFC 6121 §4.6.3). Usually empty.
    pub directed: Vec<jid::Jid>,
}

impl Resource {
    pub fn resource(&self) -> &str {
        self.handle.jid.resource().as_str()
    }
}

/// The receiving ends a new session's task owns.
pub struct SessionChannels {
    pub rx: OutboundRx,
    pub control: ControlRx,
}

/// The receiving end of a session's stanza queue.
///
/// Stanzas travel boxed: tokio allocates a channel's slots 32 at a time, the first block
/// when the channel is made, so pointer-sized slots keep an idle session's queue at a few
/// hundred bytes instead of ~3 KiB. Receivers still get plain [`Outbound`] values.
pub struct OutboundRx(mpsc::Receiver<Box<Outbound>>);

impl OutboundRx {
    /// Cancel-safe, like the channel underneath.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.0.recv().await.map(|s| *s)
    }

    pub fn try_recv(&mut self) -> Result<Outbound, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|s| *s)
    }

    /// Refuses further stanzas; those already queued can still be received.
    pub fn close(&mut self) {
        self.0.close()
    }
}

/// The receiving end of a session's out-of-band orders.
pub struct ControlRx(Arc<ControlSlot>);

impl ControlRx {
    /// Waits for an order. Cancel-safe: an order is only taken when it is returned.
    /// (Never `None`: the session's own handle keeps the sending side alive.)
    pub async fn recv(&mut self) -> Option<Control> {
        loop {
            if let Some(order) = self.0.take() {
                return Some(order);
            }
            self.0.notify.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Result<Control, mpsc::error::TryRecvError> {
        self.0.take().ok_or(mpsc::error::TryRecvError::Empty)
    }

    /// Whether an order has been given (it may have been taken since): one atomic load.
    pub fn posted(&self) -> bool {
        self.0.posted.load(Ordering::Acquire)
    }

    /// Another receiving end of the same slot, for a wait that must not borrow the
    /// session's own (whichever end takes the order first gets it).
    pub fn watcher(&self) -> ControlRx {
        ControlRx(self.0.clone())
    }
}

/// A bare JID as a map key that can be looked up by its string, so that the message
/// path finds a full JID's account by slicing its string instead of building a
/// `BareJid` (hash and equality are those of the normalised string).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key(BareJid);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

/// Every message looks up its sender's and its recipient's account here, so the maps use
/// foldhash (seeded per process, so still unpredictable to a peer choosing JIDs) rather
/// than SipHash, which cost several times as much per short key.
type Shard = HashMap<Key, Vec<Resource>, foldhash::fast::RandomState>;

pub struct Sessions {
    shards: Vec<Mutex<Shard>>,
    /// Picks a key's shard; independent of the maps' own hashers.
    shard_hasher: foldhash::fast::RandomState,
    next_id: AtomicU64,
    queue: usize,
}

impl Sessions {
    pub fn new(queue: usize) -> Sessions {
        Sessions {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Default::default())))
                .collect(),
            shard_hasher: Default::default(),
            next_id: AtomicU64::new(1),
            queue,
        }
    }

    fn shard(&self, bare: &str) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(self.shard_hasher.hash_one(bare) as usize) % SHARDS];
        // A panic while holding a shard lock cannot leave a map half-updated (every
        // update is a single push/remove/field write), so a poisoned lock is still usable.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a bound resource. An existing session with the same full JID is told to
    /// close with `<conflict/>` (RFC 6120 §7.7.2.2: the newer session wins).
    pub fn bind(&self, jid: FullJid) -> (SessionHandle, SessionChannels) {
        let (tx, rx) = mpsc::channel(self.queue);
        let control = Arc::new(ControlSlot::default());
        let handle = SessionHandle(Arc::new(HandleInner {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            jid: jid.clone(),
            tx,
            control: control.clone(),
        }));
        let bare = jid.bare();
        let mut shard = self.shard(bare.as_str());
        let list = shard.entry(Key(bare)).or_default();
        if let Some(pos) = list.iter().position(|r| r.handle.jid == jid) {
            let old = list.remove(pos);
            old.handle
                .close(StreamError::new("conflict").with_text("replaced by a new connection"));
        }
        list.push(Resource {
            handle: handle.clone(),
            available: false,
            priority: 0,
            presence: None,
            interested: false,
            carbons: false,
            directed: Vec::new(),
        });
        (
            handle,
            SessionChannels {
                rx: OutboundRx(rx),
                control: ControlRx(control),
            },
        )
    }

    /// Removes a session (only if it is still the one registered under its JID).
    pub fn unbind(&self, handle: &SessionHandle) -> Option<Resource> {
        let bare = handle.jid.bare_str();
        let mut shard = self.shard(bare);
        let list = shard.get_mut(bare)?;
        let pos = list.iter().position(|r| r.handle.id == handle.id)?;
        let removed = list.remove(pos);
        if list.is_empty() {
            shard.remove(bare);
        }
        Some(removed)
    }

    /// Records a presence change; returns whether the resource was available before.
    pub fn set_presence(&self, handle: &SessionHandle, presence: Option<&Element>) -> bool {
        let bare = handle.jid.bare_str();
        let mut shard = self.shard(bare);
        let Some(res) = shard
            .get_mut(bare)
            .and_then(|l| l.iter_mut().find(|r| r.handle.id == handle.id))
        else {
            return false;
        };
        let was = res.available;
        match presence {
            Some(p) => {
                res.available = true;
                res.priority = p
                    .child_text("priority", crate::ns::CLIENT)
                    .and_then(|t| t.trim().parse::<i8>().ok())
                    .unwrap_or(0);
                res.presence = Some(p.clone());
            }
            None => {
                res.available = false;
                res.presence = None;
            }
        }
        was
    }

    /// Changes one resource in place; returns what `f` returned, or `None` if the
    /// resource is not bound.
    pub fn update<T>(&self, full: &FullJid, f: impl FnOnce(&mut Resource) -> T) -> Option<T> {
        let bare = full.bare_str();
        let mut shard = self.shard(bare);
        shard
            .get_mut(bare)
            .and_then(|l| l.iter_mut().find(|r| &r.handle.jid == full))
            .map(f)
    }

    pub fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        self.shard(bare.as_str())
            .get(bare.as_str())
            .cloned()
            .unwrap_or_default()
    }

    pub fn get(&self, full: &FullJid) -> Option<Resource> {
        let bare = full.bare_str();
        self.shard(bare)
            .get(bare)
            .and_then(|l| l.iter().find(|r| &r.handle.jid == full).cloned())
    }

    /// The queue handle of one resource, without copying the rest of its record (the
    /// per-message path needs nothing else).
    pub fn handle(&self, full: &FullJid) -> Option<SessionHandle> {
        self.delivery_handle(full).map(|(h, _)| h)
    }

    /// The queue handle of one resource, and whether another resource of the same
    /// account asked for carbon copies (XEP-0280): the router copies a delivered message
    /// for the delivery hooks only then. One shard lookup, no allocation.
    pub fn delivery_handle(&self, full: &FullJid) -> Option<(SessionHandle, bool)> {
        let bare = full.bare_str();
        let shard = self.shard(bare);
        let list = shard.get(bare)?;
        let handle = list.iter().find(|r| &r.handle.jid == full)?.handle.clone();
        let copies = list.iter().any(|r| r.carbons && r.handle.id != handle.id);
        Some((handle, copies))
    }

    /// The handles of an account's resources that satisfy `pred`; cheaper than
    /// [`resources`](Self::resources) when few match, as nothing else is copied.
    pub fn handles_where(
        &self,
        bare: &str,
        pred: impl Fn(&Resource) -> bool,
    ) -> Vec<SessionHandle> {
        match self.shard(bare).get(bare) {
            Some(list) => list
                .iter()
                .filter(|r| pred(r))
                .map(|r| r.handle.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn is_online(&self, bare: &BareJid) -> bool {
        self.shard(bare.as_str()).contains_key(bare.as_str())
    }

    /// Every online session (administration, shutdown).
    pub fn all(&self) -> Vec<SessionHandle> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for list in shard.values() {
                out.extend(list.iter().map(|r| r.handle.clone()));
            }
        }
        out
    }

    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Closes every session of one account (password change, deletion, disabling).
    pub fn close_account(&self, bare: &BareJid, err: StreamError) -> usize {
        let list = self.resources(bare);
        for r in &list {
            r.handle.close(err.clone());
        }
        list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replaces_same_resource_with_conflict() {
        let s = Sessions::new(16);
        let jid = FullJid::new("a@x/r").unwrap();
        let (h1, mut c1) = s.bind(jid.clone());
        let (h2, _c2) = s.bind(jid.clone());
        assert_ne!(h1.id, h2.id);
        match c1.control.try_recv() {
            Ok(Control::Close(e)) => assert_eq!(e.condition, "conflict"),
            other => panic!("expected conflict, got {other:?}"),
        }
        assert_eq!(s.count(), 1);
        // The old session's cleanup must not remove the new one.
        assert!(s.unbind(&h1).is_none());
        assert!(s.get(&jid).is_some());
        assert!(s.unbind(&h2).is_some());
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn shared_stanza_reaches_each_session_addressed_to_it() {
        let s = Sessions::new(16);
        let a = FullJid::new("a@x/r").unwrap();
        let b = FullJid::new("b@x/it's<&>").unwrap();
        let (ha, mut ca) = s.bind(a.clone());
        let (hb, mut cb) = s.bind(b.clone());
        let msg = crate::xml::reader::parse_element(
            b"<message xmlns='jabber:client' from='room@muc.x/n' to='stale@x' type='groupchat' \
              id='m1'><body>a &amp; b &lt;c&gt;</body><x xmlns='urn:example'/></message>",
        )
        .unwrap();
        let shared = SharedStanza::new(msg.clone());
        assert_eq!(shared.element().attr("to"), None);
        ha.send_shared(&shared).unwrap();
        hb.send_shared(&shared).unwrap();
        for (rx, jid) in [(&mut ca, &a), (&mut cb, &b)] {
            let out = rx.rx.try_recv().unwrap();
            let Outbound::Shared(got) = out else {
                panic!("expected the shared stanza")
            };
            // The spliced bytes say exactly what a copy of its own would.
            let mut bytes = Vec::new();
            got.write_client(&mut bytes, jid.as_str());
            let reparsed = crate::xml::reader::parse_element(
                format!(
                    "<w xmlns='jabber:client'>{}</w>",
                    String::from_utf8(bytes).unwrap()
                )
                .as_bytes(),
            )
            .unwrap();
            let child = reparsed.children().next().unwrap().clone();
            let mut expected = msg.clone();
            expected.remove_attr("to");
            expected.set_attr("to", jid.as_str());
            let attrs = |e: &Element| {
                let mut v: Vec<(String, String)> = e
                    .attrs()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(child.attr("to"), Some(jid.as_str()));
            assert_eq!(child.attr("from"), Some("room@muc.x/n"));
            assert_eq!(
                child.child_text("body", crate::ns::CLIENT).as_deref(),
                Some("a & b <c>")
            );
            assert_eq!(attrs(&child), attrs(&expected));
            assert_eq!(child.nodes(), expected.nodes());
            assert_eq!(Outbound::Shared(got).into_element(jid), expected);
        }
        // A session that is gone hands back a copy of its own, addressed to it.
        drop(cb);
        match hb.send_shared(&shared) {
            Err(SendError::Gone(el)) => assert_eq!(el.attr("to"), Some(b.as_str())),
            other => panic!("expected Gone, got {other:?}"),
        }
    }

    #[test]
    fn full_queue_closes_the_stalled_session() {
        let s = Sessions::new(16);
        let (h, mut c) = s.bind(FullJid::new("a@x/r").unwrap());
        let el = Element::new("message", crate::ns::CLIENT);
        for _ in 0..16 {
            h.send(el.clone()).unwrap();
        }
        assert!(matches!(h.send(el), Err(SendError::Full(_))));
        assert!(matches!(c.control.try_recv(), Ok(Control::Close(_))));
    }
}
