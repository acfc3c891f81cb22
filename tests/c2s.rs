//! RFC 6120 client streams over real sockets: negotiation, SASL, binding, routing, and
//! the stream and stanza errors bad input must get.

mod common;

use base64::Engine;
use common::*;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::client::Mechanism;
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};
use starling::ns;

fn creds(user: &str, pw: &str) -> Credentials {
    // The crate's default is "y" (client thinks the server lacks channel binding), which
    // our server rightly treats as a downgrade when it offers -PLUS; real clients send "n".
    Credentials::default()
        .with_username(user)
        .with_password(pw)
        .with_channel_binding(ChannelBinding::None)
}

async fn server_with_users() -> TestServer {
    let s = TestServer::start().await;
    s.add_user("alice", "wonderland");
    s.add_user("bob", "builder");
    s
}

#[tokio::test]
async fn starttls_is_required_before_sasl() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    let f = c.open().await;
    let tls = f.child("starttls", ns::TLS).expect("starttls offered");
    assert!(tls.has_child("required", ns::TLS));
    assert!(
        f.child("mechanisms", ns::SASL).is_none(),
        "no SASL before TLS"
    );
    // Trying anyway is refused.
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdvbmRlcmxhbmQ=</auth>").await;
    let e = c.el().await;
    assert_eq!(e.name(), "failure");
    assert!(e.has_child("encryption-required", ns::SASL));
    s.stop().await;
}

#[tokio::test]
async fn features_after_tls_list_mechanisms_and_channel_binding() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    let f = c.starttls().await;
    let mechs: Vec<String> = f
        .child("mechanisms", ns::SASL)
        .expect("mechanisms")
        .children()
        .map(|m| m.text())
        .collect();
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(mechs.iter().any(|x| x == m), "{m} missing from {mechs:?}");
    }
    assert!(f.child("starttls", ns::TLS).is_none());
    s.stop().await;
}

#[tokio::test]
async fn scram_sha256_sha1_and_plain_log_in() {
    let s = server_with_users().await;
    let mechs: Vec<Box<dyn Mechanism>> = vec![
        Box::new(Scram::<Sha256>::from_credentials(creds("alice", "wonderland")).unwrap()),
        Box::new(Scram::<Sha1>::from_credentials(creds("alice", "wonderland")).unwrap()),
        Box::new(Plain::from_credentials(creds("alice", "wonderland")).unwrap()),
    ];
    for mut mech in mechs {
        let mut c = Client::connect(s.c2s).await;
        c.starttls().await;
        let r = c.auth(mech.as_mut()).await;
        assert_eq!(r.name(), "success", "{} failed: {r}", mech.name());
        let jid = c.bind(Some("desk")).await;
        assert_eq!(jid, "alice@localhost/desk");
    }
    s.stop().await;
}

#[tokio::test]
async fn scram_plus_with_tls_exporter() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    let f = c.starttls().await;
    let cb = f
        .child("sasl-channel-binding", ns::SASL_CB)
        .expect("XEP-0440 channel-binding types");
    assert!(cb
        .children()
        .any(|t| t.attr("type") == Some("tls-exporter")));
    let exporter = c.exporter.clone().expect("TLS 1.3 exporter");
    let mut mech = Scram::<Sha256>::from_credentials(
        creds("alice", "wonderland").with_channel_binding(ChannelBinding::TlsExporter(exporter)),
    )
    .unwrap();
    assert_eq!(mech.name(), "SCRAM-SHA-256-PLUS");
    let r = c.auth(&mut mech).await;
    assert_eq!(r.name(), "success", "{r}");
    s.stop().await;
}

/// A client that sends each step's requests without waiting for the features in
/// between (XEP-0305 style pipelining) gets the same answers, in order, and what it sends
/// behind its bind request is handled at once, not only when more input arrives.
#[tokio::test]
async fn pipelined_login() {
    let s = server_with_users().await;
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    let mut c = Client::connect(s.c2s).await;
    c.send(&format!(
        "{header}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    ))
    .await;
    assert!(matches!(c.next().await, Got::Header(_)));
    assert_eq!(c.el().await.name(), "features");
    assert_eq!(c.el().await.name(), "proceed");
    c.upgrade_tls().await;
    let plain = B64.encode("\0alice\0wonderland");
    c.send(&format!(
        "{header}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
    ))
    .await;
    assert!(matches!(c.next().await, Got::Header(_)));
    assert_eq!(c.el().await.name(), "features");
    let r = c.el().await;
    assert_eq!(r.name(), "success", "{r}");
    c.restart();
    c.send(&format!(
        "{header}<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>pipe</resource></bind></iq>\
         <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    assert!(matches!(c.next().await, Got::Header(_)));
    let f = c.el().await;
    assert!(f.child("bind", ns::BIND).is_some(), "{f}");
    let bound = c.el().await;
    assert_eq!(bound.attr("id"), Some("b1"), "{bound}");
    assert_eq!(bound.attr("type"), Some("result"), "{bound}");
    let pong = c.el().await;
    assert_eq!(pong.attr("id"), Some("p1"), "{pong}");
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    s.stop().await;
}

#[tokio::test]
async fn direct_tls_login() {
    let s = server_with_users().await;
    let mut c = Client::connect_tls(s.c2s_tls).await;
    let f = c.open().await;
    assert!(f.child("starttls", ns::TLS).is_none());
    let mut mech = Scram::<Sha1>::from_credentials(creds("bob", "builder")).unwrap();
    assert_eq!(c.auth(&mut mech).await.name(), "success");
    assert_eq!(c.bind(None).await.split('/').next(), Some("bob@localhost"));
    s.stop().await;
}

#[tokio::test]
async fn wrong_password_unknown_user_and_bad_sasl() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    let mut mech = Scram::<Sha256>::from_credentials(creds("alice", "nope")).unwrap();
    let r = c.auth(&mut mech).await;
    assert_eq!(r.name(), "failure");
    assert!(r.has_child("not-authorized", ns::SASL), "{r}");

    let mut mech = Scram::<Sha256>::from_credentials(creds("nobody", "x")).unwrap();
    let r = c.auth(&mut mech).await;
    assert!(r.has_child("not-authorized", ns::SASL), "{r}");

    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'>AA==</auth>")
        .await;
    let r = c.el().await;
    assert!(r.has_child("invalid-mechanism", ns::SASL), "{r}");
    s.stop().await;

    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    c.send(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!not base64!!!</auth>",
    )
    .await;
    let r = c.el().await;
    assert!(r.has_child("incorrect-encoding", ns::SASL), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn too_many_failures_end_the_stream() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    for _ in 0..2 {
        let mut m = Plain::from_credentials(creds("alice", "bad")).unwrap();
        assert!(c.auth(&mut m).await.has_child("not-authorized", ns::SASL));
    }
    let mut m = Plain::from_credentials(creds("alice", "bad")).unwrap();
    assert!(c.auth(&mut m).await.has_child("not-authorized", ns::SASL));
    assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));
    s.stop().await;
}

#[tokio::test]
async fn authzid_of_another_user_is_refused() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    // PLAIN: authzid bob, authcid alice with alice's correct password.
    let payload = B64.encode(b"bob@localhost\0alice\0wonderland");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await;
    let r = c.el().await;
    assert!(r.has_child("invalid-authzid", ns::SASL), "{r}");
    // Her own bare JID as authzid is fine.
    let payload = B64.encode(b"alice@localhost\0alice\0wonderland");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await;
    assert_eq!(c.el().await.name(), "success");
    s.stop().await;
}

#[tokio::test]
async fn chat_between_two_users_with_stamped_from() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "phone").await;
    let mut b = Client::login(s.c2s, "bob", "builder", "laptop").await;
    a.available().await;
    b.available().await;
    a.send("<message to='bob@localhost/laptop' type='chat' id='m1'><body>hi bob</body></message>")
        .await;
    let m = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(m.attr("to"), Some("bob@localhost/laptop"));
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("hi bob"));
    // To the bare JID: delivered to the available resource.
    b.send("<message to='Alice@LOCALHOST' type='chat'><body>hi alice</body></message>")
        .await;
    let m = a.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/laptop"));
    assert_eq!(
        m.child_text("body", ns::CLIENT).as_deref(),
        Some("hi alice")
    );
    // IQ between full JIDs, and its answer.
    a.send("<iq to='bob@localhost/laptop' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let iq = b.wait_for(|e| e.name() == "iq").await;
    assert_eq!(iq.attr("from"), Some("alice@localhost/phone"));
    b.send("<iq to='alice@localhost/phone' type='result' id='p1'/>")
        .await;
    let r = a.wait_for(|e| e.name() == "iq").await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some("bob@localhost/laptop"));
    // Directed presence.
    a.send("<presence to='bob@localhost/laptop'><show>away</show></presence>")
        .await;
    let p = b
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/phone"))
        .await;
    assert_eq!(p.child_text("show", ns::CLIENT).as_deref(), Some("away"));
    s.stop().await;
}

#[tokio::test]
async fn bare_jid_messages_follow_priority() {
    let s = server_with_users().await;
    let mut hi = Client::login(s.c2s, "alice", "wonderland", "hi").await;
    let mut lo = Client::login(s.c2s, "alice", "wonderland", "lo").await;
    let mut bob = Client::login(s.c2s, "bob", "builder", "b").await;
    hi.send("<presence><priority>10</priority></presence>")
        .await;
    hi.wait_for(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/hi"))
        .await;
    lo.send("<presence><priority>1</priority></presence>").await;
    lo.wait_for(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/lo"))
        .await;
    bob.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
        .await;
    bob.send("<message to='alice@localhost/lo' type='chat'><body>two</body></message>")
        .await;
    let m = hi.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("one"));
    // lo only gets the one addressed to it: the bare-JID one went to the higher priority.
    let m = lo.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("two"));
    s.stop().await;
}

#[tokio::test]
async fn undeliverable_stanzas_get_errors() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    // Nonexistent user.
    a.send("<message to='nobody@localhost' type='chat' id='x1'><body>?</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("x1")).await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    // IQ to a resource that is not online.
    let e = a
        .iq(
            "<iq to='bob@localhost/gone' type='get' id='x2'><ping xmlns='urn:xmpp:ping'/></iq>",
            "x2",
        )
        .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    // Unhandled namespace at the server.
    let e = a
        .iq(
            "<iq to='localhost' type='get' id='x3'><query xmlns='urn:example:nothing'/></iq>",
            "x3",
        )
        .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    // A malformed 'to'.
    a.send("<message to='@@' id='x4'><body>?</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("x4")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("jid-malformed"));
    // A remote domain with no route.
    a.send("<message to='someone@elsewhere.example' id='x5'><body>?</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("x5")).await;
    assert_eq!(stanza_error(&e).as_deref(), Some("remote-server-not-found"));
    // An IQ get with two payloads.
    let e = a
        .iq(
            "<iq to='localhost' type='get' id='x6'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>",
            "x6",
        )
        .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("bad-request"));
    // Errors are never answered: an error message to nobody produces nothing, so the
    // next reply we see is the ping's.
    a.send("<message to='nobody@localhost' type='error' id='x7'/>")
        .await;
    let e = a
        .iq(
            "<iq to='localhost' type='get' id='x8'><ping xmlns='urn:xmpp:ping'/></iq>",
            "x8",
        )
        .await;
    assert_eq!(e.attr("type"), Some("result"));
    s.stop().await;
}

#[tokio::test]
async fn server_services_ping_disco_version() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    let r = a
        .iq(
            "<iq to='localhost' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let q = r.child("query", ns::DISCO_INFO).expect("query");
    let id = q.child("identity", ns::DISCO_INFO).expect("identity");
    assert_eq!(id.attr("category"), Some("server"));
    assert_eq!(id.attr("type"), Some("im"));
    let features: Vec<&str> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [ns::PING, ns::VERSION, ns::DISCO_INFO] {
        assert!(features.contains(&f), "{f} not in {features:?}");
    }
    let r = a
        .iq(
            "<iq to='localhost' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>",
            "v1",
        )
        .await;
    let q = r.child("query", ns::VERSION).expect("version");
    assert_eq!(
        q.child_text("name", ns::VERSION).as_deref(),
        Some("Starling")
    );
    let r = a
        .iq(
            "<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Legacy session establishment.
    let r = a
        .iq(
            "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            "s1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    s.stop().await;
}

#[tokio::test]
async fn resource_conflict_ends_the_older_session() {
    let s = server_with_users().await;
    let mut old = Client::login(s.c2s, "alice", "wonderland", "same").await;
    let _new = Client::login(s.c2s, "alice", "wonderland", "same").await;
    assert_eq!(old.stream_error().await.as_deref(), Some("conflict"));
    s.stop().await;
}

#[tokio::test]
async fn spoofed_from_is_refused() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    a.send("<message from='bob@localhost/x' to='alice@localhost'><body>fake</body></message>")
        .await;
    assert_eq!(a.stream_error().await.as_deref(), Some("invalid-from"));
    s.stop().await;
}

async fn error_for(s: &TestServer, send: &[u8]) -> Option<String> {
    let mut c = Client::connect(s.c2s).await;
    c.try_send_bytes(send).await;
    c.stream_error().await
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

#[tokio::test]
async fn stream_header_errors() {
    let s = server_with_users().await;
    let unknown = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";
    assert_eq!(
        error_for(&s, unknown.as_bytes()).await.as_deref(),
        Some("host-unknown")
    );
    let bad_ns = "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>";
    assert_eq!(
        error_for(&s, bad_ns.as_bytes()).await.as_deref(),
        Some("invalid-namespace")
    );
    let bad_content = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    assert_eq!(
        error_for(&s, bad_content.as_bytes()).await.as_deref(),
        Some("invalid-namespace")
    );
    let v2 = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='2.0'>";
    assert_eq!(
        error_for(&s, v2.as_bytes()).await.as_deref(),
        Some("unsupported-version")
    );
    s.stop().await;
}

#[tokio::test]
async fn restricted_and_malformed_xml() {
    let s = server_with_users().await;
    let laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    assert_eq!(
        error_for(&s, laughs.as_bytes()).await.as_deref(),
        Some("restricted-xml")
    );
    let pi = format!("{HEADER}<?evil stuff?>");
    assert_eq!(
        error_for(&s, pi.as_bytes()).await.as_deref(),
        Some("restricted-xml")
    );
    let bad = format!("{HEADER}<message><body></message>");
    assert_eq!(
        error_for(&s, bad.as_bytes()).await.as_deref(),
        Some("not-well-formed")
    );
    let entity = format!("{HEADER}<message><body>&xxe;</body></message>");
    let cond = error_for(&s, entity.as_bytes()).await;
    assert!(
        matches!(
            cond.as_deref(),
            Some("restricted-xml") | Some("not-well-formed")
        ),
        "{cond:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn huge_and_deep_stanzas_are_policy_violations() {
    let s = server_with_users().await;
    // 10 MB of body: refused long before it is all sent.
    let mut c = Client::connect(s.c2s).await;
    c.send(HEADER).await;
    c.try_send_bytes(b"<message><body>").await;
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..160 {
        if !c.try_send_bytes(&chunk).await {
            break;
        }
    }
    assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));

    let mut deep = String::from(HEADER);
    for _ in 0..10_000 {
        deep.push_str("<a>");
    }
    assert_eq!(
        error_for(&s, deep.as_bytes()).await.as_deref(),
        Some("policy-violation")
    );
    // The server still serves everyone else.
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    a.available().await;
    s.stop().await;
}

#[tokio::test]
async fn unauthenticated_streams_get_a_small_stanza_limit() {
    let s = server_with_users().await;
    // Before authentication, 20 KB in one element is too much (the limit is 16 KiB
    // whatever max_stanza_bytes says), so idle unauthenticated connections stay cheap...
    let big = "a".repeat(20 * 1024);
    let msg = format!(
        "{HEADER}<iq type='get' id='x'><query xmlns='jabber:iq:version'>{big}</query></iq>"
    );
    assert_eq!(
        error_for(&s, msg.as_bytes()).await.as_deref(),
        Some("policy-violation")
    );
    // ...and after it the configured limit applies: the same payload goes through.
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    let mut b = Client::login(s.c2s, "bob", "builder", "r").await;
    a.send(&format!(
        "<message to='bob@localhost/r' type='chat' id='big'><body>{big}</body></message>"
    ))
    .await;
    let got = b.wait_for(|e| e.attr("id") == Some("big")).await;
    assert_eq!(
        got.child_text("body", "jabber:client").map(|t| t.len()),
        Some(big.len())
    );
    s.stop().await;
}

#[tokio::test]
async fn stanza_before_authentication_is_not_authorized() {
    let s = server_with_users().await;
    let msg = format!("{HEADER}<message to='bob@localhost'><body>x</body></message>");
    assert_eq!(
        error_for(&s, msg.as_bytes()).await.as_deref(),
        Some("not-authorized")
    );
    s.stop().await;
}

#[tokio::test]
async fn many_idle_connections_do_not_stop_service() {
    let s = server_with_users().await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(s.c2s)
                .await
                .expect("connect"),
        );
    }
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    let mut b = Client::login(s.c2s, "bob", "builder", "r").await;
    a.send("<message to='bob@localhost/r'><body>still here</body></message>")
        .await;
    let m = b.wait_for(|e| e.name() == "message").await;
    assert_eq!(
        m.child_text("body", ns::CLIENT).as_deref(),
        Some("still here")
    );
    drop(idle);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_sends_system_shutdown() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    let stop = tokio::spawn(s.stop());
    assert_eq!(a.stream_error().await.as_deref(), Some("system-shutdown"));
    stop.await.unwrap();
}

#[tokio::test]
async fn clean_close_handshake() {
    let s = server_with_users().await;
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    a.send("</stream:stream>").await;
    assert_eq!(a.stream_error().await, None);
    s.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_closing_wait() {
    // The server closes the stream and waits `limits.close_wait_ms` for our closing tag;
    // a client that never sends it is disconnected then, not held open.
    let s = TestServer::start_with(|c| c.limits.close_wait_ms = 300).await;
    let mut a = Client::connect(s.c2s).await;
    a.open().await;
    a.send("<bogus xmlns='jabber:client'><unclosed></bogus>")
        .await;
    // The error and the server's closing tag.
    assert_eq!(a.stream_error().await.as_deref(), Some("not-well-formed"));
    // Then the connection itself ends without a word from us: end of file, not a timeout
    // (`next` panics if nothing comes within its limit).
    assert!(matches!(a.next().await, Got::Closed));
    s.stop().await;
}

#[tokio::test]
async fn in_band_registration_password_change_and_removal() {
    let s = TestServer::start_with(|c| c.c2s.allow_registration = true).await;
    let mut c = Client::connect(s.c2s).await;
    let f = c.starttls().await;
    assert!(f.has_child("register", ns::REGISTER_FEATURE));
    let form = c
        .iq(
            "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>",
            "r1",
        )
        .await;
    assert!(form
        .child("query", ns::REGISTER)
        .is_some_and(|q| q.has_child("password", ns::REGISTER)));
    let r = c
        .iq("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>carol</username><password>first</password></query></iq>", "r2")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = c
        .iq("<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>carol</username><password>again</password></query></iq>", "r3")
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));

    let mut carol = Client::login(s.c2s, "carol", "first", "r").await;
    let r = carol
        .iq("<iq type='set' id='c1'><query xmlns='jabber:iq:register'><username>carol</username><password>second</password></query></iq>", "c1")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut carol2 = Client::login(s.c2s, "carol", "second", "r2").await;
    let r = carol2
        .iq(
            "<iq type='set' id='c2'><query xmlns='jabber:iq:register'><remove/></query></iq>",
            "c2",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(
        carol2.stream_error().await.as_deref(),
        Some("not-authorized")
    );
    assert!(s
        .state()
        .store
        .account("carol@localhost")
        .unwrap()
        .is_none());
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_messages_go_offline() {
    let s = TestServer::start_with(|c| {
        c.limits.session_queue = 16;
        c.limits.write_timeout_secs = 2;
    })
    .await;
    s.add_user("alice", "wonderland");
    s.add_user("bob", "builder");
    let mut a = Client::login(s.c2s, "alice", "wonderland", "r").await;
    let mut stalled = Client::login(s.c2s, "bob", "builder", "r").await;
    stalled.available().await;
    // Bob never reads again. Alice sends far more than socket buffers and his queue hold.
    let body = "x".repeat(60_000);
    let total = 300;
    for i in 0..total {
        a.send(&format!(
            "<message to='bob@localhost/r' type='chat' id='s{i}'><body>{body}</body></message>"
        ))
        .await;
    }
    // Alice's own session keeps working throughout.
    let pong = a
        .iq(
            "<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>",
            "alive",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // Bob's session is cut off...
    let bob = jid::BareJid::new("bob@localhost").unwrap();
    for _ in 0..100 {
        if !s.state().sessions.is_online(&bob) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!s.state().sessions.is_online(&bob));
    // ...and nothing he could not take was dropped: it went to offline storage (no error
    // came back to Alice), and his next login gets it, in order.
    let mut again = Client::login(s.c2s, "bob", "builder", "again").await;
    again.send("<presence/>").await;
    let first = again
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("chat"))
        .await;
    let first_id: usize = first.attr("id").unwrap()[1..].parse().unwrap();
    let mut last = first_id;
    while last + 1 < total {
        let m = again.wait_for(|e| e.name() == "message").await;
        let id: usize = m.attr("id").unwrap()[1..].parse().unwrap();
        assert_eq!(id, last + 1, "offline messages out of order");
        last = id;
    }
    drop(stalled);
    s.stop().await;
}

#[tokio::test]
async fn refused_channel_binding_types_do_not_use_up_attempts() {
    let s = server_with_users().await;
    let mut c = Client::connect(s.c2s).await;
    c.starttls().await;
    // What slixmpp does on TLS 1.2: ask for tls-unique, which TLS 1.3 servers cannot give.
    for _ in 0..4 {
        let first = B64.encode(b"p=tls-unique,,n=alice,r=0123456789abcdef");
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>"
        ))
        .await;
        let r = c.el().await;
        assert_eq!(r.name(), "failure", "{r}");
    }
    let mut mech = Scram::<Sha256>::from_credentials(creds("alice", "wonderland")).unwrap();
    assert_eq!(c.auth(&mut mech).await.name(), "success");
    s.stop().await;
}
