//! XMPP over WebSocket (RFC 7395) against an in-process server: login, chat with a TCP
//! client, and bad input (each gets the protocol's error and a closed connection, and
//! nobody else notices).

mod common;

use common::{Client, TestServer, B64, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use sasl::client::Mechanism;
use starling::xml::reader::parse_element;
use starling::xml::Element;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

async fn start(tweak: impl FnOnce(&mut starling::Config)) -> (TestServer, SocketAddr) {
    let ts = TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".into()];
        tweak(c);
    })
    .await;
    let http = ts.server.as_ref().expect("running").http_addrs[0];
    (ts, http)
}

#[derive(Debug)]
enum WsGot {
    El(Element),
    /// A WebSocket close frame (with its code) or the end of the connection.
    Closed(Option<CloseCode>),
}

struct Ws {
    ws: WebSocketStream<TcpStream>,
    jid: String,
}

impl Ws {
    async fn connect_with(addr: SocketAddr, protocol: Option<&str>) -> Result<Ws, String> {
        let mut req = format!("ws://{addr}/xmpp-websocket")
            .into_client_request()
            .expect("request");
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        let tcp = TcpStream::connect(addr).await.expect("connect");
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, resp)) => {
                assert_eq!(
                    resp.headers()
                        .get("Sec-WebSocket-Protocol")
                        .and_then(|v| v.to_str().ok()),
                    Some("xmpp")
                );
                Ok(Ws {
                    ws,
                    jid: String::new(),
                })
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn connect(addr: SocketAddr) -> Ws {
        Self::connect_with(addr, Some("xmpp"))
            .await
            .expect("handshake")
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    async fn next(&mut self) -> WsGot {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let el = parse_element(t.as_bytes())
                        .unwrap_or_else(|e| panic!("server sent bad XML {t:?}: {e}"));
                    return WsGot::El(el);
                }
                Some(Ok(Message::Close(f))) => return WsGot::Closed(f.map(|f| f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return WsGot::Closed(None),
            }
        }
    }

    async fn el(&mut self) -> Element {
        match self.next().await {
            WsGot::El(e) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        loop {
            let e = self.el().await;
            if pred(&e) {
                return e;
            }
        }
    }

    /// Sends `<open/>`, checks the server's, returns the features.
    async fn open(&mut self) -> Element {
        self.send(OPEN).await;
        let open = self.el().await;
        assert!(open.is("open", FRAMING), "expected <open/>, got {open}");
        assert_eq!(open.attr("from"), Some("localhost"));
        assert_eq!(open.attr("version"), Some("1.0"));
        assert!(open.attr("id").is_some());
        let f = self.el().await;
        assert!(f.is("features", starling::ns::STREAM), "got {f}");
        f
    }

    /// Reads to the end; returns (stream error condition, saw <close/>, close code).
    async fn stream_error(&mut self) -> (Option<String>, bool, Option<CloseCode>) {
        let mut cond = None;
        let mut closed = false;
        loop {
            match self.next().await {
                WsGot::El(e) if e.is("error", starling::ns::STREAM) => {
                    cond = e
                        .children()
                        .find(|c| c.ns() == starling::ns::STREAMS && c.name() != "text")
                        .map(|c| c.name().to_string());
                }
                WsGot::El(e) if e.is("close", FRAMING) => closed = true,
                WsGot::El(_) => {}
                WsGot::Closed(code) => return (cond, closed, code),
            }
        }
    }

    async fn auth(&mut self, mech: &mut dyn Mechanism) -> Element {
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
                    let data = B64.decode(e.text()).expect("base64");
                    let resp = mech.response(&data).expect("challenge");
                    self.send(&format!(
                        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                        B64.encode(resp)
                    ))
                    .await;
                }
                "success" => {
                    let data = B64.decode(e.text()).expect("base64");
                    mech.success(&data).expect("server signature");
                    return e;
                }
                _ => return e,
            }
        }
    }

    /// SCRAM-SHA-256 (or PLAIN), bind, initial presence.
    async fn login(addr: SocketAddr, user: &str, password: &str, plain: bool) -> Ws {
        let mut ws = Ws::connect(addr).await;
        let f = ws.open().await;
        assert!(
            f.child("starttls", starling::ns::TLS).is_none(),
            "STARTTLS offered over WebSocket: {f}"
        );
        let creds = sasl::common::Credentials::default()
            .with_username(user)
            .with_password(password)
            .with_channel_binding(sasl::common::ChannelBinding::None);
        let r = if plain {
            let mut m = sasl::client::mechanisms::Plain::from_credentials(creds).expect("plain");
            ws.auth(&mut m).await
        } else {
            let mut m =
                sasl::client::mechanisms::Scram::<sasl::common::scram::Sha256>::from_credentials(
                    creds,
                )
                .expect("scram");
            ws.auth(&mut m).await
        };
        assert_eq!(r.name(), "success", "login failed: {r}");
        let f = ws.open().await;
        assert!(f.child("bind", starling::ns::BIND).is_some());
        ws.send("<iq type='set' id='b1' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>").await;
        let reply = ws.el().await;
        assert_eq!(reply.attr("type"), Some("result"), "bind: {reply}");
        ws.jid = reply
            .child("bind", starling::ns::BIND)
            .and_then(|b| b.child_text("jid", starling::ns::BIND))
            .expect("jid");
        ws.send("<presence xmlns='jabber:client'/>").await;
        let me = ws.jid.clone();
        ws.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
            .await;
        ws
    }
}

use base64::Engine;

#[tokio::test]
async fn websocket_client_chats_with_tcp_client() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("alice", "wonderland");
    ts.add_user("bob", "builder");
    let mut alice = Ws::login(http, "alice", "wonderland", false).await;
    assert_eq!(alice.jid, "alice@localhost/web");
    let mut bob = Client::login(ts.c2s, "bob", "builder", "tcp").await;
    bob.available().await;

    alice
        .send("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat' id='m1'><body>hello from the web</body></message>")
        .await;
    let m = bob.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/web"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("hello from the web")
    );

    bob.send("<message to='alice@localhost/web' type='chat' id='m2'><body>hello from tcp &amp; co</body></message>").await;
    let m = alice.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.ns(), starling::ns::CLIENT);
    assert_eq!(m.attr("from"), Some("bob@localhost/tcp"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("hello from tcp & co")
    );

    // A stanza without xmlns is read as jabber:client (some clients leave it out).
    alice
        .send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = alice.wait_for(|e| e.attr("id") == Some("p1")).await;
    assert_eq!(pong.attr("type"), Some("result"));

    // RFC 7395 §3.6: the client closes, the server answers <close/> and the socket ends.
    alice.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    let (cond, closed, _) = alice.stream_error().await;
    assert_eq!(cond, None);
    assert!(closed, "no <close/> from the server");
    ts.stop().await;
}

/// A room's groupchat message is shared by all occupants' queues; a WebSocket occupant
/// gets it as a standalone, namespaced frame addressed to itself.
#[tokio::test]
async fn websocket_occupant_gets_groupchat() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("alice", "wonderland");
    ts.add_user("bob", "builder");
    let room = "den@conference.localhost";
    let mut bob = Client::login(ts.c2s, "bob", "builder", "tcp").await;
    bob.send(&format!(
        "<presence to='{room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    bob.wait_for(|e| e.name() == "message" && e.has_child("subject", starling::ns::CLIENT))
        .await;
    let created = bob
        .iq(
            &format!("<iq type='set' id='inst' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
            "inst",
        )
        .await;
    assert_eq!(created.attr("type"), Some("result"), "{created}");
    let mut alice = Ws::login(http, "alice", "wonderland", false).await;
    alice
        .send(&format!(
            "<presence xmlns='jabber:client' to='{room}/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    alice
        .wait_for(|e| e.name() == "message" && e.has_child("subject", starling::ns::CLIENT))
        .await;
    bob.send(&format!(
        "<message to='{room}' type='groupchat' id='g1'><body>all &lt;here&gt;</body></message>"
    ))
    .await;
    let m = alice
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("groupchat"))
        .await;
    assert_eq!(m.ns(), starling::ns::CLIENT);
    assert_eq!(m.attr("to"), Some("alice@localhost/web"));
    assert_eq!(m.attr("from"), Some(format!("{room}/Bob").as_str()));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("all <here>")
    );
    let echo = bob
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("groupchat"))
        .await;
    assert_eq!(echo.attr("to"), Some("bob@localhost/tcp"));
    ts.stop().await;
}

#[tokio::test]
async fn websocket_plain_login_and_wrong_password() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("carol", "secret");
    let carol = Ws::login(http, "carol", "secret", true).await;
    assert_eq!(carol.jid, "carol@localhost/web");

    let mut ws = Ws::connect(http).await;
    ws.open().await;
    let creds = sasl::common::Credentials::default()
        .with_username("carol")
        .with_password("wrong")
        .with_channel_binding(sasl::common::ChannelBinding::None);
    let mut m = sasl::client::mechanisms::Plain::from_credentials(creds).expect("plain");
    let r = ws.auth(&mut m).await;
    assert_eq!(r.name(), "failure");
    assert!(r.child("not-authorized", starling::ns::SASL).is_some());
    ts.stop().await;
}

#[tokio::test]
async fn unencrypted_websocket_gets_no_mechanisms_when_encryption_is_required() {
    let (ts, http) = start(|c| c.http.loopback_is_secure = false).await;
    let mut ws = Ws::connect(http).await;
    let f = ws.open().await;
    assert!(f.child("starttls", starling::ns::TLS).is_none(), "{f}");
    assert!(f.child("mechanisms", starling::ns::SASL).is_none(), "{f}");
    ws.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
        .await;
    let r = ws.el().await;
    assert!(
        r.child("encryption-required", starling::ns::SASL).is_some(),
        "{r}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn bad_websocket_input_is_a_stream_error_and_disturbs_nobody() {
    let (ts, http) = start(|c| c.limits.max_stanza_bytes = 16 * 1024).await;
    ts.add_user("dave", "pw");
    ts.add_user("erin", "pw");
    let mut dave = Client::login(ts.c2s, "dave", "pw", "tcp").await;
    dave.available().await;
    let mut erin = Ws::login(http, "erin", "pw", false).await;

    // Not XML at all.
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    ws.send("hello, is this IRC?").await;
    let (cond, closed, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("not-well-formed"));
    assert!(closed);

    // Not XML even before the stream is opened: our <open/> comes first, then the error.
    let mut ws = Ws::connect(http).await;
    ws.send("<message><body>unclosed").await;
    let open = ws.el().await;
    assert!(open.is("open", FRAMING));
    let (cond, closed, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("not-well-formed"));
    assert!(closed);

    // A TCP-style stream header is not RFC 7395 framing.
    let mut ws = Ws::connect(http).await;
    ws.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    let (cond, _, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("not-well-formed"));

    // Binary messages.
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    ws.ws
        .send(Message::binary(b"<presence/>".to_vec()))
        .await
        .expect("send");
    let (cond, closed, code) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("bad-format"));
    assert!(closed);
    assert_eq!(code, Some(CloseCode::Unsupported));

    // A message over the stanza limit (checked before parsing).
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    let big = format!(
        "<message xmlns='jabber:client' to='dave@localhost'><body>{}</body></message>",
        "x".repeat(20 * 1024)
    );
    ws.send(&big).await;
    let (cond, closed, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("policy-violation"));
    assert!(closed);

    // Far over it: tungstenite's own cap; still the XMPP error.
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    let _ = ws.ws.send(Message::text("y".repeat(64 * 1024))).await;
    let (cond, _, code) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("policy-violation"));
    assert_eq!(code, Some(CloseCode::Size));

    // A stanza before authentication.
    let mut ws = Ws::connect(http).await;
    ws.open().await;
    ws.send("<message xmlns='jabber:client' to='dave@localhost'><body>spam</body></message>")
        .await;
    let (cond, _, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("not-authorized"));

    // Wrong host in <open/>.
    let mut ws = Ws::connect(http).await;
    ws.send(
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='elsewhere.example' version='1.0'/>",
    )
    .await;
    let (cond, _, _) = ws.stream_error().await;
    assert_eq!(cond.as_deref(), Some("host-unknown"));

    // Subprotocols: none, or another one, is refused at the handshake.
    assert!(Ws::connect_with(http, None).await.is_err());
    assert!(Ws::connect_with(http, Some("mqtt")).await.is_err());
    let refused = raw_http(
        http,
        "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let plain_get = raw_http(
        http,
        "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(plain_get.starts_with("HTTP/1.1 426"), "{plain_get}");

    // Through all of that, the two sessions carried on.
    erin.send("<message xmlns='jabber:client' to='dave@localhost/tcp' type='chat'><body>still here</body></message>").await;
    let m = dave.wait_for(|e| e.name() == "message").await;
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("still here")
    );
    dave.send("<message to='erin@localhost/web' type='chat'><body>me too</body></message>")
        .await;
    let m = erin.wait_for(|e| e.name() == "message").await;
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("me too")
    );
    ts.stop().await;
}

/// Sends raw bytes, returns everything until the server closes.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http_limits_huge_headers_and_slow_requests() {
    let (ts, http) = start(|c| {
        c.http.request_timeout_secs = 1;
        c.http.max_header_bytes = 8192;
    })
    .await;
    ts.add_user("frank", "pw");
    let mut frank = Client::login(ts.c2s, "frank", "pw", "tcp").await;

    // Huge headers: 431 and the connection closes.
    let huge = format!(
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut tcp = TcpStream::connect(http).await.expect("connect");
    let _ = tcp.write_all(huge.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // Slowloris: a request head that never completes is cut off.
    let mut tcp = TcpStream::connect(http).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: local")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(TIMEOUT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a partial request kept its connection"),
        }
    }
    assert!(started.elapsed() < TIMEOUT);

    // And the server still answers everyone else.
    let ok = raw_http(
        http,
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let pong = frank
        .iq(
            "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    ts.stop().await;
}

#[tokio::test]
async fn host_meta_names_both_endpoints() {
    let (ts, http) = start(|_| {}).await;
    let xrd = raw_http(
        http,
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: chat.example:5280\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(xrd.starts_with("HTTP/1.1 200"), "{xrd}");
    let body = &xrd[xrd.find("\r\n\r\n").expect("body") + 4..];
    let doc = parse_element(body.as_bytes()).expect("XRD parses");
    let links: Vec<(String, String)> = doc
        .children()
        .map(|l| {
            (
                l.attr("rel").unwrap_or("").to_string(),
                l.attr("href").unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(links.contains(&(
        "urn:xmpp:alt-connections:websocket".into(),
        "ws://chat.example:5280/xmpp-websocket".into()
    )));
    assert!(links.contains(&(
        "urn:xmpp:alt-connections:xbosh".into(),
        "http://chat.example:5280/http-bind".into()
    )));

    let jrd = raw_http(
        http,
        "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: chat.example:5280\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = &jrd[jrd.find("\r\n\r\n").expect("body") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let hrefs: Vec<&str> = v["links"]
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["href"].as_str())
        .collect();
    assert!(hrefs.contains(&"ws://chat.example:5280/xmpp-websocket"));
    assert!(hrefs.contains(&"http://chat.example:5280/http-bind"));

    // A Host header with markup in it is not echoed back.
    let evil = raw_http(
        http,
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: x'><script>\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!evil.contains("<script>"), "{evil}");
    ts.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websocket_sessions() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("gina", "pw");
    let mut gina = Ws::login(http, "gina", "pw", false).await;
    let stop = tokio::spawn(ts.stop());
    let (cond, closed, _) = gina.stream_error().await;
    assert_eq!(cond.as_deref(), Some("system-shutdown"));
    assert!(closed);
    tokio::time::timeout(Duration::from_secs(20), stop)
        .await
        .expect("shutdown finishes")
        .expect("no panic");
}

/// RFC 7395 §3.5: WebSocket pings are the keepalive of this transport, so a client that
/// sends only pings keeps its session past the idle timeout; one that sends nothing at
/// all is closed with `connection-timeout`.
#[tokio::test]
async fn websocket_pings_keep_an_idle_session_alive() {
    let (ts, http) = start(|c| {
        c.limits.idle_timeout_secs = 10;
        c.http.bosh_max_wait_secs = 5;
    })
    .await;
    ts.add_user("pinger", "pw");
    ts.add_user("silent", "pw");
    let mut pinger = Ws::login(http, "pinger", "pw", false).await;
    let mut silent = Ws::login(http, "silent", "pw", false).await;
    for _ in 0..7 {
        pinger
            .ws
            .send(Message::Ping(b"ka".to_vec().into()))
            .await
            .expect("ping");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Fourteen seconds on, past the idle timeout: the silent one is gone...
    let (cond, closed, _) = silent.stream_error().await;
    assert_eq!(cond.as_deref(), Some("connection-timeout"));
    assert!(closed, "no <close/> after the stream error");
    // ...and the pinging one still answers.
    pinger
        .send("<iq xmlns='jabber:client' type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = pinger.wait_for(|e| e.attr("id") == Some("alive")).await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    ts.stop().await;
}
