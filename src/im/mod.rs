//! Instant messaging per RFC 6121: rosters, the subscription state machine, presence
//! broadcast and probes, and offline storage (XEP-0160). Everything plugs into the core
//! through registry hooks; the delivery rules themselves stay in `router.rs`.

pub mod offline;
pub mod presence;
pub mod roster;
pub mod subscription;

use crate::module::Registry;
use crate::ns;
use crate::xml::Element;
use crate::Config;

pub fn register(reg: &mut Registry, _config: &Config) {
    reg.spec("RFC 6121", "core", "XMPP Instant Messaging and Presence");
    roster::register(reg);
    presence::register(reg);
    offline::register(reg);
    reg.on_account_removed(|store, bare| {
        let user = bare.as_str();
        let results = [
            store.remove_roster(user),
            store.remove_offline(user),
            store.remove_vcard(user),
            store.remove_private(user),
            store.remove_blocklist(user),
            store.remove_last_presence(user),
        ];
        for r in results {
            if let Err(e) = r {
                tracing::error!(account = %bare, "removing the account's IM data failed: {e}");
            }
        }
    });
}

/// A presence stanza with the given type (None: available).
pub(crate) fn presence(ty: Option<&str>, from: &str, to: &str) -> Element {
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(ty) = ty {
        p.set_attr("type", ty);
    }
    p
}
