//! Server-to-server streams (RFC 6120): the outgoing pool, incoming streams, dialback
//! (XEP-0220 with XEP-0185 keys), SASL EXTERNAL (XEP-0178), and SRV discovery
//! (RFC 6120 §3.2, XEP-0368).
//!
//! Outgoing streams are pooled per (local domain, remote domain): the first stanza for a
//! pair spawns a task that resolves, connects, secures and authenticates the stream
//! while later stanzas wait in its bounded queue, in order. If that fails, every queued
//! stanza is bounced to its sender and the pair is put in a growing back-off during
//! which new stanzas are bounced at once instead of hammering an unreachable peer.
//! Incoming streams are one task each; every stanza on them must come from a domain
//! the stream has authenticated.

mod conn;
pub mod incoming;
mod outgoing;
mod resolve;

pub use conn::{to_client_ns, to_server_ns};

/// Whether a `[s2s.routes]` value can be used ("host:port" or "tls://host:port").
pub fn route_is_valid(route: &str) -> bool {
    resolve::parse_route(route).is_some()
}

use crate::module::Registry;
use crate::router;
use crate::stanza::StanzaError;
use crate::xml::Element;
use crate::ServerState;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// (local domain, remote domain).
pub type Pair = (String, String);

const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(120);

struct OutEntry {
    id: u64,
    tx: mpsc::Sender<Element>,
}

struct Backoff {
    until: Instant,
    delay: Duration,
}

/// What outgoing tasks need from the running server, set once it has started.
struct Runtime {
    state: Weak<ServerState>,
    shutdown: watch::Receiver<bool>,
}

pub struct S2s {
    pool: Mutex<HashMap<Pair, OutEntry>>,
    backoff: Mutex<HashMap<Pair, Backoff>>,
    /// XEP-0185 secret, already hashed: HMAC key for dialback keys.
    dialback_secret: String,
    next_id: AtomicU64,
    runtime: OnceLock<Runtime>,
    /// Held by every outgoing task so that shutdown waits for them; taken at shutdown.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    resolver: tokio::sync::OnceCell<Option<hickory_resolver::TokioResolver>>,
}

impl Default for S2s {
    fn default() -> Self {
        Self::new()
    }
}

impl S2s {
    pub fn new() -> S2s {
        use rand::RngCore;
        // A fresh secret per start: keys only have to outlive one dialback exchange,
        // and a secret that never touches disk cannot leak from it.
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        S2s {
            pool: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            dialback_secret: hex(&Sha256::digest(secret)),
            next_id: AtomicU64::new(1),
            runtime: OnceLock::new(),
            alive: Mutex::new(None),
            resolver: tokio::sync::OnceCell::new(),
        }
    }

    /// Called by `Server::start` once the shared state exists.
    pub(crate) fn attach(
        &self,
        state: &Arc<ServerState>,
        shutdown: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
    ) {
        let _ = self.runtime.set(Runtime {
            state: Arc::downgrade(state),
            shutdown,
        });
        *self.alive.lock().unwrap_or_else(|p| p.into_inner()) = Some(alive);
    }

    /// Stops new outgoing tasks from holding up shutdown.
    pub(crate) fn detach(&self) {
        self.alive.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// XEP-0185: HMAC-SHA256 over "receiving originating stream-id", keyed with the
    /// hex SHA-256 of our secret, as lowercase hex.
    pub fn dialback_key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.dialback_secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{receiving} {originating} {stream_id}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Checks a key in constant time.
    pub fn dialback_key_valid(
        &self,
        receiving: &str,
        originating: &str,
        stream_id: &str,
        key: &str,
    ) -> bool {
        let expected = self.dialback_key(receiving, originating, stream_id);
        let key = key.trim();
        expected.len() == key.len()
            && expected
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Outgoing streams currently pooled (for administration and tests).
    pub fn outgoing_pairs(&self) -> Vec<Pair> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.keys().cloned().collect()
    }

    fn backoff_remaining(&self, pair: &Pair) -> Option<Duration> {
        let map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.get(pair)?;
        b.until.checked_duration_since(Instant::now())
    }

    fn note_failure(&self, pair: &Pair) {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let delay = map
            .get(pair)
            .map(|b| (b.delay * 2).min(BACKOFF_MAX))
            .unwrap_or(BACKOFF_FIRST);
        map.insert(
            pair.clone(),
            Backoff {
                until: Instant::now() + delay,
                delay,
            },
        );
    }

    fn note_success(&self, pair: &Pair) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pair);
    }

    /// Creates the pool entry and its task; `None` when the server is not running.
    fn spawn(
        &self,
        pool: &mut HashMap<Pair, OutEntry>,
        pair: &Pair,
    ) -> Option<mpsc::Sender<Element>> {
        let rt = self.runtime.get()?;
        let state = rt.state.upgrade()?;
        let alive = self
            .alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let (tx, rx) = mpsc::channel(state.config.limits.session_queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pool.insert(pair.clone(), OutEntry { id, tx: tx.clone() });
        tokio::spawn(outgoing::run(
            state,
            pair.clone(),
            id,
            rx,
            rt.shutdown.clone(),
            alive,
        ));
        Some(tx)
    }

    /// Removes a task's pool entry and hands whatever is still queued for it to a new
    /// stream, ahead of anything sent later (the pool lock is held throughout, so no
    /// other sender can slip in between and reorder).
    fn retire(&self, pair: &Pair, id: u64, rx: &mut mpsc::Receiver<Element>) -> Vec<Element> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.get(pair).is_some_and(|e| e.id == id) {
            pool.remove(pair);
        }
        rx.close();
        let mut left = Vec::new();
        while let Ok(s) = rx.try_recv() {
            left.push(s);
        }
        if left.is_empty() {
            return left;
        }
        let tx = match pool.get(pair) {
            Some(e) => Some(e.tx.clone()),
            None => self.spawn(&mut pool, pair),
        };
        let Some(tx) = tx else {
            return left;
        };
        let mut bounced = Vec::new();
        for s in left {
            if let Err(e) = tx.try_send(s) {
                bounced.push(e.into_inner());
            }
        }
        bounced
    }

    /// Removes the pool entry of a task that failed, and returns what was queued.
    fn fail(&self, pair: &Pair, id: u64, rx: &mut mpsc::Receiver<Element>) -> Vec<Element> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.get(pair).is_some_and(|e| e.id == id) {
            pool.remove(pair);
        }
        rx.close();
        let mut left = Vec::new();
        while let Ok(s) = rx.try_recv() {
            left.push(s);
        }
        left
    }
}

/// Hands a stanza for `remote` to the outgoing stream of (its sender's domain, remote),
/// creating the stream if needed. Never drops it: if it cannot be queued it is bounced.
pub fn send(server: &ServerState, remote: &str, stanza: Element) {
    let Some(local) = stanza
        .attr("from")
        .and_then(|f| jid::Jid::new(f).ok())
        .map(|j| j.domain().as_str().to_string())
    else {
        return router::bounce(server, &stanza, StanzaError::jid_malformed());
    };
    let pair: Pair = (local, remote.to_string());
    if let Some(left) = server.s2s.backoff_remaining(&pair) {
        return router::bounce(
            server,
            &stanza,
            StanzaError::remote_server_not_found().with_text(format!(
                "{remote} was unreachable; next attempt in {}s",
                left.as_secs().max(1)
            )),
        );
    }
    let mut stanza = stanza;
    // Two rounds: a task may retire between our lookup and our send.
    for _ in 0..2 {
        let (id, tx) = {
            let mut pool = server.s2s.pool.lock().unwrap_or_else(|p| p.into_inner());
            match pool.get(&pair) {
                Some(e) => (e.id, e.tx.clone()),
                None => match server.s2s.spawn(&mut pool, &pair) {
                    Some(tx) => (0, tx),
                    None => break,
                },
            }
        };
        match tx.try_send(stanza) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(s)) => {
                return router::bounce(
                    server,
                    &s,
                    StanzaError::remote_server_timeout()
                        .with_text(format!("too many stanzas waiting for {remote}")),
                );
            }
            Err(mpsc::error::TrySendError::Closed(s)) => {
                stanza = s;
                let mut pool = server.s2s.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.get(&pair).is_some_and(|e| e.id == id) {
                    pool.remove(&pair);
                }
            }
        }
    }
    router::bounce(
        server,
        &stanza,
        StanzaError::remote_server_not_found().with_text("server-to-server is not running"),
    );
}

/// Domains this server answers for on server streams.
pub fn is_local_domain(server: &ServerState, domain: &str) -> bool {
    domain == server.config.domain || server.registry.has_domain(domain)
}

pub fn register(reg: &mut Registry) {
    reg.spec("0220", "1.1.1", "Server Dialback");
    reg.spec("0185", "1.0", "Dialback Key Generation and Validation");
    reg.spec(
        "0178",
        "1.2",
        "Best Practices for Use of SASL EXTERNAL with Certificates",
    );
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_keys_depend_on_every_input_and_check_in_constant_time() {
        let s = S2s::new();
        let k = s.dialback_key("b.test", "a.test", "abc");
        assert_eq!(k.len(), 64);
        assert!(s.dialback_key_valid("b.test", "a.test", "abc", &k));
        assert!(!s.dialback_key_valid("b.test", "a.test", "abd", &k));
        assert!(!s.dialback_key_valid("c.test", "a.test", "abc", &k));
        assert!(!s.dialback_key_valid("b.test", "a.test", "abc", "00"));
        // Another server (another secret) never produces the same key.
        assert_ne!(S2s::new().dialback_key("b.test", "a.test", "abc"), k);
    }
}
