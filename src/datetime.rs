//! XEP-0082 date-times (delay stamps, MUC history `since`, entity time), on the `time`
//! crate rather than hand-written calendar arithmetic.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix seconds as a XEP-0082 DateTime in UTC, e.g. `2024-05-01T12:00:00Z`.
pub fn format(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Whole seconds only: XEP-0082 makes fractions optional and clients parse both.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Parses a XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`) into Unix seconds;
/// `None` for anything else or for instants before 1970.
pub fn parse(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        assert_eq!(format(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14T22:13:20.123Z"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-15T00:13:20+02:00"), Some(1_700_000_000));
        assert_eq!(parse("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("2023-13-01T00:00:00Z"), None);
    }
}
