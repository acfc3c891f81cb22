//! Room history kept in memory (bounded) and the §7.2.14 history request on join.

use crate::xml::Element;
use std::collections::VecDeque;

pub struct Entry {
    /// The message as reflected to occupants (from `room/nick`), without `to`.
    pub stanza: Element,
    /// Seconds since the Unix epoch, when the room accepted it.
    pub stamp: u64,
    /// Length of the serialised stanza, for `maxchars`.
    pub chars: usize,
}

#[derive(Default)]
pub struct History {
    entries: VecDeque<Entry>,
}

/// What a joining occupant asked for; every limit that is present applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub max_chars: Option<usize>,
    pub max_stanzas: Option<usize>,
    pub seconds: Option<u64>,
    pub since: Option<u64>,
}

impl Request {
    /// Reads `<history/>`; malformed attributes are ignored rather than refusing the join.
    pub fn parse(el: Option<&Element>) -> Request {
        let Some(el) = el else {
            return Request::default();
        };
        Request {
            max_chars: el.attr("maxchars").and_then(|v| v.trim().parse().ok()),
            max_stanzas: el.attr("maxstanzas").and_then(|v| v.trim().parse().ok()),
            seconds: el.attr("seconds").and_then(|v| v.trim().parse().ok()),
            since: el.attr("since").and_then(parse_datetime),
        }
    }
}

impl History {
    pub fn push(&mut self, stanza: Element, stamp: u64, limit: usize) {
        let chars = String::from_utf8_lossy(&stanza.to_bytes(crate::ns::CLIENT))
            .chars()
            .count();
        self.entries.push_back(Entry {
            stanza,
            stamp,
            chars,
        });
        self.trim(limit);
    }

    pub fn trim(&mut self, limit: usize) {
        while self.entries.len() > limit {
            self.entries.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest entries that satisfy every limit of `req`, oldest first.
    pub fn select(&self, req: &Request, now: u64) -> Vec<&Entry> {
        let mut out = Vec::new();
        let mut chars = 0usize;
        for e in self.entries.iter().rev() {
            if req.max_stanzas.is_some_and(|m| out.len() >= m) {
                break;
            }
            if req.seconds.is_some_and(|s| now.saturating_sub(e.stamp) > s) {
                break;
            }
            if req.since.is_some_and(|s| e.stamp < s) {
                break;
            }
            if let Some(max) = req.max_chars {
                if chars + e.chars > max {
                    break;
                }
                chars += e.chars;
            }
            out.push(e);
        }
        out.reverse();
        out
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// XEP-0082 DateTime in UTC, as used in delay stamps.
pub fn format_datetime(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses a XEP-0082 DateTime (`YYYY-MM-DDThh:mm:ss[.sss](Z|±hh:mm)`) into Unix seconds.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else {
        let pos = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let oh: i64 = oh.parse().ok()?;
        let om: i64 = om.parse().ok()?;
        (c, sign * (oh * 3600 + om * 60))
    };
    let clock = clock.split('.').next()?;
    let mut tp = clock.split(':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    if tp.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let t = days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss - offset;
    u64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

    #[test]
    fn datetimes() {
        assert_eq!(format_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_datetime(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_datetime("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_datetime("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_datetime("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_datetime("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-01-01T25:00:00Z",
            "2023-01-01",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    fn msg(n: usize) -> Element {
        Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text(format!("m{n}")))
    }

    #[test]
    fn selection_honours_every_limit() {
        let mut h = History::default();
        for i in 0..10 {
            h.push(msg(i), 1000 + i as u64 * 10, 5);
        }
        assert_eq!(h.len(), 5);
        let bodies = |v: Vec<&Entry>| -> Vec<String> {
            v.iter()
                .map(|e| e.stanza.child_text("body", ns::CLIENT).unwrap())
                .collect()
        };
        let all = Request::default();
        assert_eq!(bodies(h.select(&all, 2000)), ["m5", "m6", "m7", "m8", "m9"]);
        let two = Request {
            max_stanzas: Some(2),
            ..Request::default()
        };
        assert_eq!(bodies(h.select(&two, 2000)), ["m8", "m9"]);
        let none = Request {
            max_chars: Some(0),
            ..Request::default()
        };
        assert!(h.select(&none, 2000).is_empty());
        let one_char_budget = h.entries[0].chars;
        let chars = Request {
            max_chars: Some(one_char_budget),
            ..Request::default()
        };
        assert_eq!(bodies(h.select(&chars, 2000)), ["m9"]);
        let recent = Request {
            seconds: Some(15),
            ..Request::default()
        };
        assert_eq!(bodies(h.select(&recent, 1090 + 5)), ["m8", "m9"]);
        let since = Request {
            since: Some(1070),
            ..Request::default()
        };
        assert_eq!(bodies(h.select(&since, 2000)), ["m7", "m8", "m9"]);
    }
}
