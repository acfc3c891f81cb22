//! Private XML storage (XEP-0049): one fragment per (user, namespace, element name).

use super::roster::remove_prefix;
use super::{user_key, user_prefix, Store, StoreError};

fn key(user: &str, ns: &str, name: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(ns.len() + 1 + name.len());
    rest.extend_from_slice(ns.as_bytes());
    rest.push(0);
    rest.extend_from_slice(name.as_bytes());
    user_key(user, &rest)
}

impl Store {
    pub fn private(&self, user: &str, ns: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .im
            .private
            .get(key(user, ns, name))?
            .map(|v| v.to_vec()))
    }

    pub fn set_private(
        &self,
        user: &str,
        ns: &str,
        name: &str,
        xml: &[u8],
    ) -> Result<(), StoreError> {
        self.im.private.insert(key(user, ns, name), xml)?;
        self.im.private.flush()?;
        Ok(())
    }

    /// Total bytes a user stores privately (for the per-user quota).
    pub fn private_bytes(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for v in self.im.private.scan_prefix(user_prefix(user)).values() {
            n += v?.len();
        }
        Ok(n)
    }

    pub fn remove_private(&self, user: &str) -> Result<(), StoreError> {
        remove_prefix(&self.im.private, &user_prefix(user))
    }
}
