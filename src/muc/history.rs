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
            since: el.attr("since").and_then(crate::datetime::parse),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

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
