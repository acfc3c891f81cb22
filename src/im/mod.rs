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

/// XEP-0082 date-time in UTC for a Unix time, e.g. `2024-05-01T12:00:00Z`.
pub fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm,
/// which works in 400-year eras so leap years need no special cases).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
