//! Persistent state behind one narrow, typed API. Handlers never see sled trees or byte
//! keys, so a second backend (a shared SQL database for clusters) is a new file.

mod archive;
mod blocking;
mod offline;
mod private;
mod rooms;
mod roster;
mod settings;
mod sled_store;
mod vcard;

pub use archive::{
    id_from_str, id_to_string, micros_of, ArchivePage, ArchivePrefs, ArchiveQuery, ArchivedMessage,
};
pub use offline::OfflineMessage;
pub use rooms::{AffiliationRecord, RoomRecord};
pub use roster::{RosterChange, RosterItem, RosterMeta, RosterUpdate};
pub use settings::Motd;
pub use sled_store::Store;
pub use vcard::LastPresence;

/// The sled trees holding instant-messaging data.
#[derive(Clone)]
pub(crate) struct ImTrees {
    /// `user \0 contact` -> RosterItem; `user \0` -> RosterMeta.
    roster: sled::Tree,
    /// `user \0 big-endian id` -> serialised message, so a prefix scan yields arrival order.
    offline: sled::Tree,
    /// `user` -> vCard XML.
    vcard: sled::Tree,
    /// `user \0 namespace \0 name` -> private XML.
    private: sled::Tree,
    /// `user` -> blocked JIDs.
    blocking: sled::Tree,
    /// How many users have a (non-empty) blocklist. Every message is checked against
    /// two blocklists; while nobody blocks anyone, which is the usual state of a server,
    /// that needs no tree lookup.
    blocklists: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// `user` -> last unavailable presence and when it was sent.
    last_presence: sled::Tree,
}

impl ImTrees {
    fn open(db: &sled::Db) -> Result<ImTrees, StoreError> {
        let blocking = db.open_tree("blocking")?;
        Ok(ImTrees {
            roster: db.open_tree("roster")?,
            offline: db.open_tree("offline")?,
            vcard: db.open_tree("vcard")?,
            private: db.open_tree("private")?,
            blocklists: std::sync::Arc::new(blocking_count(&blocking)?.into()),
            blocking,
            last_presence: db.open_tree("last_presence")?,
        })
    }
}

/// Entries in the blocklist tree (only non-empty lists are stored).
fn blocking_count(blocking: &sled::Tree) -> Result<usize, StoreError> {
    let mut n = 0;
    for entry in blocking.iter().keys() {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// The message archive's trees (see archive.rs).
#[derive(Clone)]
pub(crate) struct ArchiveTrees {
    records: sled::Tree,
    with: sled::Tree,
    prefs: sled::Tree,
}

impl ArchiveTrees {
    fn open(db: &sled::Db) -> Result<ArchiveTrees, StoreError> {
        Ok(ArchiveTrees {
            records: db.open_tree("archive")?,
            with: db.open_tree("archive_with")?,
            prefs: db.open_tree("archive_prefs")?,
        })
    }
}

/// `user \0 rest`: every per-user key starts with the bare JID and a NUL, which no JID
/// contains, so one user's prefix never matches another's.
fn user_key(user: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1 + rest.len());
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn user_prefix(user: &str) -> Vec<u8> {
    user_key(user, &[])
}

use crate::sasl::Credentials;
use serde::{Deserialize, Serialize};

/// Bumped whenever the on-disk layout changes; `Store::open` refuses a newer one.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error(
        "the data directory holds schema version {found}, newer than this build's {supported}"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoSuchAccount,
    #[error("the database is in use by another process (is the server running?)")]
    Locked,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One account: SCRAM-derived credentials only, never the password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    pub credentials: Credentials,
    #[serde(default)]
    pub disabled: bool,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Where login and logout times were kept before the activity tree; still read as a
    /// fallback by `Store::activity`, no longer written.
    #[serde(default)]
    pub last_login: Option<u64>,
    #[serde(default)]
    pub last_logout: Option<u64>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
