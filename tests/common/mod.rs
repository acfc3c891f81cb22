//! Test support: an in-process server on ephemeral ports with a temporary data dir, and a
//! raw XMPP client that speaks XML over TCP/TLS so tests can assert on exact stanzas.
#![allow(dead_code)]

pub mod muc;

use base64::Engine;
use rustls::pki_types::ServerName;
use sasl::client::Mechanism;
use starling::net::tls::UnverifiedServerCert;
use starling::xml::reader::{Limits, StreamEvent, StreamReader};
use starling::xml::Element;
use starling::{accounts, Config, Server};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub const TIMEOUT: Duration = Duration::from_secs(15);

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in_with(dir, tweak).await
    }

    /// Starts a server on an existing data directory (restart tests: pair with
    /// `stop_keep_dir`).
    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        Self::start_in_with(dir, |_| {}).await
    }

    pub async fn start_in_with(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.c2s.listen = vec!["127.0.0.1:0".into()];
        config.c2s.direct_tls_listen = vec!["127.0.0.1:0".into()];
        config.s2s.listen = vec![];
        config.http.listen = vec![];
        // Failed logins are delayed in production; tests need not wait.
        config.limits.auth_failure_delay_ms = 10;
        // Test clients are often still connected, and silent, when their server stops:
        // waiting the production 2 s for each one's closing tag only slows the suite.
        config.limits.close_wait_ms = 250;
        tweak(&mut config);
        let server = Server::start(config).await.expect("server starts");
        TestServer {
            c2s: server.c2s_addrs[0],
            c2s_tls: server.c2s_tls_addrs[0],
            server: Some(server),
            dir,
        }
    }

    /// Stops the server and hands back its data directory instead of deleting it.
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }

    pub fn state(&self) -> &starling::ServerState {
        &self.server.as_ref().expect("running").state
    }

    pub fn add_user(&self, user: &str, password: &str) {
        let state = self.state();
        let jid = accounts::local_jid(user, &state.config.domain).expect("jid");
        accounts::create(&state.store, &jid, password).expect("create account");
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServerCert::new(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    None,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::None => Poll::Ready(Ok(0)),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::None => Poll::Ready(Ok(())),
        }
    }
}

/// What the server sent next.
#[derive(Debug)]
pub enum Got {
    Header(Vec<(String, String)>),
    El(Element),
    Closed,
}

pub struct Client {
    pub io: Io,
    reader: StreamReader,
    pub jid: String,
    pub exporter: Option<Vec<u8>>,
    /// The domain named in stream headers (`to`).
    pub domain: String,
}

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 16 << 20,
        max_depth: 1000,
        max_attrs: 1000,
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).ok();
        Client {
            io: Io::Plain(tcp),
            reader: StreamReader::new(limits()),
            jid: String::new(),
            exporter: None,
            domain: "localhost".into(),
        }
    }

    /// Wraps a connection someone made to us (a test playing a peer server).
    pub fn from_tcp(tcp: TcpStream) -> Client {
        tcp.set_nodelay(true).ok();
        Client {
            io: Io::Plain(tcp),
            reader: StreamReader::new(limits()),
            jid: String::new(),
            exporter: None,
            domain: "localhost".into(),
        }
    }

    /// STARTTLS's TLS handshake, client side, after `<proceed/>`.
    pub async fn upgrade_tls(&mut self) {
        self.upgrade().await;
    }

    pub async fn connect_tls(addr: SocketAddr) -> Client {
        let mut c = Self::connect(addr).await;
        c.upgrade().await;
        c
    }

    async fn upgrade(&mut self) {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::None) else {
            panic!("already TLS")
        };
        let name = ServerName::try_from("localhost").expect("name");
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (_, conn) = tls.get_ref();
        self.exporter = conn
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
            .map(|k| k.to_vec());
        self.io = Io::Tls(Box::new(tls));
        self.reader.reset();
    }

    /// Expects a new stream from the server (after SASL success).
    pub fn restart(&mut self) {
        self.reader.reset();
    }

    pub async fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        self.io.write_all(data).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Like `send_bytes` but tolerates the server having closed the connection.
    pub async fn try_send_bytes(&mut self, data: &[u8]) -> bool {
        self.io.write_all(data).await.is_ok() && self.io.flush().await.is_ok()
    }

    pub async fn next(&mut self) -> Got {
        let mut buf = vec![0u8; 16384];
        loop {
            match self.reader.next_event() {
                Ok(Some(StreamEvent::Open(h))) => return Got::Header(h.attrs.clone()),
                Ok(Some(StreamEvent::Element(e))) => return Got::El(e),
                Ok(Some(StreamEvent::Close)) => return Got::Closed,
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let n = match tokio::time::timeout(TIMEOUT, self.io.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("timed out waiting for the server"),
            };
            if n == 0 {
                return Got::Closed;
            }
            self.reader.feed(&buf[..n]);
        }
    }

    /// Like `next`, but `None` when nothing complete arrives within `wait`. Only the
    /// socket read is timed, so nothing is ever half-consumed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Got> {
        let mut buf = vec![0u8; 16384];
        loop {
            match self.reader.next_event() {
                Ok(Some(StreamEvent::Open(h))) => return Some(Got::Header(h.attrs.clone())),
                Ok(Some(StreamEvent::Element(e))) => return Some(Got::El(e)),
                Ok(Some(StreamEvent::Close)) => return Some(Got::Closed),
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let n = match tokio::time::timeout(wait, self.io.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => return None,
            };
            if n == 0 {
                return Some(Got::Closed);
            }
            self.reader.feed(&buf[..n]);
        }
    }

    pub async fn el(&mut self) -> Element {
        match self.next().await {
            Got::El(e) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Next element that matches `pred` (skipping others, e.g. presence noise).
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        loop {
            let e = self.el().await;
            if pred(&e) {
                return e;
            }
        }
    }

    /// Opens a stream; returns the features.
    pub async fn open(&mut self) -> Element {
        self.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>", self.domain)).await;
        match self.next().await {
            Got::Header(_) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let f = self.el().await;
        assert_eq!(f.name(), "features");
        f
    }

    /// Reads until the stream ends; returns the stream error condition, if any.
    pub async fn stream_error(&mut self) -> Option<String> {
        let mut cond = None;
        loop {
            match self.next().await {
                Got::El(e) if e.name() == "error" && e.ns() == starling::ns::STREAM => {
                    cond = e
                        .children()
                        .find(|c| c.ns() == starling::ns::STREAMS && c.name() != "text")
                        .map(|c| c.name().to_string());
                }
                Got::Closed => return cond,
                _ => {}
            }
        }
    }

    pub async fn starttls(&mut self) -> Element {
        self.open().await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.el().await;
        assert_eq!(p.name(), "proceed");
        self.upgrade().await;
        self.open().await
    }

    /// SASL with a `sasl`-crate client mechanism; returns the success or failure element.
    pub async fn auth(&mut self, mech: &mut dyn Mechanism) -> Element {
        let initial = mech.initial();
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            mech.name(),
            B64.encode(initial)
        ))
        .await;
        loop {
            let e = self.el().await;
            match e.name() {
                "challenge" => {
                    let data = B64.decode(e.text()).expect("base64 challenge");
                    let resp = mech.response(&data).expect("client accepts challenge");
                    self.send(&format!(
                        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                        B64.encode(resp)
                    ))
                    .await;
                }
                "success" => {
                    let data = B64.decode(e.text()).expect("base64 success");
                    mech.success(&data).expect("server signature verifies");
                    // RFC 6120 §6.4.6: both sides restart the stream after success.
                    self.reader.reset();
                    return e;
                }
                _ => return e,
            }
        }
    }

    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        self.open().await;
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        ))
        .await;
        let reply = self.el().await;
        assert_eq!(reply.attr("type"), Some("result"), "bind failed: {reply}");
        let jid = reply
            .child("bind", starling::ns::BIND)
            .and_then(|b| b.child_text("jid", starling::ns::BIND))
            .expect("bound jid");
        self.jid = jid.clone();
        jid
    }

    /// STARTTLS, SCRAM-SHA-256, bind, initial presence.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        Self::login_at(addr, "localhost", user, password, resource).await
    }

    /// `login` to a server whose domain is not "localhost".
    pub async fn login_at(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        let mut c = Self::connect(addr).await;
        c.domain = domain.to_string();
        c.starttls().await;
        let creds = sasl::common::Credentials::default()
            .with_username(user)
            .with_password(password)
            .with_channel_binding(sasl::common::ChannelBinding::None);
        let mut mech =
            sasl::client::mechanisms::Scram::<sasl::common::scram::Sha256>::from_credentials(creds)
                .expect("mechanism");
        let r = c.auth(&mut mech).await;
        assert_eq!(r.name(), "success", "login failed: {r}");
        c.bind(Some(resource)).await;
        c
    }

    /// Sends available presence and waits for its reflection.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        let me = self.jid.clone();
        self.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
            .await;
    }

    pub async fn iq(&mut self, xml: &str, id: &str) -> Element {
        self.send(xml).await;
        self.wait_for(|e| e.name() == "iq" && e.attr("id") == Some(id))
            .await
    }
}

pub fn stanza_error(e: &Element) -> Option<String> {
    e.child("error", starling::ns::CLIENT).and_then(|err| {
        err.children()
            .find(|c| c.ns() == starling::ns::STANZAS && c.name() != "text")
            .map(|c| c.name().to_string())
    })
}
