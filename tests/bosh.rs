//! BOSH (XEP-0124/0206) against an in-process server, with a small scripted HTTP client:
//! login, chat with a TCP client, a lost request recovered by resending its rid, idle
//! sessions timing out, and bad requests.

mod common;

use base64::Engine;
use common::{Client, TestServer, B64, TIMEOUT};
use starling::xml::reader::parse_element;
use starling::xml::Element;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

async fn start(tweak: impl FnOnce(&mut starling::Config)) -> (TestServer, SocketAddr) {
    let ts = TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".into()];
        tweak(c);
    })
    .await;
    let http = ts.server.as_ref().expect("running").http_addrs[0];
    (ts, http)
}

/// One POST on its own connection; returns (status, body).
async fn post(addr: SocketAddr, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let body = text
        .find("\r\n\r\n")
        .map(|i| text[i + 4..].to_string())
        .unwrap_or_default();
    (status, body)
}

struct Bosh {
    addr: SocketAddr,
    sid: String,
    rid: u64,
    jid: String,
}

impl Bosh {
    /// Creates a session; returns it and the first response body.
    async fn create(addr: SocketAddr) -> (Bosh, Element) {
        let rid = 4242;
        let (status, text) = post(
            addr,
            &format!("<body xmlns='{HTTPBIND}' rid='{rid}' to='localhost' wait='5' hold='1' xml:lang='en' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>"),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let body = parse_element(text.as_bytes()).expect("body parses");
        let sid = body.attr("sid").expect("sid").to_string();
        assert_eq!(body.attr("from"), Some("localhost"));
        assert_eq!(body.attr("hold"), Some("1"));
        assert!(body.attr("authid").is_some_and(|a| !a.is_empty()));
        (
            Bosh {
                addr,
                sid,
                rid,
                jid: String::new(),
            },
            body,
        )
    }

    fn next_body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        format!(
            "<body xmlns='{HTTPBIND}' rid='{}' sid='{}'{attrs}>{payload}</body>",
            self.rid, self.sid
        )
    }

    async fn send(&mut self, attrs: &str, payload: &str) -> Element {
        let b = self.next_body(attrs, payload);
        let (status, text) = post(self.addr, &b).await;
        assert_eq!(status, 200, "{text}");
        parse_element(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Sends, then polls with empty bodies until a child matching `pred` arrives.
    async fn until(
        &mut self,
        attrs: &str,
        payload: &str,
        pred: impl Fn(&Element) -> bool,
    ) -> Element {
        let mut body = self.send(attrs, payload).await;
        for _ in 0..10 {
            if let Some(found) = body.children().find(|c| pred(c)) {
                return found.clone();
            }
            assert_ne!(body.attr("type"), Some("terminate"), "terminated: {body}");
            body = self.send("", "").await;
        }
        panic!("never got the expected element");
    }

    async fn login(addr: SocketAddr, user: &str, password: &str) -> Bosh {
        let (mut b, first) = Bosh::create(addr).await;
        let features = first
            .child("features", starling::ns::STREAM)
            .unwrap_or_else(|| panic!("no features in {first}"));
        assert!(features.child("starttls", starling::ns::TLS).is_none());
        assert!(features.child("mechanisms", starling::ns::SASL).is_some());
        let creds = B64.encode(format!("\0{user}\0{password}"));
        let ok = b
            .until(
                "",
                &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"),
                |e| e.ns() == starling::ns::SASL,
            )
            .await;
        assert_eq!(ok.name(), "success", "{ok}");
        let f = b
            .until(
                " to='localhost' xmlns:xmpp='urn:xmpp:xbosh' xmpp:restart='true'",
                "",
                |e| e.name() == "features",
            )
            .await;
        assert!(f.child("bind", starling::ns::BIND).is_some());
        let iq = b
            .until("", "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>", |e| e.name() == "iq")
            .await;
        b.jid = iq
            .child("bind", starling::ns::BIND)
            .and_then(|x| x.child_text("jid", starling::ns::BIND))
            .expect("jid");
        let me = b.jid.clone();
        b.until("", "<presence xmlns='jabber:client'/>", |e| {
            e.name() == "presence" && e.attr("from") == Some(me.as_str())
        })
        .await;
        b
    }
}

#[tokio::test]
async fn bosh_client_chats_with_tcp_client() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("alice", "pw");
    ts.add_user("bob", "pw");
    let mut alice = Bosh::login(http, "alice", "pw").await;
    assert_eq!(alice.jid, "alice@localhost/bosh");
    let mut bob = Client::login(ts.c2s, "bob", "pw", "tcp").await;
    bob.available().await;

    // A held request is answered as soon as a message arrives for it.
    let held = {
        let body = alice.next_body("", "");
        tokio::spawn(async move { post(http, &body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    bob.send("<message to='alice@localhost/bosh' type='chat'><body>hi bosh</body></message>")
        .await;
    let (status, text) = held.await.expect("task");
    assert_eq!(status, 200);
    let body = parse_element(text.as_bytes()).expect("parses");
    let m = body
        .children()
        .find(|c| c.name() == "message")
        .unwrap_or_else(|| panic!("no message in {body}"));
    assert_eq!(m.ns(), starling::ns::CLIENT);
    assert_eq!(m.attr("from"), Some("bob@localhost/tcp"));

    // Stanzas in the body's own namespace are read as jabber:client (COMPAT).
    alice
        .send(
            "",
            "<message to='bob@localhost/tcp' type='chat'><body>hi tcp</body></message>",
        )
        .await;
    let m = bob.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/bosh"));
    assert_eq!(
        m.child_text("body", starling::ns::CLIENT).as_deref(),
        Some("hi tcp")
    );

    // Terminate ends the session; the sid is then unknown.
    let t = alice.send(" type='terminate'", "").await;
    assert_eq!(t.attr("type"), Some("terminate"));
    ts.stop().await;
}

#[tokio::test]
async fn a_dropped_request_is_recovered_by_resending_its_rid() {
    let (ts, http) = start(|_| {}).await;
    ts.add_user("carol", "pw");
    let mut carol = Bosh::login(http, "carol", "pw").await;

    // The request reaches the server but its connection dies before the answer.
    let body = carol.next_body(
        "",
        "<iq xmlns='jabber:client' type='get' id='ping1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    {
        let mut tcp = TcpStream::connect(http).await.expect("connect");
        let req = format!(
            "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // The client sends the same rid again and gets the answer it missed.
    let (status, text) = post(http, &body).await;
    assert_eq!(status, 200);
    let resent = parse_element(text.as_bytes()).expect("parses");
    let pong = resent
        .children()
        .find(|c| c.attr("id") == Some("ping1"))
        .unwrap_or_else(|| panic!("no pong in {resent}"));
    assert_eq!(pong.attr("type"), Some("result"));
    // And again: the same answer, not a second processing.
    let (_, again) = post(http, &body).await;
    assert_eq!(again, text);

    // The session goes on.
    let pong = carol
        .until(
            "",
            "<iq xmlns='jabber:client' type='get' id='ping2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            |e| e.attr("id") == Some("ping2"),
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    ts.stop().await;
}

#[tokio::test]
async fn idle_bosh_session_times_out() {
    let (ts, http) = start(|c| c.http.bosh_inactivity_secs = 1).await;
    ts.add_user("dave", "pw");
    ts.add_user("erin", "pw");
    let mut dave = Bosh::login(http, "dave", "pw").await;
    let mut erin = Client::login(ts.c2s, "erin", "pw", "tcp").await;
    erin.send("<presence to='dave@localhost' type='probe'/>")
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // The session is gone: an IQ to its full JID now bounces.
    erin.send("<iq to='dave@localhost/bosh' type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let bounce = erin.wait_for(|e| e.attr("id") == Some("x")).await;
    assert_eq!(bounce.attr("type"), Some("error"), "{bounce}");
    let t = dave.send("", "").await;
    assert_eq!(t.attr("type"), Some("terminate"), "{t}");
    ts.stop().await;
}

#[tokio::test]
async fn bad_bosh_requests() {
    let (ts, http) = start(|c| c.http.max_body_bytes = 4096).await;
    ts.add_user("frank", "pw");
    let mut frank = Bosh::login(http, "frank", "pw").await;

    // Unknown sid.
    let (status, text) = post(
        http,
        &format!("<body xmlns='{HTTPBIND}' rid='5' sid='nope'/>"),
    )
    .await;
    assert_eq!(status, 200);
    let b = parse_element(text.as_bytes()).expect("parses");
    assert_eq!(b.attr("type"), Some("terminate"));
    assert_eq!(b.attr("condition"), Some("item-not-found"));

    // Not a BOSH body, no rid, too big, wrong method, wrong host.
    assert_eq!(post(http, "hello").await.0, 400);
    assert_eq!(
        post(http, "<body xmlns='jabber:client' rid='1'/>").await.0,
        400
    );
    assert_eq!(
        post(http, &format!("<body xmlns='{HTTPBIND}' to='localhost'/>"))
            .await
            .0,
        400
    );
    let big = format!(
        "<body xmlns='{HTTPBIND}' rid='1'>{}</body>",
        "x".repeat(8192)
    );
    assert_eq!(post(http, &big).await.0, 413);
    let (_, text) = post(
        http,
        &format!("<body xmlns='{HTTPBIND}' rid='1' to='elsewhere.example' wait='5' hold='1'/>"),
    )
    .await;
    assert!(text.contains("host-unknown"), "{text}");

    // A rid far outside the window ends the session.
    let b = format!(
        "<body xmlns='{HTTPBIND}' rid='{}' sid='{}'/>",
        frank.rid + 1000,
        frank.sid
    );
    let (_, text) = post(http, &b).await;
    assert!(text.contains("item-not-found"), "{text}");
    let t = frank.send("", "").await;
    assert_eq!(t.attr("type"), Some("terminate"));

    // Meanwhile, another session is untouched.
    ts.add_user("gina", "pw");
    let mut gina = Bosh::login(http, "gina", "pw").await;
    let pong = gina
        .until(
            "",
            "<iq xmlns='jabber:client' type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            |e| e.attr("id") == Some("p"),
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    ts.stop().await;
}

/// An empty BOSH poll carries no XML but shows the client is there: a client that only
/// polls keeps its session past the stream's idle timeout.
#[tokio::test]
async fn empty_polls_keep_a_bosh_session_past_the_idle_timeout() {
    let (ts, http) = start(|c| {
        c.limits.idle_timeout_secs = 10;
        c.http.bosh_max_wait_secs = 2;
    })
    .await;
    ts.add_user("poller", "pw");
    let mut poller = Bosh::login(http, "poller", "pw").await;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(14) {
        let b = poller.send("", "").await;
        assert_ne!(b.attr("type"), Some("terminate"), "session ended: {b}");
    }
    let pong = poller
        .until(
            "",
            "<iq xmlns='jabber:client' type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            |e| e.attr("id") == Some("alive"),
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    ts.stop().await;
}
