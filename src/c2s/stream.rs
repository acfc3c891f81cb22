//! The byte side of a client stream: socket, TLS upgrade, reader, and batched writes.
//!
//! A stream runs over one of two transports. `Stream` is a TCP (or TLS) byte stream
//! parsed incrementally. `Framed` is a pair of channels to an HTTP transport (RFC 7395
//! WebSocket, XEP-0206 BOSH) that delivers whole, already parsed top-level elements and
//! takes whole serialised elements back: the negotiation and session code above is the
//! same for both, so web clients get the same auth, routing and limits as TCP clients.

use crate::net::MaybeTls;
use crate::ns;
use crate::sasl::ChannelBindings;
use crate::sessions::SharedStanza;
use crate::stanza::StreamError;
use crate::xml::reader::{Limits, StreamEvent, StreamHeader, StreamReader};
use crate::xml::Element;
use crate::ServerState;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Largest element accepted before authentication. Nothing a client legitimately sends
/// then (stream headers, STARTTLS, SASL, in-band registration) comes near it, and it
/// bounds what an unauthenticated connection can make us hold; the configured
/// `max_stanza_bytes` applies once the client has authenticated.
pub const PREAUTH_MAX_STANZA: usize = 16 * 1024;
/// What the output buffer starts with once something is queued (most writes fit).
const OUT_INITIAL: usize = 512;

/// Why a client stream stops (the same as a server stream's).
pub type C2sError = crate::net::StreamEnd;

/// What an HTTP transport hands the stream: a top-level event, or the stream error its
/// framing or limits call for (the stream then ends with that error).
pub type Incoming = Result<StreamEvent, StreamError>;

/// One item on an HTTP transport's way into the stream.
#[derive(Debug)]
pub enum Inbound {
    Event(Incoming),
    /// The client showed it is alive without sending XML (a WebSocket ping, an empty
    /// BOSH request): the stream's idle timer starts again, nothing else happens.
    KeepAlive,
}

impl From<Incoming> for Inbound {
    fn from(ev: Incoming) -> Inbound {
        Inbound::Event(ev)
    }
}

/// What the stream hands an HTTP transport, in order.
#[derive(Debug)]
pub enum Frame {
    /// The stream's response header (WebSocket `<open/>`, BOSH session creation).
    Open { id: String },
    /// One serialised top-level element whose namespaces are all declared on it.
    Xml(String),
    /// A serialised `<stream:error/>`; `Close` follows.
    Error(String),
    /// The server's end of the stream.
    Close,
}

/// The stream's end of an HTTP transport.
pub struct Framed {
    pub incoming: mpsc::Receiver<Inbound>,
    pub outgoing: mpsc::Sender<Frame>,
    /// Whether the stream counts as encrypted for `require_encryption` (TLS on the HTTP
    /// listener, or a trusted path to a TLS-terminating proxy; see `[http]`).
    pub secure: bool,
    /// Channel bindings of the HTTP listener's TLS connection, if it has one.
    pub bindings: ChannelBindings,
}

struct FramedState {
    end: Framed,
    pending: VecDeque<StreamEvent>,
    out: Vec<Frame>,
}

thread_local! {
    /// One output buffer per runtime thread, lent to whichever session writes next: a
    /// write then needs no allocation, and sessions between writes hold none.
    static SPARE_OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A buffer is only kept for reuse up to this size; a rare large write gives its memory back.
const OUT_KEEP: usize = 16 * 1024;

/// An empty output buffer: this thread's spare if it has one.
fn out_buffer() -> Vec<u8> {
    let spare = SPARE_OUT.with(|s| s.take());
    if spare.capacity() == 0 {
        Vec::with_capacity(OUT_INITIAL)
    } else {
        spare
    }
}

/// Hands a written buffer back as this thread's spare (or frees it).
fn recycle_out_buffer(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > OUT_KEEP {
        return;
    }
    buf.clear();
    SPARE_OUT.with(|s| s.set(buf));
}

pub struct Conn {
    /// `Some` when the stream runs over an HTTP transport; `io` is then `None`.
    framed: Option<FramedState>,
    io: Option<MaybeTls>,
    reader: StreamReader,
    /// Empty (no allocation) between writes: see `flush`.
    out: Vec<u8>,
    peer: SocketAddr,
    bindings: ChannelBindings,
    header_sent: bool,
    stream_id: u64,
    domain: String,
    /// A peer that does not drain its socket for this long is gone as far as we care.
    write_timeout: Duration,
    /// How long a closed stream waits for the peer's closing tag (`limits.close_wait_ms`).
    close_wait: Duration,
}

impl Conn {
    pub fn new(server: &ServerState, tcp: TcpStream, peer: SocketAddr) -> Conn {
        let l = &server.config.limits;
        Conn {
            framed: None,
            io: Some(MaybeTls::Plain(tcp)),
            reader: StreamReader::new(Self::limits(server, true)),
            out: Vec::new(),
            peer,
            bindings: ChannelBindings::default(),
            header_sent: false,
            stream_id: 0,
            domain: server.config.domain.clone(),
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            close_wait: Duration::from_millis(l.close_wait_ms),
        }
    }

    fn limits(server: &ServerState, preauth: bool) -> Limits {
        let l = &server.config.limits;
        Limits {
            max_stanza_bytes: if preauth {
                l.max_stanza_bytes.min(PREAUTH_MAX_STANZA)
            } else {
                l.max_stanza_bytes
            },
            max_depth: l.max_depth,
            max_attrs: l.max_attrs,
        }
    }

    /// SASL succeeded: the stream restarts with the configured stanza size limit.
    pub fn restart_authenticated(&mut self, server: &ServerState) {
        self.restart();
        self.reader.set_limits(Self::limits(server, false));
    }

    /// A stream over an HTTP transport (WebSocket or BOSH).
    pub fn framed(server: &ServerState, end: Framed, peer: SocketAddr) -> Conn {
        let l = &server.config.limits;
        Conn {
            bindings: end.bindings.clone(),
            framed: Some(FramedState {
                end,
                pending: VecDeque::new(),
                out: Vec::new(),
            }),
            io: None,
            // Unused by framed streams (the transport parses), so kept minimal.
            reader: StreamReader::new(Limits {
                max_stanza_bytes: l.max_stanza_bytes,
                max_depth: l.max_depth,
                max_attrs: l.max_attrs,
            }),
            out: Vec::new(),
            peer,
            header_sent: false,
            stream_id: 0,
            domain: server.config.domain.clone(),
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            close_wait: Duration::from_millis(l.close_wait_ms),
        }
    }

    /// Whether the stream counts as encrypted (TLS, or an HTTP transport trusted as such).
    pub fn is_tls(&self) -> bool {
        match &self.framed {
            Some(f) => f.end.secure,
            None => self.io.as_ref().is_some_and(MaybeTls::is_tls),
        }
    }

    /// STARTTLS exists only on TCP streams: an HTTP transport's TLS belongs to HTTP.
    pub fn can_starttls(&self) -> bool {
        self.framed.is_none() && !self.is_tls()
    }

    pub fn bindings(&self) -> &ChannelBindings {
        &self.bindings
    }

    /// TLS from the first byte (XEP-0368).
    pub async fn start_tls(&mut self, server: &ServerState) -> Result<(), C2sError> {
        let tcp = match self.io.take() {
            Some(MaybeTls::Plain(tcp)) => tcp,
            other => {
                self.io = other;
                return Err(C2sError::Closed);
            }
        };
        let accept = server.tls.acceptor.accept(crate::net::Tcp(tcp));
        let tls = tokio::time::timeout(crate::net::TLS_HANDSHAKE_TIMEOUT, accept)
            .await
            .map_err(|_| C2sError::Closed)??;
        self.bindings = server.tls.bindings(&tls);
        self.io = Some(MaybeTls::Tls(Box::new(tls)));
        Ok(())
    }

    /// STARTTLS after `<proceed/>` went out: the old stream is gone (RFC 6120 §5.4.3.3).
    pub async fn start_tls_after_proceed(&mut self, server: &ServerState) -> Result<(), C2sError> {
        self.flush().await?;
        if self.reader.buffered() > 0 {
            // Bytes after <starttls/> and before the handshake would be injected into the
            // encrypted stream's view: refuse them.
            return Err(C2sError::Stream(StreamError::new("policy-violation")));
        }
        self.start_tls(server).await?;
        self.restart();
        Ok(())
    }

    /// A stream restart (after TLS or SASL): the next thing is a new header.
    pub fn restart(&mut self) {
        // A framed transport's events are whole elements, so what the client pipelined
        // after the restart (its new <open/>) stays queued.
        self.reader.reset();
        self.header_sent = false;
    }

    /// Reads once from the socket (or the HTTP transport) into the parser. Cancel-safe:
    /// the session loop races it against outbound traffic.
    pub async fn read_some(&mut self) -> Result<(), C2sError> {
        // Input the parser has already consumed does not keep its buffers.
        self.reader.release_idle();
        if let Some(f) = self.framed.as_mut() {
            // mpsc::Receiver::recv is cancel-safe, like the socket read.
            return match f.end.incoming.recv().await {
                Some(Inbound::Event(Ok(ev))) => {
                    f.pending.push_back(ev);
                    Ok(())
                }
                Some(Inbound::Event(Err(e))) => Err(C2sError::Stream(e)),
                Some(Inbound::KeepAlive) => Ok(()),
                None => Err(C2sError::Closed),
            };
        }
        let io = self.io.as_mut().ok_or(C2sError::Closed)?;
        io.read_into(&mut self.reader).await
    }

    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, C2sError> {
        if let Some(f) = self.framed.as_mut() {
            return Ok(f.pending.pop_front());
        }
        Ok(self.reader.next_event()?)
    }

    /// The next top-level event, reading as needed. During negotiation replies are only
    /// queued; they are written here, once nothing the client already sent is left to
    /// handle, so that what one read asked for goes out in one write (header and
    /// features, or everything a pipelining client asked for at once).
    async fn next_event_wait(&mut self) -> Result<StreamEvent, C2sError> {
        loop {
            if let Some(ev) = self.next_event()? {
                return Ok(ev);
            }
            self.flush().await?;
            self.read_some().await?;
        }
    }

    pub async fn expect_header(&mut self) -> Result<StreamHeader, C2sError> {
        match self.next_event_wait().await? {
            StreamEvent::Open(h) => Ok(h),
            StreamEvent::Close => Err(C2sError::Closed),
            StreamEvent::Element(_) => Err(C2sError::Stream(StreamError::new("not-well-formed"))),
        }
    }

    pub async fn expect_element(&mut self) -> Result<Element, C2sError> {
        match self.next_event_wait().await? {
            StreamEvent::Element(e) => Ok(e),
            StreamEvent::Close => Err(C2sError::Closed),
            StreamEvent::Open(_) => Err(C2sError::Stream(StreamError::new("not-well-formed"))),
        }
    }

    /// Queues our response stream header (RFC 6120 §4.7).
    pub fn queue_header(&mut self, server: &ServerState, to: Option<&str>) {
        use rand::Rng;
        self.stream_id = rand::thread_rng().gen();
        if let Some(f) = self.framed.as_mut() {
            f.out.push(Frame::Open {
                id: format!("{:016x}", self.stream_id),
            });
            self.header_sent = true;
            return;
        }
        let mut h = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{:016x}' from='{}' version='1.0' xml:lang='en'",
            ns::CLIENT,
            ns::STREAM,
            self.stream_id,
            crate::xml::element::escape(&server.config.domain),
        );
        if let Some(to) = to.filter(|t| jid::Jid::new(t).is_ok()) {
            h.push_str(&format!(" to='{}'", crate::xml::element::escape(to)));
        }
        h.push('>');
        self.out.extend_from_slice(h.as_bytes());
        self.header_sent = true;
    }

    /// Appends a shared stanza addressed to `to` (see [`SharedStanza`]).
    pub fn queue_shared(&mut self, shared: &SharedStanza, to: &str) {
        if self.framed.is_some() {
            return self.queue(&shared.to_element(to));
        }
        if self.out.capacity() == 0 {
            self.out = out_buffer();
        }
        shared.write_client(&mut self.out, to);
    }

    /// Appends an element to the output buffer (stream-level elements get the `stream:`
    /// prefix clients expect).
    pub fn queue(&mut self, el: &Element) {
        if let Some(f) = self.framed.as_mut() {
            f.out.push(Frame::Xml(
                String::from_utf8_lossy(&framed_bytes(el)).into_owned(),
            ));
            return;
        }
        if self.out.capacity() == 0 {
            self.out = out_buffer();
        }
        if el.ns() == ns::STREAM {
            self.out.extend_from_slice(b"<stream:");
            self.out.extend_from_slice(el.name().as_bytes());
            self.out.push(b'>');
            for child in el.children() {
                child.write_to(&mut self.out, ns::CLIENT);
            }
            self.out.extend_from_slice(b"</stream:");
            self.out.extend_from_slice(el.name().as_bytes());
            self.out.push(b'>');
        } else {
            el.write_to(&mut self.out, ns::CLIENT);
        }
    }

    /// Drops output not yet written: a session handed over to a resuming connection
    /// must not also reach the abandoned one.
    pub fn discard_output(&mut self) {
        self.out.clear();
        if let Some(f) = self.framed.as_mut() {
            f.out.clear();
        }
    }

    pub async fn flush(&mut self) -> Result<(), C2sError> {
        if let Some(f) = self.framed.as_mut() {
            for frame in f.out.drain(..) {
                // A transport that stops taking frames is a peer that stopped reading.
                match tokio::time::timeout(self.write_timeout, f.end.outgoing.send(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(C2sError::Closed),
                    Err(_) => return Err(C2sError::timed_out()),
                }
            }
            return Ok(());
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let io = self.io.as_mut().ok_or(C2sError::Closed)?;
        let result = io.write_batch(&self.out, self.write_timeout).await;
        // Nothing stays allocated by an idle session: the buffer goes back to this
        // thread's spare for the next write (see `out_buffer`).
        recycle_out_buffer(std::mem::take(&mut self.out));
        result
    }

    /// Ends the stream: the stream error if any, our closing tag, and a short wait for
    /// the peer's own closing tag before the connection goes.
    pub async fn finish(mut self, how: C2sError) {
        let closing = match &how {
            C2sError::Stream(err) => {
                tracing::info!(peer = %self.peer, "stream error: {err}");
                Some(err.to_element())
            }
            C2sError::Closed => None,
            C2sError::Io(e) => {
                tracing::debug!(peer = %self.peer, "connection lost: {e}");
                return;
            }
        };
        if let Some(mut f) = self.framed.take() {
            if !self.header_sent {
                // RFC 7395 §3.6 / RFC 6120 §4.9.1.1: an error comes after our header.
                use rand::Rng;
                let id: u64 = rand::thread_rng().gen();
                f.out.insert(
                    0,
                    Frame::Open {
                        id: format!("{id:016x}"),
                    },
                );
            }
            if let Some(el) = closing {
                f.out.push(Frame::Error(
                    String::from_utf8_lossy(&framed_bytes(&el)).into_owned(),
                ));
            }
            f.out.push(Frame::Close);
            for frame in f.out.drain(..) {
                let send = f.end.outgoing.send(frame);
                if !matches!(
                    tokio::time::timeout(self.write_timeout, send).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            // Dropping our end tells the transport nothing more is coming.
            return;
        }
        if self.io.is_none() {
            return;
        }
        if !self.header_sent {
            // RFC 6120 §4.9.1.1: even an error right at the start comes after our header.
            let domain = crate::xml::element::escape(&self.domain);
            self.out.extend_from_slice(
                format!(
                    "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' version='1.0' from='{}'>",
                    ns::CLIENT,
                    ns::STREAM,
                    domain
                )
                .as_bytes(),
            );
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

/// Serialises a top-level element so that it stands alone, as a WebSocket message or a
/// child of a BOSH `<body/>` must: every namespace declared on it, and stream-level
/// elements written as `<stream:features xmlns:stream=...>` the way clients look for them.
pub fn framed_bytes(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if el.ns() == ns::STREAM {
        out.extend_from_slice(b"<stream:");
        out.extend_from_slice(el.name().as_bytes());
        out.extend_from_slice(b" xmlns:stream='");
        out.extend_from_slice(ns::STREAM.as_bytes());
        out.extend_from_slice(b"'>");
        for child in el.children() {
            child.write_to(&mut out, "");
        }
        out.extend_from_slice(b"</stream:");
        out.extend_from_slice(el.name().as_bytes());
        out.push(b'>');
    } else {
        el.write_to(&mut out, "");
    }
    out
}
