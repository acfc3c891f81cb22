//! Stanza helpers: kinds, stanza errors (RFC 6120 §8.3) and stream errors (§4.9).

use crate::ns;
use crate::xml::Element;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    /// The stanza kind of a top-level element in the stream's content namespace.
    pub fn of(el: &Element) -> Option<Kind> {
        if el.ns() != ns::CLIENT && el.ns() != ns::SERVER {
            return None;
        }
        match el.name() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// A stanza error: the reply goes back to the sender and the stream goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub kind: ErrorType,
    pub condition: &'static str,
    pub text: Option<String>,
    /// An application-specific condition element, if any.
    pub app: Option<Box<Element>>,
}

macro_rules! conditions {
    ($($fn_name:ident => $cond:literal, $kind:ident;)*) => {
        impl StanzaError {
            $(
                pub fn $fn_name() -> StanzaError {
                    StanzaError { kind: ErrorType::$kind, condition: $cond, text: None, app: None }
                }
            )*
        }
    };
}

// The default error type for each condition follows RFC 6120 §8.3.3's examples.
conditions! {
    bad_request => "bad-request", Modify;
    conflict => "conflict", Cancel;
    feature_not_implemented => "feature-not-implemented", Cancel;
    forbidden => "forbidden", Auth;
    item_not_found => "item-not-found", Cancel;
    internal_server_error => "internal-server-error", Cancel;
    jid_malformed => "jid-malformed", Modify;
    not_acceptable => "not-acceptable", Modify;
    not_allowed => "not-allowed", Cancel;
    not_authorized => "not-authorized", Auth;
    policy_violation => "policy-violation", Modify;
    recipient_unavailable => "recipient-unavailable", Wait;
    registration_required => "registration-required", Auth;
    remote_server_not_found => "remote-server-not-found", Cancel;
    remote_server_timeout => "remote-server-timeout", Wait;
    resource_constraint => "resource-constraint", Wait;
    service_unavailable => "service-unavailable", Cancel;
    subscription_required => "subscription-required", Auth;
    undefined_condition => "undefined-condition", Cancel;
    unexpected_request => "unexpected-request", Wait;
}

impl StanzaError {
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_type(mut self, kind: ErrorType) -> Self {
        self.kind = kind;
        self
    }

    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", ns::CLIENT).with_attr("type", self.kind.as_str());
        e.push(Element::new(self.condition, ns::STANZAS));
        if let Some(text) = &self.text {
            e.push(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(text.clone()),
            );
        }
        if let Some(app) = &self.app {
            e.push(app.as_ref().clone());
        }
        e
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.condition)?;
        if let Some(t) = &self.text {
            write!(f, " ({t})")?;
        }
        Ok(())
    }
}

/// Largest original payload copied into an error reply, in serialised bytes.
const MAX_ECHOED_PAYLOAD: usize = 2048;

/// The error reply to `stanza`, addressed back to its sender; `None` when `stanza` is
/// itself an error (RFC 6120 §8.3.1: errors are never answered with errors).
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name(), stanza.ns()).with_attr("type", "error");
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    // Keeping a small original payload lets the sender see what failed; IQ payloads and
    // large ones are left out (the id is enough), so a bounce never costs more than the
    // stanza that caused it and a flood of big messages is not reflected back in full.
    if stanza.name() != "iq" {
        let mut size = 0;
        let mut echoed = Vec::new();
        for child in stanza.children() {
            let mut bytes = Vec::new();
            child.write_to(&mut bytes, stanza.ns());
            size += bytes.len();
            if size > MAX_ECHOED_PAYLOAD {
                echoed.clear();
                break;
            }
            echoed.push(child.clone());
        }
        for child in echoed {
            reply.push(child);
        }
    }
    reply.push(err.to_element());
    Some(reply)
}

/// A `type='result'` reply to an IQ.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", iq.ns()).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(p) = payload {
        reply.push(p);
    }
    reply
}

/// A stream error (RFC 6120 §4.9): sent as `<stream:error>`, then the stream closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub condition: &'static str,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: &'static str) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The `<stream:error>` element (in the streams namespace).
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", ns::STREAM);
        e.push(Element::new(self.condition, ns::STREAMS));
        if let Some(t) = &self.text {
            e.push(
                Element::new("text", ns::STREAMS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        e
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.condition)?;
        if let Some(t) = &self.text {
            write!(f, " ({t})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_errors() {
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x/r")
            .with_attr("to", "b@x")
            .with_attr("id", "1");
        let reply = error_reply(&msg, &StanzaError::service_unavailable()).unwrap();
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("from"), Some("b@x"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.child("error", ns::CLIENT).unwrap();
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.has_child("service-unavailable", ns::STANZAS));
        assert!(error_reply(&reply, &StanzaError::bad_request()).is_none());
    }
}
