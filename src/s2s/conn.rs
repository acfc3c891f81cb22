//! The byte side of a server-to-server stream: socket, TLS in either role, the reader,
//! and batched writes in the `jabber:server` content namespace.
//!
//! Namespace policy: inside the server every stanza carries `jabber:client` (that is
//! what c2s produces and what handlers match on). Stanzas read from a server stream are
//! normalised to `jabber:client` as soon as they are parsed ([`to_client_ns`]), and
//! stanzas written to one are mapped back to `jabber:server` as they are serialised
//! ([`Conn::queue_stanza`]), children included (a `<body/>` is in the content namespace
//! too). So nothing past this file ever sees `jabber:server`.

use crate::net::{MaybeTls, TLS_HANDSHAKE_TIMEOUT};
use crate::ns;
use crate::stanza::StreamError;
use crate::xml::element::escape;
use crate::xml::reader::{Limits, StreamEvent, StreamHeader, StreamReader};
use crate::xml::{Element, Node};
use crate::ServerState;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a server stream stops (the same as a client stream's).
pub type S2sError = crate::net::StreamEnd;

pub struct Conn {
    io: Option<MaybeTls>,
    reader: StreamReader,
    out: Vec<u8>,
    pub peer: SocketAddr,
    header_sent: bool,
    /// The domain we speak for in headers written before we know better.
    local: String,
    /// The certificate chain the peer presented in TLS, if any.
    peer_certs: Vec<CertificateDer<'static>>,
    /// A peer that does not drain its socket for this long is treated as gone: what
    /// we could not write is bounced rather than piling up.
    write_timeout: Duration,
    /// How long a closed stream waits for the peer's closing tag (`limits.close_wait_ms`).
    close_wait: Duration,
}

impl Conn {
    pub fn new(server: &ServerState, tcp: TcpStream, peer: SocketAddr) -> Conn {
        let l = &server.config.limits;
        Conn {
            io: Some(MaybeTls::Plain(tcp)),
            reader: StreamReader::new(Limits {
                max_stanza_bytes: l.max_stanza_bytes,
                max_depth: l.max_depth,
                max_attrs: l.max_attrs,
            }),
            out: Vec::new(),
            peer,
            header_sent: false,
            local: server.config.domain.clone(),
            peer_certs: Vec::new(),
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            close_wait: Duration::from_millis(l.close_wait_ms),
        }
    }

    pub fn set_local(&mut self, domain: &str) {
        self.local = domain.to_string();
    }

    pub fn is_tls(&self) -> bool {
        self.io.as_ref().is_some_and(MaybeTls::is_tls)
    }

    pub fn peer_certs(&self) -> &[CertificateDer<'static>] {
        &self.peer_certs
    }

    fn take_plain(&mut self) -> Result<TcpStream, S2sError> {
        match self.io.take() {
            Some(MaybeTls::Plain(tcp)) => Ok(tcp),
            other => {
                self.io = other;
                Err(S2sError::Stream(
                    StreamError::new("policy-violation").with_text("TLS is already in place"),
                ))
            }
        }
    }

    /// Server side of TLS (a peer connected to us).
    pub async fn accept_tls(&mut self, server: &ServerState) -> Result<(), S2sError> {
        let tcp = self.take_plain()?;
        let accept = server.tls.s2s_acceptor.accept(crate::net::Tcp(tcp));
        let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept)
            .await
            .map_err(|_| S2sError::timed_out())??;
        self.peer_certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        self.io = Some(MaybeTls::Tls(Box::new(tls)));
        Ok(())
    }

    /// Client side of TLS towards `domain` (we connected to the peer).
    pub async fn connect_tls(
        &mut self,
        server: &ServerState,
        domain: &str,
        direct: bool,
    ) -> Result<(), S2sError> {
        let tcp = self.take_plain()?;
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            S2sError::Stream(StreamError::new("improper-addressing").with_text("bad domain"))
        })?;
        let connector = if direct {
            &server.tls.s2s_direct_connector
        } else {
            &server.tls.s2s_connector
        };
        let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| S2sError::timed_out())??;
        self.peer_certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        self.io = Some(MaybeTls::TlsClient(Box::new(tls)));
        Ok(())
    }

    /// Refuses bytes the peer sent between `<starttls/>`/`<proceed/>` and the handshake:
    /// they would otherwise be read as if they had been encrypted.
    pub fn ensure_nothing_buffered(&self) -> Result<(), S2sError> {
        if self.reader.buffered() > 0 {
            return Err(S2sError::Stream(StreamError::new("policy-violation")));
        }
        Ok(())
    }

    /// A stream restart (after TLS or SASL): the next thing is a new header.
    pub fn restart(&mut self) {
        self.reader.reset();
        self.header_sent = false;
    }

    /// Reads once from the socket into the parser. Cancel-safe (it is raced against
    /// queues and timers).
    pub async fn read_some(&mut self) -> Result<(), S2sError> {
        let io = self.io.as_mut().ok_or(S2sError::Closed)?;
        io.read_into(&mut self.reader).await
    }

    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, S2sError> {
        Ok(self.reader.next_event()?)
    }

    pub async fn next_event_wait(&mut self) -> Result<StreamEvent, S2sError> {
        loop {
            if let Some(ev) = self.next_event()? {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    pub async fn expect_header(&mut self) -> Result<StreamHeader, S2sError> {
        match self.next_event_wait().await? {
            StreamEvent::Open(h) => Ok(h),
            StreamEvent::Close => Err(S2sError::Closed),
            StreamEvent::Element(_) => Err(S2sError::Stream(StreamError::new("not-well-formed"))),
        }
    }

    /// The next element; a `<stream:error/>` from the peer ends the stream.
    pub async fn expect_element(&mut self) -> Result<Element, S2sError> {
        match self.next_event_wait().await? {
            StreamEvent::Element(e) if e.is("error", ns::STREAM) => {
                tracing::info!(peer = %self.peer, "peer sent a stream error: {}", describe_stream_error(&e));
                Err(S2sError::Closed)
            }
            StreamEvent::Element(e) => Ok(e),
            StreamEvent::Close => Err(S2sError::Closed),
            StreamEvent::Open(_) => Err(S2sError::Stream(StreamError::new("not-well-formed"))),
        }
    }

    /// Writes a server stream header (RFC 6120 §4.7), declaring the dialback prefix.
    pub fn queue_header(&mut self, from: &str, to: Option<&str>, id: Option<&str>) {
        let mut h = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' from='{}'",
            ns::SERVER,
            ns::STREAM,
            ns::DIALBACK,
            escape(from),
        );
        if let Some(to) = to {
            h.push_str(&format!(" to='{}'", escape(to)));
        }
        if let Some(id) = id {
            h.push_str(&format!(" id='{}'", escape(id)));
        }
        h.push_str(" version='1.0' xml:lang='en'>");
        self.out.extend_from_slice(h.as_bytes());
        self.header_sent = true;
        self.local = from.to_string();
    }

    /// Appends a non-stanza element: stream-level and dialback elements get the
    /// `stream:` and `db:` prefixes every peer expects; anything else (TLS, SASL) is
    /// written with its own default namespace.
    pub fn queue(&mut self, el: &Element) {
        let prefix = match el.ns() {
            ns::STREAM => "stream",
            ns::DIALBACK => "db",
            _ => return el.write_to(&mut self.out, ns::SERVER),
        };
        self.out.push(b'<');
        self.out.extend_from_slice(prefix.as_bytes());
        self.out.push(b':');
        self.out.extend_from_slice(el.name().as_bytes());
        for (k, v) in el.attrs() {
            // Only plain attributes occur on these elements (from, to, id, type).
            if k.starts_with('{') {
                continue;
            }
            self.out.push(b' ');
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"=\"");
            crate::xml::element::escape_into(&mut self.out, v, true);
            self.out.push(b'"');
        }
        if el.nodes().is_empty() {
            self.out.extend_from_slice(b"/>");
            return;
        }
        self.out.push(b'>');
        for n in el.nodes() {
            match n {
                Node::Element(c) => {
                    let mut c = c.clone();
                    to_server_ns(&mut c);
                    c.write_to(&mut self.out, ns::SERVER)
                }
                Node::Text(t) => crate::xml::element::escape_into(&mut self.out, t, false),
            }
        }
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(prefix.as_bytes());
        self.out.push(b':');
        self.out.extend_from_slice(el.name().as_bytes());
        self.out.push(b'>');
    }

    /// Appends a stanza (held internally in `jabber:client`) in `jabber:server`.
    pub fn queue_stanza(&mut self, el: &Element) {
        let mut el = el.clone();
        to_server_ns(&mut el);
        el.write_to(&mut self.out, ns::SERVER);
    }

    pub async fn send(&mut self, el: &Element) -> Result<(), S2sError> {
        self.queue(el);
        self.flush().await
    }

    pub async fn flush(&mut self) -> Result<(), S2sError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let io = self.io.as_mut().ok_or(S2sError::Closed)?;
        let result = io.write_batch(&self.out, self.write_timeout).await;
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        result
    }

    /// Ends the stream: the stream error if any, our closing tag, and a short wait for
    /// the peer's closing tag before the connection goes.
    pub async fn finish(mut self, how: S2sError) {
        let closing = match &how {
            S2sError::Stream(err) => {
                tracing::info!(peer = %self.peer, "stream error: {err}");
                Some(err.to_element())
            }
            S2sError::Closed => None,
            S2sError::Io(e) => {
                tracing::debug!(peer = %self.peer, "connection lost: {e}");
                return;
            }
        };
        if self.io.is_none() {
            return;
        }
        if !self.header_sent {
            // RFC 6120 §4.9.1.1: even an error right at the start comes after a header.
            let local = self.local.clone();
            self.queue_header(&local, None, None);
        }
        if let Some(el) = closing {
            self.queue(&el);
        }
        self.out.extend_from_slice(b"</stream:stream>");
        if self.flush().await.is_err() {
            return;
        }
        if let Some(io) = self.io.as_mut() {
            io.linger(self.close_wait).await;
        }
    }
}

/// The condition of a `<stream:error/>` we received, for logs.
pub fn describe_stream_error(e: &Element) -> String {
    let cond = e
        .children()
        .find(|c| c.ns() == ns::STREAMS && c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| "undefined".into());
    match e.child_text("text", ns::STREAMS) {
        Some(t) => format!("{cond} ({t})"),
        None => cond,
    }
}

fn map_ns(el: &mut Element, from: &str, to: &str) {
    if el.ns() == from {
        el.set_ns(to);
    }
    for child in el.children_mut() {
        map_ns(child, from, to);
    }
}

/// Stanza read from a server stream: content namespace becomes the internal one.
pub fn to_client_ns(el: &mut Element) {
    map_ns(el, ns::SERVER, ns::CLIENT);
}

/// Stanza about to be written to a server stream.
pub fn to_server_ns(el: &mut Element) {
    map_ns(el, ns::CLIENT, ns::SERVER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_map_both_ways_including_children() {
        let mut m = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
            .with_child(Element::new("ping", ns::PING));
        to_server_ns(&mut m);
        assert_eq!(
            String::from_utf8(m.to_bytes(ns::SERVER)).unwrap(),
            "<message><body>hi</body><ping xmlns=\"urn:xmpp:ping\"/></message>"
        );
        to_client_ns(&mut m);
        assert_eq!(m.ns(), ns::CLIENT);
        assert!(m.has_child("body", ns::CLIENT));
        assert!(m.has_child("ping", ns::PING));
    }
}
