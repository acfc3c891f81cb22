//! XEP-0352 client state indication: while a client says it is inactive (a phone in a
//! pocket), what can wait is held back so the radio stays asleep.
//!
//! What waits: presence updates (available/unavailable, not subscriptions or errors) and
//! messages that carry nothing but a chat state. Both are coalesced per sender — only the
//! latest presence or chat state of each sender matters once the client looks again —
//! so the buffer is bounded by the number of senders, and past `csi.max_held` it is
//! simply flushed. Everything else is urgent: before it goes out, the held stanzas go
//! first, so the client still sees each sender's stanzas in the order they were sent.
//! On `<active/>` (and when the session is resumed) everything held is sent.

use crate::ns;
use crate::xml::Element;

#[derive(Default)]
pub struct Csi {
    pub inactive: bool,
    /// (sender key, stanza), oldest first.
    held: Vec<(String, Element)>,
}

/// Can this stanza wait while the client is inactive? Returns the coalescing key.
fn deferrable(el: &Element) -> Option<String> {
    let from = el.attr("from").unwrap_or("");
    match el.name() {
        "presence" => match el.attr("type") {
            None | Some("unavailable") => Some(format!("p {from}")),
            _ => None,
        },
        "message" => {
            let only_chat_state = el.children().all(|c| c.ns() == ns::CHATSTATES)
                && el.children().next().is_some()
                && el.attr("type") != Some("error");
            only_chat_state.then(|| format!("c {from}"))
        }
        _ => None,
    }
}

impl Csi {
    /// Offers an outbound stanza. `None`: it was held. `Some(list)`: write these, in order
    /// (the held ones first when an urgent stanza releases them).
    pub fn offer(&mut self, el: Element, max_held: usize) -> Option<Vec<Element>> {
        if !self.inactive {
            return Some(vec![el]);
        }
        match deferrable(&el) {
            Some(key) => {
                // Only the newest stanza of a sender's kind matters.
                self.held.retain(|(k, _)| k != &key);
                self.held.push((key, el));
                if self.held.len() >= max_held {
                    return Some(self.release());
                }
                None
            }
            None => {
                let mut out = self.release();
                out.push(el);
                Some(out)
            }
        }
    }

    /// Everything held, oldest first.
    pub fn release(&mut self) -> Vec<Element> {
        self.held.drain(..).map(|(_, el)| el).collect()
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, show: &str) -> Element {
        Element::new("presence", ns::CLIENT)
            .with_attr("from", from)
            .with_child(Element::new("show", ns::CLIENT).with_text(show))
    }

    #[test]
    fn coalesces_per_sender_and_keeps_order_for_urgent() {
        let mut c = Csi {
            inactive: true,
            ..Csi::default()
        };
        assert!(c.offer(presence("a@x/1", "away"), 10).is_none());
        assert!(c.offer(presence("b@x/1", "away"), 10).is_none());
        assert!(c.offer(presence("a@x/1", "dnd"), 10).is_none());
        let typing = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x/1")
            .with_child(Element::new("composing", ns::CHATSTATES));
        assert!(c.offer(typing, 10).is_none());
        assert_eq!(c.held(), 3);
        let body = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x/1")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        let out = c.offer(body, 10).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].attr("from"), Some("b@x/1"));
        assert_eq!(
            out[1].child_text("show", ns::CLIENT).as_deref(),
            Some("dnd")
        );
        assert_eq!(out[2].name(), "message");
        assert!(out[3].has_child("body", ns::CLIENT));
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn bounded() {
        let mut c = Csi {
            inactive: true,
            ..Csi::default()
        };
        for i in 0..2 {
            assert!(c.offer(presence(&format!("u{i}@x/r"), "away"), 3).is_none());
        }
        assert_eq!(c.offer(presence("u9@x/r", "away"), 3).unwrap().len(), 3);
    }
}
