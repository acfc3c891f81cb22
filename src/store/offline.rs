//! Offline messages (XEP-0160): stored durably, in arrival order, per user.

use super::roster::remove_prefix;
use super::{user_key, user_prefix, Store, StoreError};

/// One stored message: its key (for removal once delivered) and serialised stanza.
#[derive(Clone, Debug)]
pub struct OfflineMessage {
    pub id: u64,
    pub xml: Vec<u8>,
}

impl Store {
    /// Stores a message if the user has fewer than `quota` waiting; returns whether it
    /// was stored. The write is flushed before returning: a stored message survives a
    /// crash.
    pub fn offline_push(&self, user: &str, xml: &[u8], quota: usize) -> Result<bool, StoreError> {
        let stripe = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(user);
            (h % self.offline_locks.len() as u64) as usize
        };
        // A poisoned stripe only means another pusher panicked; the data is in sled.
        let guard = self.offline_locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.offline_count(user)? >= quota {
            return Ok(false);
        }
        // sled's ids grow monotonically across restarts; big-endian keeps them sorted.
        let id = self.db.generate_id()?;
        self.im
            .offline
            .insert(user_key(user, &id.to_be_bytes()), xml)?;
        // The insert is visible to the next counter at once; only the disk write waits.
        drop(guard);
        self.im.offline.flush()?;
        Ok(true)
    }

    pub fn offline_count(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for k in self.im.offline.scan_prefix(user_prefix(user)).keys() {
            k?;
            n += 1;
        }
        Ok(n)
    }

    /// Every waiting message, oldest first.
    pub fn offline_messages(&self, user: &str) -> Result<Vec<OfflineMessage>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for kv in self.im.offline.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let id = k[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    tree: "offline",
                    detail: "bad key".into(),
                })?;
            out.push(OfflineMessage {
                id,
                xml: v.to_vec(),
            });
        }
        Ok(out)
    }

    pub fn offline_remove(&self, user: &str, ids: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(user_key(user, &id.to_be_bytes()));
        }
        self.im.offline.apply_batch(batch)?;
        self.im.offline.flush()?;
        Ok(())
    }

    pub fn remove_offline(&self, user: &str) -> Result<(), StoreError> {
        remove_prefix(&self.im.offline, &user_prefix(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_quota() {
        let s = Store::temporary().unwrap();
        for i in 0..3 {
            assert!(s
                .offline_push("a@x", format!("m{i}").as_bytes(), 3)
                .unwrap());
        }
        assert!(!s.offline_push("a@x", b"m3", 3).unwrap());
        assert!(s.offline_push("a@xy", b"other", 3).unwrap());
        let msgs = s.offline_messages("a@x").unwrap();
        let texts: Vec<&[u8]> = msgs.iter().map(|m| m.xml.as_slice()).collect();
        assert_eq!(texts, vec![b"m0".as_slice(), b"m1", b"m2"]);
        s.offline_remove("a@x", &[msgs[0].id, msgs[1].id]).unwrap();
        assert_eq!(s.offline_count("a@x").unwrap(), 1);
        s.remove_offline("a@x").unwrap();
        assert_eq!(s.offline_count("a@x").unwrap(), 0);
        assert_eq!(s.offline_count("a@xy").unwrap(), 1);
    }

    /// Many senders racing at the quota's edge: exactly `quota` messages are stored.
    #[test]
    fn quota_holds_under_concurrent_senders() {
        const QUOTA: usize = 300;
        let s = Store::temporary().unwrap();
        let stored = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (s, stored) = (&s, &stored);
                scope.spawn(move || {
                    for i in 0..60 {
                        let body = format!("t{t} m{i}");
                        if s.offline_push("full@x", body.as_bytes(), QUOTA).unwrap() {
                            stored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(stored.into_inner(), QUOTA);
        assert_eq!(s.offline_count("full@x").unwrap(), QUOTA);
    }
}
