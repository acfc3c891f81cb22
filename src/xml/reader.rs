//! Incremental XML stream reader for XMPP (RFC 6120 §4 and §11).
//!
//! The reader is a single-pass, resumable state machine: bytes are decoded as UTF-8 one
//! character at a time, tokenised, and the current top-level element is built directly
//! into an [`Element`] tree. Nothing is scanned twice, input may be split at any byte,
//! and every limit is checked at the byte or tag where it is crossed, so a peer can never
//! make us hold more than one stanza's worth of data.
//!
//! The XML subset accepted is the one RFC 6120 §11.1 allows. Error choices:
//!
//! * DOCTYPE and other markup declarations, comments, processing instructions (other
//!   than a leading XML declaration) and entity references other than the five
//!   predefined ones → [`XmlError::RestrictedXml`].
//! * Invalid UTF-8 sequences, characters outside the XML 1.0 `Char` production, bad
//!   names, `<` in attribute values, mismatched end tags, duplicate attributes and any
//!   other syntax error → [`XmlError::NotWellFormed`].
//! * A UTF-16 byte order mark (or a leading NUL byte) or an XML declaration naming an
//!   encoding other than UTF-8 → [`XmlError::UnsupportedEncoding`].
//! * Non-whitespace character data (including CDATA and references) directly inside the
//!   stream root → [`XmlError::BadFormat`]; before the root or after its end it is
//!   [`XmlError::NotWellFormed`], since the document itself is then broken.
//! * Unbound prefixes and illegal namespace declarations → [`XmlError::InvalidNamespace`].
//! * Size, depth and attribute-count limits → [`XmlError::PolicyViolation`].
//!
//! Attribute values are not whitespace-normalised (as with quick-xml), so a value read
//! back after [`Element::write_to`] is byte-for-byte what was parsed.

use std::mem;

use thiserror::Error;

use super::element::{Element, IntoText, Text};

/// Namespace of the stream root and of `<stream:features/>`, `<stream:error/>`.
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// A PI or XML declaration longer than this cannot be a sane XML declaration.
const MAX_DECL_CHARS: usize = 256;
/// Longest reference we bother to collect (`&#x0010FFFF;` fits comfortably).
const MAX_REF_CHARS: usize = 32;
/// Most namespace bindings in scope at once. Lookups scan the scope, and depth × attrs
/// alone would allow thousands of bindings and a quadratic amount of work per stanza;
/// real stanzas have a handful.
const MAX_SCOPE_BINDINGS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element (and stream header, with any XML declaration), in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest nesting inside a top-level element; the top-level element is depth 1.
    pub max_depth: usize,
    /// Most attributes (namespace declarations included) on one element.
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 100,
            max_attrs: 64,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// Local name of the root element, expected to be `stream`.
    pub name: String,
    /// Namespace of the root element, expected to be [`NS_STREAMS`].
    pub ns: String,
    /// Default namespace in scope on the root (`jabber:client`, `jabber:server`, or "").
    pub default_ns: String,
    /// Attributes other than namespace declarations, named as in [`Element`].
    pub attrs: Vec<(String, String)>,
    /// Every namespace declared on the root, `("", uri)` for the default one.
    pub namespaces: Vec<(String, String)>,
}

impl StreamHeader {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream header's start tag is complete.
    Open(StreamHeader),
    /// A complete top-level child of the stream root.
    Element(Element),
    /// The stream root was closed.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    #[error("bad format: {0}")]
    BadFormat(String),
    #[error("unsupported encoding: {0}")]
    UnsupportedEncoding(String),
}

impl XmlError {
    /// The RFC 6120 §4.9.3 stream error condition to send for this error.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::PolicyViolation(_) => "policy-violation",
            XmlError::InvalidNamespace(_) => "invalid-namespace",
            XmlError::BadFormat(_) => "bad-format",
            XmlError::UnsupportedEncoding(_) => "unsupported-encoding",
        }
    }
}

fn nwf(msg: impl Into<String>) -> XmlError {
    XmlError::NotWellFormed(msg.into())
}

fn restricted(msg: impl Into<String>) -> XmlError {
    XmlError::RestrictedXml(msg.into())
}

fn policy(msg: impl Into<String>) -> XmlError {
    XmlError::PolicyViolation(msg.into())
}

fn bad_ns(msg: impl Into<String>) -> XmlError {
    XmlError::InvalidNamespace(msg.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the root start tag is complete.
    Prolog,
    /// Inside the root element.
    Body,
    /// After the root element ended; only whitespace may follow.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefIn {
    Text,
    Attr(char),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    Text,
    /// Just after `<`.
    Lt,
    StartName,
    /// Inside a start tag, between attributes.
    InTag,
    AttrName,
    BeforeEq,
    BeforeQuote,
    AttrValue(char),
    /// Just after an attribute value's closing quote.
    AfterValue,
    /// After `/` in a start tag.
    EmptySlash,
    EndName,
    AfterEndName,
    /// Just after `<!`.
    Bang,
    /// Matched this many bytes of `CDATA[` after `<![`.
    CdataOpen(usize),
    /// Inside CDATA, with this many pending `]`.
    Cdata(u8),
    /// Inside `<?...`; the flag says the last character was `?`.
    Decl(bool),
    /// After `&`.
    Ref(RefIn),
}

/// Incremental UTF-8 decoder, so that a character split across reads is no special case.
#[derive(Clone, Copy, Debug, Default)]
struct Utf8 {
    cp: u32,
    need: u8,
    min: u32,
}

impl Utf8 {
    fn idle(&self) -> bool {
        self.need == 0
    }

    fn push(&mut self, b: u8) -> Result<Option<char>, XmlError> {
        let invalid = || nwf("invalid UTF-8");
        if self.need == 0 {
            let (cp, need, min) = match b {
                0x00..=0x7F => return Ok(Some(char::from(b))),
                0xC2..=0xDF => (u32::from(b & 0x1F), 1, 0x80),
                0xE0..=0xEF => (u32::from(b & 0x0F), 2, 0x800),
                0xF0..=0xF4 => (u32::from(b & 0x07), 3, 0x1_0000),
                _ => return Err(invalid()),
            };
            *self = Utf8 { cp, need, min };
            return Ok(None);
        }
        if b & 0xC0 != 0x80 {
            return Err(invalid());
        }
        self.cp = (self.cp << 6) | u32::from(b & 0x3F);
        self.need -= 1;
        if self.need > 0 {
            return Ok(None);
        }
        if self.cp < self.min {
            return Err(invalid());
        }
        // from_u32 refuses surrogates and anything past U+10FFFF.
        char::from_u32(self.cp).map(Some).ok_or_else(invalid)
    }
}

/// An element under construction.
#[derive(Debug)]
struct Frame {
    /// The qualified name as written, which the end tag must repeat exactly (a static
    /// string for the common names, so most elements cost no allocation for it).
    qname: Text,
    /// Length of the namespace scope before this element's declarations.
    scope_mark: usize,
    elem: Element,
}

#[derive(Debug)]
pub struct StreamReader {
    limits: Limits,
    /// Parse one standalone element instead of a stream (see [`parse_element`]).
    document: bool,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed; drained lazily on the next feed.
    pos: usize,
    failed: Option<XmlError>,
    overflow: bool,
    pending_close: bool,
    phase: Phase,
    lex: Lex,
    utf8: Utf8,
    at_start: bool,
    first_char: bool,
    decl_allowed: bool,
    /// Whether the bytes being read belong to a bounded unit (header or top-level element).
    counting: bool,
    unit_bytes: usize,
    /// Consecutive `]` just seen in character data, to catch `]]>`.
    brackets: u8,
    /// Scratch for the name being read: kept (not taken) when a tag ends, so reading
    /// the next name does not allocate; what outlives the tag is a [`Text`].
    tag: String,
    attr_name: String,
    attr_value: String,
    attrs: Vec<(Text, String)>,
    reference: String,
    decl: String,
    text: String,
    /// In-scope namespace bindings, innermost last; `""` is the default namespace.
    scope: Vec<(String, String)>,
    stack: Vec<Frame>,
    /// Qualified name of the stream root, for matching `</stream:stream>`.
    root: String,
}

impl StreamReader {
    pub fn new(limits: Limits) -> Self {
        Self::with_mode(limits, false)
    }

    fn with_mode(limits: Limits, document: bool) -> Self {
        StreamReader {
            limits,
            document,
            buf: Vec::new(),
            pos: 0,
            failed: None,
            overflow: false,
            pending_close: false,
            phase: Phase::Prolog,
            lex: Lex::Text,
            utf8: Utf8::default(),
            at_start: true,
            first_char: true,
            decl_allowed: true,
            counting: true,
            unit_bytes: 0,
            brackets: 0,
            tag: String::new(),
            attr_name: String::new(),
            attr_value: String::new(),
            attrs: Vec::new(),
            reference: String::new(),
            decl: String::new(),
            text: String::new(),
            scope: Vec::new(),
            stack: Vec::new(),
            root: String::new(),
        }
    }

    /// Appends bytes read from the socket. Never buffers more than ~max_stanza_bytes + one
    /// read chunk: if the pending unparsed data grows past the limit, the next call to
    /// [`next_event`](Self::next_event) returns a policy violation.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_some() || self.overflow {
            return;
        }
        if self.buffered() > self.limits.max_stanza_bytes {
            // The caller keeps feeding without pulling events; refuse rather than grow.
            self.overflow = true;
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete event, or `Ok(None)` when more input is needed. After an
    /// error the reader is dead and keeps returning that error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.advance();
        if let Err(e) = &result {
            // The stream is about to be closed: release what the peer made us hold.
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.pos = 0;
            self.stack = Vec::new();
            self.text = String::new();
            self.counting = false;
            self.unit_bytes = 0;
        }
        result
    }

    /// Forgets everything, buffered input included, and expects a fresh stream header.
    ///
    /// Dropping buffered bytes matters after STARTTLS: anything the peer pipelined in
    /// plaintext must not be interpreted as part of the encrypted stream.
    pub fn reset(&mut self) {
        let mut buf = mem::take(&mut self.buf);
        buf.clear();
        *self = Self::with_mode(self.limits, self.document);
        self.buf = buf;
    }

    /// Changes the limits from the next byte on (a stream allows more once the peer has
    /// authenticated).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Frees the scratch buffers that hold nothing right now (input fully consumed, no
    /// token or element in progress). A stream spends most of its life waiting between
    /// stanzas; this keeps that wait from holding on to the capacity the last stanza grew.
    pub fn release_idle(&mut self) {
        if self.pos >= self.buf.len() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.pos = 0;
        }
        fn free(s: &mut String) {
            if s.is_empty() && s.capacity() > 0 {
                *s = String::new();
            }
        }
        free(&mut self.tag);
        free(&mut self.attr_name);
        free(&mut self.attr_value);
        free(&mut self.reference);
        free(&mut self.decl);
        free(&mut self.text);
        if self.attrs.is_empty() && self.attrs.capacity() > 0 {
            self.attrs = Vec::new();
        }
        if self.stack.is_empty() && self.stack.capacity() > 0 {
            self.stack = Vec::new();
        }
    }

    /// Raw bytes not yet parsed, plus the bytes of the partly read header or top-level
    /// element (whose content is held in the partial tree until it completes).
    pub fn buffered(&self) -> usize {
        let partial = if self.counting { self.unit_bytes } else { 0 };
        self.buf.len() - self.pos + partial
    }

    fn advance(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if self.overflow {
            return Err(policy("unparsed input exceeds the stanza size limit"));
        }
        if self.pending_close {
            self.pending_close = false;
            return Ok(Some(StreamEvent::Close));
        }
        while self.pos < self.buf.len() {
            if self.utf8.idle() && !self.at_start && self.bulk()? {
                continue;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if mem::replace(&mut self.at_start, false) && matches!(b, 0x00 | 0xFE | 0xFF) {
                return Err(XmlError::UnsupportedEncoding(
                    "only UTF-8 streams are supported".into(),
                ));
            }
            self.count(1)?;
            if let Some(c) = self.utf8.push(b)? {
                if let Some(event) = self.step(c)? {
                    return Ok(Some(event));
                }
            }
        }
        Ok(None)
    }

    /// The fast path for the bulk of a stanza: where the byte-at-a-time machine would
    /// only append each byte to the token being read (character data, a tag or
    /// attribute name after its first character, an attribute value), a run of plain
    /// ASCII bytes that it would accept one by one is appended in one go. Anything else
    /// (markup, references, non-ASCII, control characters) ends the run and takes the
    /// general path. Returns whether it consumed anything.
    fn bulk(&mut self) -> Result<bool, XmlError> {
        #[derive(Clone, Copy)]
        enum Token {
            Text,
            Tag,
            AttrName,
            AttrValue,
        }
        let rest = &self.buf[self.pos..];
        let (run, into) = match self.lex {
            Lex::Text if !self.stack.is_empty() => {
                (plain_run(rest, is_plain_text_byte), Token::Text)
            }
            Lex::StartName => (plain_run(rest, is_ascii_name_byte), Token::Tag),
            // The first character of an end tag's name is checked as a name start.
            Lex::EndName if !self.tag.is_empty() => {
                (plain_run(rest, is_ascii_name_byte), Token::Tag)
            }
            Lex::AttrName => (plain_run(rest, is_ascii_name_byte), Token::AttrName),
            Lex::AttrValue(q) => (
                plain_run(rest, |b| is_plain_attr_byte(b, q)),
                Token::AttrValue,
            ),
            _ => return Ok(false),
        };
        if run == 0 {
            return Ok(false);
        }
        self.count(run)?;
        // The run is ASCII, so this cannot fail; if it somehow did, the general path
        // would take the bytes instead.
        let Ok(chunk) = std::str::from_utf8(&self.buf[self.pos..self.pos + run]) else {
            return Ok(false);
        };
        match into {
            Token::Text => {
                self.text.push_str(chunk);
                self.brackets = 0;
            }
            Token::Tag => self.tag.push_str(chunk),
            Token::AttrName => self.attr_name.push_str(chunk),
            Token::AttrValue => self.attr_value.push_str(chunk),
        }
        self.pos += run;
        Ok(true)
    }

    fn count(&mut self, n: usize) -> Result<(), XmlError> {
        if self.counting {
            self.unit_bytes += n;
            if self.unit_bytes > self.limits.max_stanza_bytes {
                return Err(policy(format!(
                    "element larger than {} bytes",
                    self.limits.max_stanza_bytes
                )));
            }
        }
        Ok(())
    }

    fn step(&mut self, c: char) -> Result<Option<StreamEvent>, XmlError> {
        if !is_xml_char(c) {
            return Err(nwf(format!(
                "character U+{:04X} is not allowed in XML",
                u32::from(c)
            )));
        }
        let first = mem::replace(&mut self.first_char, false);
        match self.lex {
            Lex::Text => return self.text_char(c, first),
            Lex::Lt => self.after_lt(c)?,
            Lex::StartName if is_name_char(c) => self.tag.push(c),
            Lex::StartName | Lex::InTag => return self.in_tag(c),
            Lex::AttrName if is_name_char(c) => self.attr_name.push(c),
            Lex::AttrName | Lex::BeforeEq => match c {
                '=' => self.lex = Lex::BeforeQuote,
                _ if is_ws(c) => self.lex = Lex::BeforeEq,
                _ => return Err(nwf("expected '=' after attribute name")),
            },
            Lex::BeforeQuote => match c {
                '"' | '\'' => {
                    self.attr_value.clear();
                    self.lex = Lex::AttrValue(c);
                }
                _ if is_ws(c) => {}
                _ => return Err(nwf("attribute value must be quoted")),
            },
            Lex::AttrValue(q) => match c {
                _ if c == q => self.end_attr()?,
                '<' => return Err(nwf("'<' in attribute value")),
                '&' => self.start_ref(RefIn::Attr(q)),
                _ => self.attr_value.push(c),
            },
            Lex::AfterValue => match c {
                _ if is_ws(c) => self.lex = Lex::InTag,
                '/' => self.lex = Lex::EmptySlash,
                '>' => return self.finish_start(false),
                _ => return Err(nwf("attributes must be separated by whitespace")),
            },
            Lex::EmptySlash => match c {
                '>' => return self.finish_start(true),
                _ => return Err(nwf("expected '>' after '/'")),
            },
            Lex::EndName => {
                if self.tag.is_empty() {
                    if !is_name_start(c) {
                        return Err(nwf("bad end tag name"));
                    }
                    self.tag.push(c);
                } else if is_name_char(c) {
                    self.tag.push(c);
                } else if is_ws(c) {
                    self.lex = Lex::AfterEndName;
                } else if c == '>' {
                    return self.finish_end();
                } else {
                    return Err(nwf("bad end tag"));
                }
            }
            Lex::AfterEndName => match c {
                '>' => return self.finish_end(),
                _ if is_ws(c) => {}
                _ => return Err(nwf("bad end tag")),
            },
            Lex::Bang => match c {
                '-' => return Err(restricted("comments are not allowed")),
                '[' if !self.stack.is_empty() => self.lex = Lex::CdataOpen(0),
                '[' if self.phase == Phase::Body => {
                    return Err(XmlError::BadFormat("CDATA at stream level".into()))
                }
                '[' => return Err(nwf("CDATA outside the root element")),
                _ => return Err(restricted("DTDs and markup declarations are not allowed")),
            },
            Lex::CdataOpen(i) => {
                if "CDATA[".as_bytes().get(i).copied() != u8::try_from(c).ok() {
                    return Err(nwf("bad CDATA section"));
                }
                self.lex = if i == 5 {
                    Lex::Cdata(0)
                } else {
                    Lex::CdataOpen(i + 1)
                };
            }
            Lex::Cdata(n) => match c {
                ']' if n < 2 => self.lex = Lex::Cdata(n + 1),
                ']' => self.text.push(']'),
                '>' if n == 2 => self.lex = Lex::Text,
                _ => {
                    self.text.extend(std::iter::repeat_n(']', usize::from(n)));
                    self.text.push(c);
                    self.lex = Lex::Cdata(0);
                }
            },
            Lex::Decl(after_q) => {
                if after_q && c == '>' {
                    self.finish_decl()?;
                } else {
                    if after_q {
                        self.decl.push('?');
                    }
                    if c != '?' {
                        self.decl.push(c);
                    }
                    self.lex = Lex::Decl(c == '?');
                    if self.decl.len() > MAX_DECL_CHARS {
                        return Err(restricted("processing instructions are not allowed"));
                    }
                }
            }
            Lex::Ref(ctx) => self.ref_char(c, ctx)?,
        }
        Ok(None)
    }

    fn text_char(&mut self, c: char, first: bool) -> Result<Option<StreamEvent>, XmlError> {
        if !self.stack.is_empty() {
            match c {
                '<' => self.lex = Lex::Lt,
                '&' => self.start_ref(RefIn::Text),
                '>' if self.brackets >= 2 => return Err(nwf("']]>' in character data")),
                _ => self.text.push(c),
            }
            self.brackets = if c == ']' {
                self.brackets.saturating_add(1)
            } else {
                0
            };
            return Ok(None);
        }
        if is_ws(c) {
            // Whitespace keepalives between stanzas are not part of any bounded unit.
            if self.phase == Phase::Body {
                self.counting = false;
                self.unit_bytes = 0;
            }
            return Ok(None);
        }
        match self.phase {
            Phase::Prolog if c == '\u{FEFF}' && first => Ok(None),
            Phase::Prolog if c == '<' => {
                self.lex = Lex::Lt;
                Ok(None)
            }
            Phase::Body if c == '<' => {
                self.counting = true;
                self.unit_bytes = c.len_utf8();
                self.lex = Lex::Lt;
                Ok(None)
            }
            Phase::Body => Err(XmlError::BadFormat("character data at stream level".into())),
            Phase::Prolog | Phase::Closed => Err(nwf("content outside the root element")),
        }
    }

    fn after_lt(&mut self, c: char) -> Result<(), XmlError> {
        match c {
            '/' => {
                if self.phase != Phase::Body {
                    return Err(nwf("end tag outside the root element"));
                }
                self.flush_text();
                self.tag.clear();
                self.lex = Lex::EndName;
            }
            '!' => self.lex = Lex::Bang,
            '?' => {
                if !self.decl_allowed {
                    return Err(restricted("processing instructions are not allowed"));
                }
                self.decl.clear();
                self.lex = Lex::Decl(false);
            }
            _ if is_name_start(c) => {
                let builds = self.phase == Phase::Body || self.document;
                if builds && self.stack.len() >= self.limits.max_depth {
                    return Err(policy(format!(
                        "elements nested deeper than {}",
                        self.limits.max_depth
                    )));
                }
                self.decl_allowed = false;
                self.flush_text();
                self.tag.clear();
                self.tag.push(c);
                self.attrs.clear();
                self.lex = Lex::StartName;
            }
            _ => return Err(nwf("bad character after '<'")),
        }
        Ok(())
    }

    fn in_tag(&mut self, c: char) -> Result<Option<StreamEvent>, XmlError> {
        match c {
            '>' => return self.finish_start(false),
            '/' => self.lex = Lex::EmptySlash,
            _ if is_ws(c) => self.lex = Lex::InTag,
            _ if is_name_start(c) && self.lex == Lex::InTag => {
                if self.attrs.len() >= self.limits.max_attrs {
                    return Err(policy(format!(
                        "more than {} attributes on one element",
                        self.limits.max_attrs
                    )));
                }
                self.attr_name.clear();
                self.attr_name.push(c);
                self.lex = Lex::AttrName;
            }
            _ => return Err(nwf("bad character in start tag")),
        }
        Ok(None)
    }

    fn end_attr(&mut self) -> Result<(), XmlError> {
        if self.attrs.iter().any(|(k, _)| *k == self.attr_name) {
            return Err(nwf(format!("duplicate attribute '{}'", self.attr_name)));
        }
        let name = self.attr_name.as_str().into_text();
        self.attr_name.clear();
        let value = mem::take(&mut self.attr_value);
        self.attrs.push((name, value));
        self.lex = Lex::AfterValue;
        Ok(())
    }

    fn start_ref(&mut self, ctx: RefIn) {
        self.reference.clear();
        self.lex = Lex::Ref(ctx);
    }

    fn ref_char(&mut self, c: char, ctx: RefIn) -> Result<(), XmlError> {
        if c == ';' {
            let resolved = resolve_reference(&self.reference)?;
            match ctx {
                RefIn::Text => {
                    self.text.push(resolved);
                    self.lex = Lex::Text;
                }
                RefIn::Attr(q) => {
                    self.attr_value.push(resolved);
                    self.lex = Lex::AttrValue(q);
                }
            }
            return Ok(());
        }
        if !(is_name_char(c) || c == '#') {
            return Err(nwf("unterminated reference"));
        }
        if self.reference.len() >= MAX_REF_CHARS {
            return Err(if is_name(&self.reference) {
                restricted("entity references are not allowed")
            } else {
                nwf("malformed reference")
            });
        }
        self.reference.push(c);
        Ok(())
    }

    fn finish_decl(&mut self) -> Result<(), XmlError> {
        let decl = mem::take(&mut self.decl);
        let Some(body) = decl
            .strip_prefix("xml")
            .filter(|rest| rest.starts_with(is_ws))
        else {
            return Err(restricted("processing instructions are not allowed"));
        };
        let pseudo = parse_pseudo_attrs(body)?;
        match pseudo.first() {
            Some(("version", v)) if v.starts_with("1.") => {}
            _ => return Err(nwf("XML declaration without a 1.x version")),
        }
        for (k, v) in &pseudo {
            match *k {
                "encoding" if !v.eq_ignore_ascii_case("UTF-8") => {
                    return Err(XmlError::UnsupportedEncoding(format!(
                        "encoding '{v}' is not UTF-8"
                    )))
                }
                "version" | "encoding" | "standalone" => {}
                _ => return Err(nwf("bad XML declaration")),
            }
        }
        self.decl_allowed = false;
        self.lex = Lex::Text;
        Ok(())
    }

    fn flush_text(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = mem::take(&mut self.text);
        if let Some(top) = self.stack.last_mut() {
            top.elem.push_text(text);
        }
    }

    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(NS_XML);
        }
        self.scope
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, uri)| uri.as_str())
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<&str, XmlError> {
        if prefix == "xmlns" {
            return Err(bad_ns("the 'xmlns' prefix cannot be used on names"));
        }
        self.lookup(prefix)
            .ok_or_else(|| bad_ns(format!("unbound prefix '{prefix}'")))
    }

    fn finish_start(&mut self, empty: bool) -> Result<Option<StreamEvent>, XmlError> {
        self.lex = Lex::Text;
        let qname = self.tag.as_str().into_text();
        self.tag.clear();
        let raw = mem::take(&mut self.attrs);
        let mark = self.scope.len();
        // Most stanzas have neither declarations nor prefixed attributes (`to`, `type`,
        // `id`...): their attributes are taken as they are (end_attr has refused
        // duplicates already).
        if raw.iter().all(|(k, _)| !k.contains(':') && k != "xmlns") {
            return self.start_element(qname, mark, raw, empty);
        }
        // Declarations apply to the element's own name and attributes wherever they
        // appear in the tag, so they are bound before anything is resolved.
        let mut plain = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            if k == "xmlns" {
                if v == NS_XML || v == NS_XMLNS {
                    return Err(bad_ns("reserved namespace as default namespace"));
                }
                self.scope.push((String::new(), v));
            } else if let Some(p) = k.strip_prefix("xmlns:") {
                check_prefix_decl(p, &v)?;
                if p != "xml" {
                    self.scope.push((p.to_owned(), v));
                }
            } else {
                plain.push((k, v));
            }
        }
        if self.scope.len() > MAX_SCOPE_BINDINGS {
            return Err(policy("too many namespace declarations in scope"));
        }
        // The element's own name is checked before its attributes (start_element
        // resolves it again).
        if let (Some(p), _) = split_qname(&qname)? {
            self.resolve_prefix(p)?;
        }
        let mut attrs: Vec<(Text, String)> = Vec::with_capacity(plain.len());
        for (k, v) in plain {
            // `xml:*` keeps its spelling: the xml prefix is implicitly bound everywhere
            // and may not be redeclared, so this is what Element::write_to can emit.
            let expanded = match split_qname(&k)? {
                (Some(p), local) if p != "xml" => {
                    Some(format!("{{{}}}{}", self.resolve_prefix(p)?, local))
                }
                _ => None,
            };
            let key = expanded.map_or(k, Text::Owned);
            if attrs.iter().any(|(a, _)| *a == key) {
                return Err(nwf(format!("duplicate attribute '{key}'")));
            }
            attrs.push((key, v));
        }
        self.start_element(qname, mark, attrs, empty)
    }

    /// The rest of a start tag once its attributes are resolved (`mark`: the scope
    /// before the element's declarations).
    fn start_element(
        &mut self,
        qname: Text,
        mark: usize,
        attrs: Vec<(Text, String)>,
        empty: bool,
    ) -> Result<Option<StreamEvent>, XmlError> {
        let (prefix, local) = split_qname(&qname)?;
        let ns = match prefix {
            Some(p) => self.resolve_prefix(p)?,
            None => self.lookup("").unwrap_or(""),
        }
        .into_text();
        let local = local.into_text();

        if self.phase == Phase::Prolog && !self.document {
            let header = StreamHeader {
                name: local.into_owned(),
                ns: ns.into_owned(),
                default_ns: self.lookup("").unwrap_or("").to_owned(),
                attrs: attrs
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v))
                    .collect(),
                namespaces: self.scope[mark..].to_vec(),
            };
            self.root = qname.into_owned();
            self.phase = Phase::Body;
            self.counting = false;
            self.unit_bytes = 0;
            if empty {
                self.phase = Phase::Closed;
                self.pending_close = true;
            }
            return Ok(Some(StreamEvent::Open(header)));
        }

        self.phase = Phase::Body;
        self.stack.push(Frame {
            qname,
            scope_mark: mark,
            elem: Element::from_parts(local, ns, attrs),
        });
        if empty {
            return Ok(self.close_element());
        }
        Ok(None)
    }

    fn finish_end(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        self.lex = Lex::Text;
        let qname = self.tag.as_str();
        if let Some(top) = self.stack.last() {
            if top.qname != qname {
                return Err(nwf(format!(
                    "end tag '{qname}' does not match start tag '{}'",
                    top.qname
                )));
            }
            self.tag.clear();
            return Ok(self.close_element());
        }
        if self.document || qname != self.root {
            return Err(nwf(format!("unexpected end tag '{qname}'")));
        }
        self.tag.clear();
        self.phase = Phase::Closed;
        self.counting = false;
        self.unit_bytes = 0;
        Ok(Some(StreamEvent::Close))
    }

    fn close_element(&mut self) -> Option<StreamEvent> {
        let frame = self.stack.pop()?;
        self.scope.truncate(frame.scope_mark);
        if let Some(parent) = self.stack.last_mut() {
            parent.elem.push(frame.elem);
            return None;
        }
        self.counting = false;
        self.unit_bytes = 0;
        if self.document {
            self.phase = Phase::Closed;
        }
        Some(StreamEvent::Element(frame.elem))
    }
}

/// Parses one standalone element document (optionally preceded by an XML declaration),
/// with the same restrictions as a stream. The size limit is lifted to the input's
/// length, since the whole input is already in memory; depth and attribute limits apply.
pub fn parse_element(xml: &[u8]) -> Result<Element, XmlError> {
    parse_element_with(xml, Limits::default())
}

/// [`parse_element`] with the caller's depth and attribute limits (a WebSocket frame or a
/// BOSH body holds client input, which gets the configured limits, not the defaults).
/// The size limit is still lifted to the input's length: callers check sizes first.
pub fn parse_element_with(xml: &[u8], limits: Limits) -> Result<Element, XmlError> {
    let limits = Limits {
        max_stanza_bytes: limits.max_stanza_bytes.max(xml.len()),
        ..limits
    };
    let mut reader = StreamReader::with_mode(limits, true);
    reader.feed(xml);
    match reader.next_event()? {
        Some(StreamEvent::Element(e)) => {
            // Trailing whitespace is fine; anything else has already failed here.
            reader.next_event()?;
            if !reader.utf8.idle() {
                return Err(nwf("truncated UTF-8 after the element"));
            }
            Ok(e)
        }
        _ => Err(nwf("incomplete document")),
    }
}

fn check_prefix_decl(prefix: &str, uri: &str) -> Result<(), XmlError> {
    if prefix.is_empty() || prefix.contains(':') {
        return Err(nwf(format!("bad namespace prefix '{prefix}'")));
    }
    if prefix == "xmlns" {
        return Err(bad_ns("the 'xmlns' prefix cannot be declared"));
    }
    if (prefix == "xml") != (uri == NS_XML) {
        return Err(bad_ns(
            "the 'xml' prefix and namespace are reserved for each other",
        ));
    }
    if uri == NS_XMLNS {
        return Err(bad_ns("the xmlns namespace cannot be bound"));
    }
    if uri.is_empty() {
        return Err(bad_ns(format!("prefix '{prefix}' cannot be undeclared")));
    }
    Ok(())
}

fn split_qname(q: &str) -> Result<(Option<&str>, &str), XmlError> {
    match q.split_once(':') {
        None => Ok((None, q)),
        Some((p, l))
            if !p.is_empty() && !l.contains(':') && l.chars().next().is_some_and(is_name_start) =>
        {
            Ok((Some(p), l))
        }
        Some(_) => Err(nwf(format!("'{q}' is not a qualified name"))),
    }
}

fn resolve_reference(r: &str) -> Result<char, XmlError> {
    match r {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "quot" => return Ok('"'),
        "apos" => return Ok('\''),
        _ => {}
    }
    if let Some(num) = r.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix('x') {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        // from_str_radix would also accept a leading '+'.
        if digits.is_empty() || !digits.chars().all(|d| d.is_digit(radix)) {
            return Err(nwf(format!("malformed character reference '&{r};'")));
        }
        return u32::from_str_radix(digits, radix)
            .ok()
            .and_then(char::from_u32)
            .filter(|&c| is_xml_char(c))
            .ok_or_else(|| nwf(format!("'&{r};' references a character not allowed in XML")));
    }
    if is_name(r) {
        Err(restricted(format!(
            "entity reference '&{r};' (only the predefined entities are allowed)"
        )))
    } else {
        Err(nwf(format!("malformed reference '&{r};'")))
    }
}

/// Parses `name="value"` pairs of an XML declaration, in order.
fn parse_pseudo_attrs(mut s: &str) -> Result<Vec<(&str, &str)>, XmlError> {
    let bad = || nwf("bad XML declaration");
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(is_ws);
        if s.is_empty() {
            return Ok(out);
        }
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let name = name.trim_end_matches(is_ws);
        let rest = rest.trim_start_matches(is_ws);
        let quote = rest.chars().next().filter(|&q| q == '"' || q == '\'');
        let quote = quote.ok_or_else(bad)?;
        let (value, after) = rest[1..].split_once(quote).ok_or_else(bad)?;
        if !is_name(name) || !(after.is_empty() || after.starts_with(is_ws)) {
            return Err(bad());
        }
        out.push((name, value));
        s = after;
    }
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// ASCII that can be copied straight into character data: everything but markup
/// delimiters, `]` and `>` (watched for `]]>`), and control characters.
fn is_plain_text_byte(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7F) && !matches!(b, b'<' | b'&' | b']' | b'>')
}

/// ASCII name characters (all of them are `NameChar`s; none needs the general path).
fn is_ascii_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// ASCII that goes straight into an attribute value quoted with `q`: not the closing
/// quote, not `<` (an error) or `&` (a reference), no control characters.
fn is_plain_attr_byte(b: u8, q: char) -> bool {
    matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7F)
        && !matches!(b, b'<' | b'&')
        && u32::from(b) != u32::from(q)
}

/// Length of the leading run of `bytes` that satisfy `plain`.
fn plain_run(bytes: &[u8], plain: impl Fn(u8) -> bool) -> usize {
    bytes.iter().position(|&b| !plain(b)).unwrap_or(bytes.len())
}

/// The XML 1.0 `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' \
        xml:lang='en'>";

    /// Feeds `chunks` in order, pulling every event after each; stops at the first error.
    fn run<'a>(
        limits: Limits,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<StreamEvent>, Option<XmlError>) {
        let mut reader = StreamReader::new(limits);
        let mut events = Vec::new();
        for chunk in chunks {
            reader.feed(chunk);
            assert!(reader.buffered() <= limits.max_stanza_bytes + chunk.len());
            loop {
                match reader.next_event() {
                    Ok(Some(ev)) => events.push(ev),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, None)
    }

    fn one_shot(xml: &str) -> (Vec<StreamEvent>, Option<XmlError>) {
        run(Limits::default(), [xml.as_bytes()])
    }

    fn bytewise(xml: &str) -> (Vec<StreamEvent>, Option<XmlError>) {
        run(Limits::default(), xml.as_bytes().chunks(1))
    }

    fn error_of(xml: &str) -> XmlError {
        let (_, err) = one_shot(xml);
        let err = err.unwrap_or_else(|| panic!("accepted: {xml}"));
        assert_eq!(Some(err.clone()), bytewise(xml).1, "split feeding differs");
        err
    }

    fn stanza(body: &str) -> Result<Element, XmlError> {
        let (events, err) = one_shot(&format!("{HEADER}{body}"));
        if let Some(e) = err {
            return Err(e);
        }
        match events.as_slice() {
            [StreamEvent::Open(_), StreamEvent::Element(e)] => Ok(e.clone()),
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[test]
    fn header_with_declaration() {
        let (events, err) = one_shot(HEADER);
        assert_eq!(err, None);
        let [StreamEvent::Open(h)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(h.name, "stream");
        assert_eq!(h.ns, NS_STREAMS);
        assert_eq!(h.default_ns, "jabber:client");
        assert_eq!(h.attr("to"), Some("example.com"));
        assert_eq!(h.attr("version"), Some("1.0"));
        assert_eq!(h.attr("xml:lang"), Some("en"));
        assert_eq!(h.attr("xmlns"), None);
        assert_eq!(
            h.namespaces,
            vec![
                (String::new(), "jabber:client".to_owned()),
                ("stream".to_owned(), NS_STREAMS.to_owned())
            ]
        );
    }

    #[test]
    fn header_without_declaration_or_prefix() {
        let (events, err) =
            one_shot("\n  <stream xmlns='http://etherx.jabber.org/streams' from='a.example'>");
        assert_eq!(err, None);
        let [StreamEvent::Open(h)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!((h.name.as_str(), h.ns.as_str()), ("stream", NS_STREAMS));
        assert_eq!(h.default_ns, NS_STREAMS);
        assert_eq!(h.attr("from"), Some("a.example"));
    }

    #[test]
    fn header_is_reported_before_anything_else_arrives() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(&HEADER.as_bytes()[..HEADER.len() - 1]);
        assert_eq!(r.next_event(), Ok(None));
        r.feed(b">");
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Open(_)))));
        assert_eq!(r.next_event(), Ok(None));
    }

    #[test]
    fn message_with_foreign_and_prefixed_children() {
        let e = stanza(
            "<message to='juliet@example.com' type='chat' xmlns:x='urn:x' x:flag='1'>\
             <body>Hi &amp; bye</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/>\
             <x:data><item/></x:data>\
             <stream:error/>\
             </message>",
        )
        .unwrap();
        assert!(e.is("message", "jabber:client"));
        assert_eq!(e.attr("to"), Some("juliet@example.com"));
        assert_eq!(e.attr("{urn:x}flag"), Some("1"));
        assert_eq!(
            e.attrs().count(),
            3,
            "xmlns declarations are not attributes"
        );
        assert_eq!(
            e.child_text("body", "jabber:client").as_deref(),
            Some("Hi & bye")
        );
        assert!(e.has_child("active", "http://jabber.org/protocol/chatstates"));
        let data = e.child("data", "urn:x").unwrap();
        assert!(
            data.has_child("item", "jabber:client"),
            "default ns is inherited"
        );
        assert!(
            e.has_child("error", NS_STREAMS),
            "header prefixes are inherited"
        );
    }

    #[test]
    fn default_namespace_can_be_undeclared() {
        let e = stanza("<iq xmlns='urn:a'><q xmlns=''><r/></q></iq>").unwrap();
        let q = e.child("q", "").unwrap();
        assert!(q.has_child("r", ""));
    }

    const REALISTIC: &str = "<?xml version='1.0' encoding='UTF-8'?>\n\
        <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        to='example.com' version='1.0'>\
        <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        </stream:features>\n \
        <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>\n\n\
        <message to='romeo@example.net' xml:lang='fr'><body>Ça va ? 😀 1 &lt; 2 &#x263A; &#65;\
        <![CDATA[<raw> & ]] ]]]></body><thread>t</thread></message> \
        <presence><show>away</show><status>\r\n  zzz\t</status></presence>\
        </stream:stream>\n";

    #[test]
    fn byte_at_a_time_equals_one_shot() {
        let (events, err) = one_shot(REALISTIC);
        assert_eq!(err, None);
        assert_eq!(events.len(), 6, "{events:?}");
        assert!(matches!(events[0], StreamEvent::Open(_)));
        assert_eq!(events[5], StreamEvent::Close);
        let StreamEvent::Element(msg) = &events[3] else {
            panic!()
        };
        assert_eq!(
            msg.child_text("body", "jabber:client").as_deref(),
            Some("Ça va ? 😀 1 < 2 ☺ A<raw> & ]] ]")
        );
        assert_eq!(msg.attr("xml:lang"), Some("fr"));
        assert_eq!(bytewise(REALISTIC), (events.clone(), None));
        for size in [2, 3, 7, 64] {
            let chunks = REALISTIC.as_bytes().chunks(size);
            assert_eq!(run(Limits::default(), chunks), (events.clone(), None));
        }
    }

    #[test]
    fn split_inside_multibyte_character() {
        let xml = format!("{HEADER}<message><body>é😀</body></message>");
        let bytes = xml.as_bytes();
        let emoji = xml.find('😀').unwrap();
        for cut in [emoji + 1, emoji + 2, emoji + 3, emoji - 1] {
            let (events, err) = run(Limits::default(), [&bytes[..cut], &bytes[cut..]]);
            assert_eq!(err, None);
            let StreamEvent::Element(m) = &events[1] else {
                panic!()
            };
            assert_eq!(
                m.child_text("body", "jabber:client").as_deref(),
                Some("é😀")
            );
        }
    }

    #[test]
    fn cdata_and_character_references() {
        let e =
            stanza("<m a='&#60;&#x3E;&quot;&apos;'><![CDATA[a]]b]]]><![CDATA[]]>&#x10FFFF;</m>")
                .unwrap();
        assert_eq!(e.attr("a"), Some("<>\"'"));
        assert_eq!(e.text(), "a]]b]\u{10FFFF}");
        assert_eq!(
            e.nodes().len(),
            1,
            "adjacent character data is one text node"
        );
    }

    #[test]
    fn bad_character_references() {
        for r in [
            "&#0;",
            "&#x1;",
            "&#xD800;",
            "&#xFFFE;",
            "&#x110000;",
            "&#;",
            "&#x;",
            "&#+5;",
        ] {
            let err = stanza(&format!("<m>{r}</m>")).unwrap_err();
            assert_eq!(err.condition(), "not-well-formed", "{r}");
        }
        assert_eq!(
            stanza("<m>a & b</m>").unwrap_err().condition(),
            "not-well-formed"
        );
    }

    #[test]
    fn unknown_entity_is_restricted() {
        let err = error_of(&format!("{HEADER}<m>&foo;</m>"));
        assert!(matches!(err, XmlError::RestrictedXml(_)), "{err:?}");
        let err = error_of(&format!("{HEADER}<m a='&nbsp;'/>"));
        assert_eq!(err.condition(), "restricted-xml");
    }

    #[test]
    fn doctype_is_restricted() {
        let laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>\
            <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>\
            <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
        assert!(matches!(error_of(laughs), XmlError::RestrictedXml(_)));
        let inner = format!("{HEADER}<!ENTITY x 'y'>");
        assert!(matches!(error_of(&inner), XmlError::RestrictedXml(_)));
    }

    #[test]
    fn processing_instructions_are_restricted() {
        for xml in [
            format!("{HEADER}<?php echo 1; ?>"),
            format!("{HEADER}<m><?xml version='1.0'?></m>"),
            "<?xml-stylesheet href='a'?><stream:stream>".to_owned(),
            "<?xml version='1.0'?><?xml version='1.0'?><a>".to_owned(),
        ] {
            assert!(
                matches!(error_of(&xml), XmlError::RestrictedXml(_)),
                "{xml}"
            );
        }
    }

    #[test]
    fn comments_are_restricted() {
        for xml in [
            format!("<!-- hi -->{HEADER}"),
            format!("{HEADER}<!-- hi -->"),
            format!("{HEADER}<m><!-- hi --></m>"),
        ] {
            assert!(
                matches!(error_of(&xml), XmlError::RestrictedXml(_)),
                "{xml}"
            );
        }
    }

    #[test]
    fn non_utf8_encodings_are_refused() {
        let err = error_of("<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>");
        assert_eq!(err.condition(), "unsupported-encoding");
        let utf16: Vec<u8> = [0xFF, 0xFE, b'<', 0].to_vec();
        let (_, err) = run(Limits::default(), [utf16.as_slice()]);
        assert_eq!(err.map(|e| e.condition()), Some("unsupported-encoding"));
        let mut bad = HEADER.as_bytes().to_vec();
        bad.extend_from_slice(b"<m>\xC3\x28</m>");
        let (_, err) = run(Limits::default(), [bad.as_slice()]);
        assert_eq!(err.map(|e| e.condition()), Some("not-well-formed"));
    }

    #[test]
    fn huge_stanza_is_refused_while_streaming() {
        let limits = Limits::default();
        let mut r = StreamReader::new(limits);
        r.feed(HEADER.as_bytes());
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Open(_)))));
        r.feed(b"<message><body>");
        let chunk = vec![b'a'; 64 * 1024];
        let mut fed = 0usize;
        let err = loop {
            r.feed(&chunk);
            fed += chunk.len();
            assert!(r.buffered() <= limits.max_stanza_bytes + chunk.len());
            match r.next_event() {
                Ok(None) => assert!(fed < 10 * 1024 * 1024, "never refused"),
                Ok(Some(ev)) => panic!("unexpected {ev:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, XmlError::PolicyViolation(_)));
        assert!(fed <= limits.max_stanza_bytes + chunk.len());
        // Dead from now on, and it stays small.
        r.feed(&chunk);
        assert_eq!(r.next_event(), Err(err));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn feeding_without_pulling_is_bounded() {
        let limits = Limits::default();
        let mut r = StreamReader::new(limits);
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..100 {
            r.feed(&chunk);
            assert!(r.buffered() <= limits.max_stanza_bytes + chunk.len());
        }
        assert!(matches!(r.next_event(), Err(XmlError::PolicyViolation(_))));
    }

    #[test]
    fn oversized_header_is_refused() {
        let limits = Limits::default();
        let xml = format!(
            "<stream:stream xmlns:stream='{NS_STREAMS}' to='{}'>",
            "a".repeat(limits.max_stanza_bytes)
        );
        assert!(matches!(error_of(&xml), XmlError::PolicyViolation(_)));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!("{HEADER}{}", "<a>".repeat(10_000));
        assert!(matches!(error_of(&xml), XmlError::PolicyViolation(_)));
        let limits = Limits::default();
        let ok = format!(
            "{HEADER}{}{}",
            "<a>".repeat(limits.max_depth),
            "</a>".repeat(limits.max_depth)
        );
        let (events, err) = one_shot(&ok);
        assert_eq!((events.len(), err), (2, None));
    }

    #[test]
    fn too_many_attributes_are_refused() {
        let max = Limits::default().max_attrs;
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='x'")).collect::<String>();
        assert!(stanza(&format!("<m{}/>", attrs(max))).is_ok());
        let err = stanza(&format!("<m{}/>", attrs(max + 1))).unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)));
    }

    #[test]
    fn namespace_declarations_in_scope_are_bounded() {
        let level = |i: usize| {
            let decls: String = (0..32).map(|j| format!(" xmlns:p{j}='u{i}'")).collect();
            format!("<a{decls}>")
        };
        // The header already binds two namespaces.
        let ok: String = (0..7).map(level).collect();
        let (events, err) = one_shot(&format!("{HEADER}{ok}"));
        assert_eq!((events.len(), err), (1, None));
        let deep: String = (0..9).map(level).collect();
        assert!(matches!(
            error_of(&format!("{HEADER}{deep}")),
            XmlError::PolicyViolation(_)
        ));
    }

    #[test]
    fn utf8_byte_order_mark_is_tolerated() {
        let (events, err) = one_shot(&format!("\u{FEFF}{HEADER}"));
        assert_eq!((events.len(), err), (1, None));
        let err = error_of(&format!("{HEADER}\u{FEFF}"));
        assert!(matches!(err, XmlError::BadFormat(_)));
    }

    #[test]
    fn buffered_counts_the_partial_stanza() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Open(_)))));
        assert_eq!(r.buffered(), 0);
        r.feed(b"  <message><body>12345");
        assert_eq!(r.next_event(), Ok(None));
        assert_eq!(r.buffered(), "<message><body>12345".len());
        r.feed(b"</body></message>");
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Element(_)))));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn malformed_input_is_not_well_formed() {
        for body in [
            "<m></n>",
            "<m><b></m></b>",
            "<m a='1' a='2'/>",
            "<m xmlns:p='urn:p' xmlns:q='urn:p' p:a='1' q:a='2'/>",
            "<m a='<'/>",
            "<m a=1/>",
            "<m a='1'b='2'/>",
            "<1m/>",
            "<m>\u{1}</m>",
            "<m>\0</m>",
            "<m>]]></m>",
            "<m a/>",
            "< m/>",
            "<m:/>",
            "<![CDATA[x]]>",
        ] {
            let err = stanza(body).unwrap_err();
            assert!(
                matches!(err, XmlError::NotWellFormed(_) | XmlError::BadFormat(_)),
                "{body}: {err:?}"
            );
        }
        assert!(matches!(
            error_of(&format!("{HEADER}</stream>")),
            XmlError::NotWellFormed(_)
        ));
    }

    #[test]
    fn text_at_stream_level_is_bad_format() {
        let err = error_of(&format!("{HEADER} hello <m/>"));
        assert!(matches!(err, XmlError::BadFormat(_)));
        let err = error_of("junk<stream:stream>");
        assert!(matches!(err, XmlError::NotWellFormed(_)));
    }

    #[test]
    fn namespace_errors() {
        for body in [
            "<p:m/>",
            "<m p:a='1'/>",
            "<m xmlns:p=''/>",
            "<m xmlns:xml='urn:x'/>",
            "<m xmlns:xmlns='urn:x'/>",
            "<xmlns:m/>",
        ] {
            let err = stanza(body).unwrap_err();
            assert!(
                matches!(err, XmlError::InvalidNamespace(_)),
                "{body}: {err:?}"
            );
            assert_eq!(err.condition(), "invalid-namespace");
        }
        // Scopes end with their element.
        let err = stanza("<m><a xmlns:p='urn:p'/><p:b/></m>").unwrap_err();
        assert!(matches!(err, XmlError::InvalidNamespace(_)));
    }

    #[test]
    fn close_and_empty_root() {
        let (events, err) = one_shot(&format!("{HEADER} \n</stream:stream>  "));
        assert_eq!(err, None);
        assert_eq!(events.last(), Some(&StreamEvent::Close));
        let (events, err) = one_shot("<stream:stream xmlns:stream='x'/>");
        assert_eq!(err, None);
        assert!(matches!(
            events.as_slice(),
            [StreamEvent::Open(_), StreamEvent::Close]
        ));
        let err = error_of(&format!("{HEADER}</stream:stream><m/>"));
        assert!(matches!(err, XmlError::NotWellFormed(_)));
    }

    #[test]
    fn reset_expects_a_new_header() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(HEADER.as_bytes());
        r.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><injected/>");
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Open(_)))));
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Element(_)))));
        r.reset();
        assert_eq!(r.buffered(), 0, "pipelined plaintext is dropped");
        r.feed(HEADER.as_bytes());
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Open(_)))));
        r.feed(b"<presence/>");
        let Ok(Some(StreamEvent::Element(p))) = r.next_event() else {
            panic!()
        };
        assert!(p.is("presence", "jabber:client"));
    }

    #[test]
    fn errors_are_sticky() {
        let mut r = StreamReader::new(Limits::default());
        r.feed(b"<!DOCTYPE x>");
        let err = r.next_event().unwrap_err();
        r.feed(HEADER.as_bytes());
        assert_eq!(r.next_event(), Err(err.clone()));
        assert_eq!(r.next_event(), Err(err));
    }

    #[test]
    fn parse_element_standalone() {
        let e = parse_element(b"<?xml version='1.0'?>\n<a xmlns='urn:a'><b/>t</a>\n").unwrap();
        assert!(e.is("a", "urn:a"));
        assert!(e.has_child("b", "urn:a"));
        assert_eq!(e.text(), "t");
        assert!(parse_element(b"<a>").is_err());
        assert!(parse_element(b"<a/><b/>").is_err());
        assert!(parse_element(b"text").is_err());
        assert!(parse_element(b"").is_err());
        assert!(parse_element(b"<a/>\xC3").is_err());
    }

    #[test]
    fn round_trip_through_write_to() {
        let xml = "<message xmlns='jabber:client' to='a@b' xml:lang='en' xmlns:e='urn:e' \
            e:x='&lt;&amp;&quot;&apos;'><body>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; \"q\"</body>\
            <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns=''><p>x</p></body></html>\
            <e:ext><e:y/>tail<![CDATA[<c>]]></e:ext></message>";
        let e = parse_element(xml.as_bytes()).unwrap();
        for parent in ["", "jabber:client", "urn:other"] {
            let mut out = Vec::new();
            e.write_to(&mut out, parent);
            if parent.is_empty() || parent == "urn:other" {
                assert_eq!(
                    parse_element(&out).unwrap(),
                    e,
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        let mut out = Vec::new();
        e.write_to(&mut out, "");
        assert_eq!(e.attr("{urn:e}x"), Some("<&\"'"));
    }
}
