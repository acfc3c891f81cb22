//! Persistent MUC rooms: configuration, affiliations and subject, keyed by the room's
//! bare JID. Only rooms configured as persistent are stored.

use super::sled_store::{decode, encode};
use super::{Store, StoreError};
use crate::muc::config::RoomConfig;
use crate::muc::perms::Affiliation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffiliationRecord {
    pub affiliation: Affiliation,
    /// A nickname reserved for this user in the room.
    #[serde(default)]
    pub nick: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub config: RoomConfig,
    /// Bare JID -> affiliation (users with affiliation `none` are not stored).
    pub affiliations: BTreeMap<String, AffiliationRecord>,
    /// (nick of whoever set it, text).
    #[serde(default)]
    pub subject: Option<(String, String)>,
    /// Per-room key for XEP-0421 occupant ids, so that they survive restarts.
    pub occupant_id_key: Vec<u8>,
    pub created: u64,
}

impl Store {
    pub fn save_room(&self, room: &str, record: &RoomRecord) -> Result<(), StoreError> {
        self.rooms.insert(room.as_bytes(), encode(record)?)?;
        self.rooms.flush()?;
        Ok(())
    }

    pub fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        self.rooms.remove(room.as_bytes())?;
        self.rooms.flush()?;
        Ok(())
    }

    pub fn room(&self, room: &str) -> Result<Option<RoomRecord>, StoreError> {
        match self.rooms.get(room.as_bytes())? {
            Some(v) => Ok(Some(decode("rooms", &v)?)),
            None => Ok(None),
        }
    }

    /// Every stored room. A record that does not decode is logged and skipped, so one
    /// bad record cannot keep the other rooms from coming back.
    pub fn load_rooms(&self) -> Result<Vec<(String, RoomRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.rooms.iter() {
            let (k, v) = item?;
            let Ok(jid) = String::from_utf8(k.to_vec()) else {
                tracing::error!("rooms: non-UTF-8 key skipped");
                continue;
            };
            match decode::<RoomRecord>("rooms", &v) {
                Ok(r) => out.push((jid, r)),
                Err(e) => tracing::error!(room = %jid, "stored room skipped: {e}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let record = RoomRecord {
            config: RoomConfig {
                persistent: true,
                name: "Lounge".into(),
                ..RoomConfig::default()
            },
            affiliations: [(
                "alice@localhost".to_string(),
                AffiliationRecord {
                    affiliation: Affiliation::Owner,
                    nick: None,
                    reason: None,
                },
            )]
            .into_iter()
            .collect(),
            subject: Some(("alice".into(), "Hello".into())),
            occupant_id_key: vec![1, 2, 3],
            created: 5,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .save_room("lounge@conference.localhost", &record)
                .unwrap();
            store
                .save_room("gone@conference.localhost", &record)
                .unwrap();
            store.delete_room("gone@conference.localhost").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let rooms = store.load_rooms().unwrap();
        assert_eq!(
            rooms,
            vec![("lounge@conference.localhost".to_string(), record)]
        );
    }
}
