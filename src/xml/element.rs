//! A small, owned XML element tree for stanzas.
//!
//! Names are stored resolved: every element carries its namespace URI, never a prefix.
//! Attributes keep their plain name (`to`, `type`); `xml:lang` keeps that spelling, and
//! any other namespaced attribute is stored as `{uri}local`.

use std::borrow::Cow;
use std::fmt;

/// An element's name or namespace. The handful that nearly every stanza carries are
/// static strings, so building, cloning (a MUC room copies each message once per
/// occupant) and dropping an element does not allocate or free them.
pub type Text = Cow<'static, str>;

/// The static copy of a common name, namespace or attribute name.
fn common(s: &str) -> Option<&'static str> {
    Some(match s {
        "to" => "to",
        "from" => "from",
        "id" => "id",
        "type" => "type",
        "xml:lang" => "xml:lang",
        "jabber:client" => "jabber:client",
        "jabber:server" => "jabber:server",
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        "body" => "body",
        "thread" => "thread",
        "subject" => "subject",
        "show" => "show",
        "status" => "status",
        "priority" => "priority",
        "x" => "x",
        "query" => "query",
        "error" => "error",
        "occupant-id" => "occupant-id",
        "urn:xmpp:occupant-id:0" => "urn:xmpp:occupant-id:0",
        "stanza-id" => "stanza-id",
        "urn:xmpp:sid:0" => "urn:xmpp:sid:0",
        "delay" => "delay",
        "urn:xmpp:delay" => "urn:xmpp:delay",
        "active" => "active",
        "http://jabber.org/protocol/chatstates" => "http://jabber.org/protocol/chatstates",
        _ => return None,
    })
}

/// A name or namespace for an element: what [`Element::new`] and [`Element::set_ns`]
/// take (`&str`, `String`, `&String`, or an already made [`Text`]).
pub trait IntoText {
    fn into_text(self) -> Text;
}

impl IntoText for &str {
    fn into_text(self) -> Text {
        match common(self) {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(self.to_owned()),
        }
    }
}

impl IntoText for &String {
    fn into_text(self) -> Text {
        self.as_str().into_text()
    }
}

impl IntoText for String {
    fn into_text(self) -> Text {
        match common(&self) {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(self),
        }
    }
}

impl IntoText for Text {
    fn into_text(self) -> Text {
        match self {
            Cow::Borrowed(_) => self,
            Cow::Owned(s) => s.into_text(),
        }
    }
}

/// One child of an element: another element or character data (already unescaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    name: Text,
    ns: Text,
    /// Names are [`Text`] too: `to`, `from`, `id` and `type` are on nearly every stanza.
    attrs: Vec<(Text, String)>,
    children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl IntoText, ns: impl IntoText) -> Self {
        Element {
            name: name.into_text(),
            ns: ns.into_text(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Assembles an element from already validated parts (distinct attribute names),
    /// sparing the parser the per-attribute duplicate scan of `set_attr`.
    pub(crate) fn from_parts(name: Text, ns: Text, attrs: Vec<(Text, String)>) -> Self {
        Element {
            name,
            ns,
            attrs,
            children: Vec::new(),
        }
    }

    /// Builder: set an attribute.
    pub fn with_attr(mut self, name: impl IntoText, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: append a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append character data.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn set_ns(&mut self, ns: impl IntoText) {
        self.ns = ns.into_text();
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    pub fn set_attr(&mut self, name: impl IntoText, value: impl Into<String>) {
        let name = name.into_text();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.children
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn push_text(&mut self, text: impl Into<String>) {
        self.children.push(Node::Text(text.into()));
    }

    /// Child elements, in document order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child with this name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|e| e.is(name, ns))
    }

    /// First child element of any name, in the given namespace.
    pub fn child_ns(&self, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.ns == ns)
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.child(name, ns).is_some()
    }

    /// Removes every child element matching `pred`; returns how many went.
    pub fn remove_children(&mut self, mut pred: impl FnMut(&Element) -> bool) -> usize {
        let before = self.children.len();
        self.children.retain(|n| match n {
            Node::Element(e) => !pred(e),
            Node::Text(_) => true,
        });
        before - self.children.len()
    }

    /// Concatenated character data of the direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Text of the first child with this name and namespace.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.child(name, ns).map(|c| c.text())
    }

    /// Serialises the element. `parent_ns` is the default namespace in scope where the
    /// element is written (for a stanza: the stream's `jabber:client`), so that stanzas
    /// are written without a redundant `xmlns`.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns != parent_ns {
            out.extend_from_slice(b" xmlns=\"");
            escape_into(out, &self.ns, true);
            out.push(b'"');
        }
        let mut extra = 0usize;
        for (k, v) in &self.attrs {
            out.push(b' ');
            if let Some(rest) = k.strip_prefix('{') {
                // `{uri}local`: give it a throwaway prefix declared on this element.
                let (uri, local) = rest.split_once('}').unwrap_or(("", rest));
                extra += 1;
                let prefix = format!("a{extra}");
                out.extend_from_slice(format!("xmlns:{prefix}=\"").as_bytes());
                escape_into(out, uri, true);
                out.extend_from_slice(format!("\" {prefix}:{local}").as_bytes());
            } else {
                out.extend_from_slice(k.as_bytes());
            }
            out.extend_from_slice(b"=\"");
            escape_into(out, v, true);
            out.push(b'"');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for n in &self.children {
            match n {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t, false),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serialises with no namespace assumed in scope (always writes `xmlns`).
    pub fn to_bytes(&self, parent_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        out
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes("")))
    }
}

/// Escapes XML character data (or an attribute value, which also escapes quotes).
pub fn escape_into(out: &mut Vec<u8>, s: &str, attr: bool) {
    // Runs of bytes that need no escaping (nearly all of them) are copied whole.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'"' if attr => b"&quot;",
            b'\'' if attr => b"&apos;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(replacement);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

pub fn escape(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len());
    escape_into(&mut v, s, true);
    // Only ASCII bytes were replaced by ASCII sequences, so this is still UTF-8.
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_namespaces_only_when_they_change() {
        let e = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_child(Element::new("body", "jabber:client").with_text("1 < 2 & \"x\""))
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        let s = String::from_utf8(e.to_bytes("jabber:client")).unwrap();
        assert_eq!(
            s,
            "<message to=\"a@b\"><body>1 &lt; 2 &amp; \"x\"</body><ping xmlns=\"urn:xmpp:ping\"/></message>"
        );
    }

    #[test]
    fn attribute_access() {
        let mut e = Element::new("iq", "jabber:client").with_attr("type", "get");
        assert_eq!(e.attr("type"), Some("get"));
        e.set_attr("type", "result");
        assert_eq!(e.attr("type"), Some("result"));
        assert_eq!(e.remove_attr("type").as_deref(), Some("result"));
        assert_eq!(e.attr("type"), None);
    }
}
