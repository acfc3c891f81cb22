//! PLACEHOLDER: replaced by the xml-reader branch.
use super::Element;
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attrs: usize,
}
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attrs: 64,
        }
    }
}
pub struct StreamHeader {
    pub name: String,
    pub ns: String,
    pub default_ns: String,
    pub attrs: Vec<(String, String)>,
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
pub enum StreamEvent {
    Open(StreamHeader),
    Element(Element),
    Close,
}
#[derive(Debug, thiserror::Error)]
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
pub struct StreamReader {
    buf: Vec<u8>,
}
impl StreamReader {
    pub fn new(_limits: Limits) -> Self {
        StreamReader { buf: vec![] }
    }
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        Ok(None)
    }
    pub fn reset(&mut self) {
        self.buf.clear();
    }
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
pub fn parse_element(_xml: &[u8]) -> Result<Element, XmlError> {
    Err(XmlError::NotWellFormed("placeholder".into()))
}
