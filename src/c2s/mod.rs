//! Client-to-server streams (RFC 6120): header checks, STARTTLS, SASL, resource binding,
//! then the session loop. One task per connection owns its socket, parser and state.

mod stream;

use crate::ns;
use crate::router;
use crate::sasl::{self, Failure, Lookup, ServerSession, Step};
use crate::services::register;
use crate::sessions::{Control, Outbound, SessionChannels, SessionHandle};
use crate::stanza::{error_reply, iq_result, Kind, StanzaError, StreamError};
use crate::xml::reader::{StreamEvent, StreamHeader};
use crate::xml::Element;
use crate::ServerState;
use base64::Engine;
use jid::{BareJid, FullJid, Jid};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stream::{C2sError, Conn};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Serves one accepted client connection to completion.
pub async fn serve(
    server: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    // This future lives as long as the connection, and its size is that of its largest
    // await point. The handshake, negotiation and closing steps are big (TLS state,
    // SASL, scratch buffers) but short-lived, so they are boxed: the heap holds them only
    // while they run, and an established session carries only the session loop's state.
    async move {
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(&server, tcp, peer);
        if direct_tls {
            if let Err(e) = Box::pin(conn.start_tls(&server)).await {
                tracing::debug!("direct TLS handshake failed: {e}");
                return;
            }
        }
        let mut shutdown = shutdown;
        let auth_timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
        let negotiated = tokio::select! {
            r = tokio::time::timeout(auth_timeout, Box::pin(negotiate(&server, &mut conn))) => match r {
                Ok(r) => r,
                Err(_) => Err(C2sError::Stream(StreamError::new("connection-timeout")
                    .with_text("authentication took too long"))),
            },
            _ = shutdown.changed() => Err(C2sError::Stream(StreamError::new("system-shutdown"))),
        };
        let (handle, channels) = match negotiated {
            Ok(bound) => bound,
            Err(e) => return Box::pin(conn.finish(e)).await,
        };
        tracing::Span::current().record("jid", tracing::field::display(&handle.jid));
        tracing::info!("session started");
        server.registry.run_session_start(&server, &handle);
        let mut channels = channels;
        let result = session_loop(&server, &mut conn, &handle, &mut channels, &mut shutdown).await;
        end_session(&server, &handle, &mut channels);
        tracing::info!("session ended");
        Box::pin(conn.finish(result.err().unwrap_or(C2sError::Closed))).await;
    }
    .instrument(span)
    .await
}

/// Stream negotiation, from the first header to a bound resource.
async fn negotiate(
    server: &ServerState,
    conn: &mut Conn,
) -> Result<(SessionHandle, SessionChannels), C2sError> {
    let mut authenticated: Option<BareJid> = None;
    let mut failures = 0u32;
    'stream: loop {
        let header = conn.expect_header().await?;
        check_header(server, &header).map_err(C2sError::Stream)?;
        conn.send_header(server, header.attr("from")).await?;
        let offered = offered_mechanisms(server, conn);
        conn.send(&features(server, conn, authenticated.is_some(), &offered))
            .await?;
        loop {
            let el = conn.expect_element().await?;
            match (authenticated.as_ref(), el.ns(), el.name()) {
                (None, ns::TLS, "starttls") if !conn.is_tls() => {
                    conn.send(&Element::new("proceed", ns::TLS)).await?;
                    conn.start_tls_after_proceed(server).await?;
                    continue 'stream;
                }
                (None, ns::SASL, "auth") if !offered.is_empty() => {
                    match authenticate(server, conn, &el, &offered).await? {
                        Some(bare) => {
                            tracing::info!(user = %bare, "authenticated");
                            authenticated = Some(bare);
                            conn.restart_authenticated(server);
                            continue 'stream;
                        }
                        None => {
                            failures += 1;
                            if failures >= server.config.limits.max_auth_attempts {
                                return Err(C2sError::Stream(
                                    StreamError::new("policy-violation")
                                        .with_text("too many failed authentication attempts"),
                                ));
                            }
                        }
                    }
                }
                (None, ns::SASL, "auth") => {
                    // SASL before TLS when encryption is required.
                    conn.send(&sasl_failure(Failure::EncryptionRequired, None))
                        .await?;
                }
                (None, ns::CLIENT, "iq") if register_allowed(server, conn) => {
                    let reply = register::unauthenticated(server, &el).map_err(C2sError::Stream)?;
                    conn.send(&reply).await?;
                }
                (Some(bare), ns::CLIENT, "iq") => {
                    if let Some(bound) = try_bind(server, conn, bare, &el).await? {
                        return Ok(bound);
                    }
                }
                (None, _, _) => {
                    return Err(C2sError::Stream(
                        StreamError::new("not-authorized").with_text("authenticate first"),
                    ))
                }
                (Some(_), _, _) => {
                    return Err(C2sError::Stream(
                        StreamError::new("not-authorized").with_text("bind a resource first"),
                    ))
                }
            }
        }
    }
}

fn register_allowed(server: &ServerState, conn: &Conn) -> bool {
    server.config.c2s.allow_registration && (conn.is_tls() || !server.config.c2s.require_encryption)
}

/// RFC 6120 §4.7/§4.9.3 checks on the client's stream header.
fn check_header(server: &ServerState, header: &StreamHeader) -> Result<(), StreamError> {
    if header.name != "stream" || header.ns != ns::STREAM {
        return Err(StreamError::new("invalid-namespace")
            .with_text("the root must be <stream> in http://etherx.jabber.org/streams"));
    }
    if header.default_ns != ns::CLIENT {
        return Err(StreamError::new("invalid-namespace")
            .with_text("the content namespace of a client stream is jabber:client"));
    }
    if let Some(to) = header.attr("to") {
        let known = jid::BareJid::new(to)
            .map(|d| d.node().is_none() && d.domain().as_str() == server.config.domain)
            .unwrap_or(false);
        if !known {
            return Err(StreamError::new("host-unknown")
                .with_text(format!("this server does not serve {to:?}")));
        }
    }
    // A missing version means a pre-RFC 3920 stream, which we do not speak.
    let major = header
        .attr("version")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if major != Some(1) {
        return Err(StreamError::new("unsupported-version")
            .with_text("this server speaks XMPP version 1.0"));
    }
    Ok(())
}

fn offered_mechanisms(server: &ServerState, conn: &Conn) -> Vec<&'static str> {
    let encrypted = conn.is_tls();
    if !encrypted && server.config.c2s.require_encryption {
        return Vec::new();
    }
    sasl::offered_mechanisms(
        conn.bindings(),
        encrypted || !server.config.c2s.require_encryption,
    )
}

fn features(
    server: &ServerState,
    conn: &Conn,
    authenticated: bool,
    offered: &[&'static str],
) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    if authenticated {
        f.push(Element::new("bind", ns::BIND));
        // RFC 6121 dropped session establishment; old clients still look for it.
        f.push(
            Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
        );
        for feature in server.registry.stream_features() {
            f.push(feature.clone());
        }
        return f;
    }
    if !conn.is_tls() {
        let mut tls = Element::new("starttls", ns::TLS);
        if server.config.c2s.require_encryption {
            tls.push(Element::new("required", ns::TLS));
        }
        f.push(tls);
    }
    if !offered.is_empty() {
        let mut mechs = Element::new("mechanisms", ns::SASL);
        for m in offered {
            mechs.push(Element::new("mechanism", ns::SASL).with_text(*m));
        }
        f.push(mechs);
        let types = conn.bindings().types();
        if !types.is_empty() {
            let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
            for t in types {
                cb.push(Element::new("channel-binding", ns::SASL_CB).with_attr("type", t));
            }
            f.push(cb);
        }
    }
    if register_allowed(server, conn) {
        f.push(Element::new("register", ns::REGISTER_FEATURE));
    }
    f
}

fn sasl_failure(failure: Failure, text: Option<String>) -> Element {
    let mut el =
        Element::new("failure", ns::SASL).with_child(Element::new(failure.condition(), ns::SASL));
    if let Some(t) = text {
        el.push(
            Element::new("text", ns::SASL)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    el
}

/// Decodes SASL base64 content: `=` is an empty response, whitespace is tolerated.
fn decode_sasl(text: &str) -> Result<Vec<u8>, ()> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact == "=" {
        return Ok(Vec::new());
    }
    B64.decode(compact.as_bytes()).map_err(|_| ())
}

fn lookup(server: &ServerState, username: &str) -> Lookup {
    let jid = format!("{username}@{}", server.config.domain);
    match server.store.account(&jid) {
        Ok(Some(a)) if a.disabled => Lookup::Disabled,
        Ok(Some(a)) => Lookup::Found(a.credentials),
        Ok(None) => Lookup::NoSuchUser,
        Err(e) => {
            tracing::error!("account lookup failed: {e}");
            Lookup::TemporaryFailure
        }
    }
}

/// Runs one SASL exchange (RFC 6120 §6.4). `Ok(None)` is a failed attempt the client
/// may retry; the failure has been sent.
async fn authenticate(
    server: &ServerState,
    conn: &mut Conn,
    auth: &Element,
    offered: &[&'static str],
) -> Result<Option<BareJid>, C2sError> {
    let mechanism = auth.attr("mechanism").unwrap_or("");
    let mut session = match ServerSession::start(
        mechanism,
        &server.config.domain,
        offered,
        conn.bindings().clone(),
    ) {
        Ok(s) => s,
        Err(f) => {
            tracing::info!(mechanism, "SASL mechanism refused");
            conn.send(&sasl_failure(f, None)).await?;
            return Ok(None);
        }
    };
    let initial = auth.text();
    let mut input = if initial.trim().is_empty() {
        // No initial response: ask for it with an empty challenge.
        conn.send(&Element::new("challenge", ns::SASL)).await?;
        match next_sasl_response(conn).await? {
            Ok(data) => data,
            Err(f) => return fail(server, conn, f, None).await,
        }
    } else {
        match decode_sasl(&initial) {
            Ok(data) => data,
            Err(()) => return fail(server, conn, Failure::IncorrectEncoding, None).await,
        }
    };
    loop {
        let step = session.step(&input, &mut |user| lookup(server, user));
        match step {
            Step::Challenge(data) => {
                conn.send(&Element::new("challenge", ns::SASL).with_text(B64.encode(data)))
                    .await?;
                input = match next_sasl_response(conn).await? {
                    Ok(data) => data,
                    Err(f) => return fail(server, conn, f, None).await,
                };
            }
            Step::Success {
                username,
                additional_data,
            } => {
                let bare = match BareJid::new(&format!("{username}@{}", server.config.domain)) {
                    Ok(b) => b,
                    Err(_) => return fail(server, conn, Failure::NotAuthorized, None).await,
                };
                let mut success = Element::new("success", ns::SASL);
                if !additional_data.is_empty() {
                    success.push_text(B64.encode(additional_data));
                }
                conn.send(&success).await?;
                return Ok(Some(bare));
            }
            Step::Failure(f, text) => return fail(server, conn, f, text).await,
        }
    }
}

async fn fail(
    server: &ServerState,
    conn: &mut Conn,
    failure: Failure,
    text: Option<String>,
) -> Result<Option<BareJid>, C2sError> {
    tracing::info!(condition = failure.condition(), "authentication failed");
    if failure != Failure::Aborted {
        // Slows password guessing down; the connection holds nothing else meanwhile.
        tokio::time::sleep(Duration::from_millis(
            server.config.limits.auth_failure_delay_ms,
        ))
        .await;
    }
    conn.send(&sasl_failure(failure, text)).await?;
    Ok(None)
}

/// Reads the client's `<response/>` (or `<abort/>`).
async fn next_sasl_response(conn: &mut Conn) -> Result<Result<Vec<u8>, Failure>, C2sError> {
    let el = conn.expect_element().await?;
    match (el.ns(), el.name()) {
        (ns::SASL, "response") => {
            Ok(decode_sasl(&el.text()).map_err(|()| Failure::IncorrectEncoding))
        }
        (ns::SASL, "abort") => Ok(Err(Failure::Aborted)),
        _ => Err(C2sError::Stream(
            StreamError::new("not-authorized").with_text("expected a SASL response"),
        )),
    }
}

/// Handles an IQ before binding: resource binding (RFC 6120 §7) is all that is allowed.
async fn try_bind(
    server: &ServerState,
    conn: &mut Conn,
    bare: &BareJid,
    iq: &Element,
) -> Result<Option<(SessionHandle, SessionChannels)>, C2sError> {
    let bind = iq.child("bind", ns::BIND);
    if iq.attr("type") != Some("set") || bind.is_none() {
        return Err(C2sError::Stream(
            StreamError::new("not-authorized").with_text("bind a resource first"),
        ));
    }
    let requested = bind
        .and_then(|b| b.child_text("resource", ns::BIND))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let resource = requested.unwrap_or_else(random_resource);
    let full = match FullJid::new(&format!("{bare}/{resource}")) {
        Ok(full) => full,
        Err(_) => {
            let err = StanzaError::bad_request().with_text("resource is not valid");
            if let Some(reply) = error_reply(iq, &err) {
                conn.send(&reply).await?;
            }
            return Ok(None);
        }
    };
    let (handle, channels) = server.sessions.bind(full.clone());
    let _ = server.store.update_account(bare.as_str(), |a| {
        a.last_login = Some(crate::store::now_secs())
    });
    let reply = iq_result(
        iq,
        Some(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(full.as_str())),
        ),
    );
    conn.send(&reply).await?;
    Ok(Some((handle, channels)))
}

fn random_resource() -> String {
    use rand::Rng;
    let bytes: [u8; 9] = rand::thread_rng().gen();
    format!(
        "starling-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The bound session: stanzas in from the client, stanzas out from the router.
async fn session_loop(
    server: &ServerState,
    conn: &mut Conn,
    handle: &SessionHandle,
    channels: &mut SessionChannels,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), C2sError> {
    let idle = Duration::from_secs(server.config.limits.idle_timeout_secs);
    let result = loop {
        tokio::select! {
            biased;
            ctl = channels.control.recv() => match ctl {
                Some(Control::Close(err)) => {
                    // What was queued before the order (a reply, an announcement) still
                    // goes out ahead of the stream error.
                    while let Ok(Outbound::Stanza(el)) = channels.rx.try_recv() {
                        conn.queue(&el);
                    }
                    break Err(C2sError::Stream(err));
                }
                None => break Err(C2sError::Closed),
            },
            _ = shutdown.changed() => {
                break Err(C2sError::Stream(StreamError::new("system-shutdown")));
            }
            out = channels.rx.recv() => match out {
                Some(Outbound::Stanza(el)) => {
                    conn.queue(&el);
                    // Batch whatever else is already waiting into the same write.
                    let mut n = 0;
                    while n < 64 {
                        match channels.rx.try_recv() {
                            Ok(Outbound::Stanza(el)) => conn.queue(&el),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    if let Err(e) = conn.flush().await {
                        break Err(e);
                    }
                }
                None => break Err(C2sError::Closed),
            },
            read = tokio::time::timeout(idle, conn.read_some()) => {
                match read {
                    Err(_) => break Err(C2sError::Stream(StreamError::new("connection-timeout"))),
                    Ok(Err(e)) => break Err(e),
                    Ok(Ok(())) => {}
                }
                if let Err(e) = drain_events(server, conn, handle) {
                    break Err(e);
                }
                if let Err(e) = conn.flush().await {
                    break Err(e);
                }
            }
        }
    };
    result
}

/// Handles every complete element the reader has.
fn drain_events(
    server: &ServerState,
    conn: &mut Conn,
    handle: &SessionHandle,
) -> Result<(), C2sError> {
    while let Some(event) = conn.next_event()? {
        match event {
            StreamEvent::Close => return Err(C2sError::Closed),
            StreamEvent::Open(_) => {
                return Err(C2sError::Stream(
                    StreamError::new("not-well-formed").with_text("unexpected stream header"),
                ))
            }
            StreamEvent::Element(el) => {
                if let Some(reply) = client_stanza(server, handle, el)? {
                    conn.queue(&reply);
                }
            }
        }
    }
    Ok(())
}

/// Checks and stamps one stanza from a bound client, then routes it. Returns a reply to
/// write straight back (errors about the stanza itself).
fn client_stanza(
    server: &ServerState,
    handle: &SessionHandle,
    mut el: Element,
) -> Result<Option<Element>, C2sError> {
    let kind = match Kind::of(&el) {
        Some(kind) if el.ns() == ns::CLIENT => kind,
        _ => {
            return Err(C2sError::Stream(
                StreamError::new("unsupported-stanza-type").with_text(format!(
                    "<{}/> in {} is not handled here",
                    el.name(),
                    el.ns()
                )),
            ))
        }
    };
    // RFC 6120 §8.1.2.1: the server stamps `from`; a client claiming another JID gets
    // invalid-from rather than having its lie silently corrected.
    if let Some(from) = el.attr("from") {
        let ok = Jid::new(from).is_ok_and(|j| {
            j.as_str() == handle.jid.as_str()
                || (j.is_bare() && j.to_bare() == handle.jid.to_bare())
        });
        if !ok {
            return Err(C2sError::Stream(
                StreamError::new("invalid-from").with_text("from does not match this session"),
            ));
        }
    }
    el.set_attr("from", handle.jid.as_str());
    if let Some(to) = el.attr("to") {
        match Jid::new(to) {
            Ok(j) => {
                let normalised = j.as_str().to_string();
                el.set_attr("to", normalised);
            }
            Err(_) => {
                tracing::debug!(to, "stanza with a malformed to");
                let mut err_el = el.clone();
                err_el.remove_attr("to");
                let mut reply = error_reply(&err_el, &StanzaError::jid_malformed());
                if let Some(r) = reply.as_mut() {
                    r.set_attr("from", server.config.domain.clone());
                }
                return Ok(reply);
            }
        }
    }
    match kind {
        Kind::Iq => {
            let valid_type = matches!(el.attr("type"), Some("get" | "set" | "result" | "error"));
            if el.attr("id").is_none() || !valid_type {
                return Ok(error_reply(
                    &el,
                    &StanzaError::bad_request().with_text("an IQ needs an id and a valid type"),
                ));
            }
        }
        Kind::Message => {
            if let Some(t) = el.attr("type") {
                if !matches!(t, "chat" | "error" | "groupchat" | "headline" | "normal") {
                    return Ok(error_reply(&el, &StanzaError::bad_request()));
                }
            }
        }
        Kind::Presence => {
            if let Some(t) = el.attr("type") {
                let known = matches!(
                    t,
                    "error"
                        | "probe"
                        | "subscribe"
                        | "subscribed"
                        | "unavailable"
                        | "unsubscribe"
                        | "unsubscribed"
                );
                if !known {
                    return Ok(error_reply(
                        &el,
                        &StanzaError::bad_request().with_text("unknown presence type"),
                    ));
                }
            }
            if el.attr("to").is_none() {
                router::broadcast_presence(server, handle, el);
                return Ok(None);
            }
        }
    }
    router::from_client(server, handle, el);
    Ok(None)
}

/// After the session is gone: tell the account's other resources (and, through the hook,
/// contacts) that this resource went away, then run the modules' cleanup.
fn end_session(server: &ServerState, handle: &SessionHandle, channels: &mut SessionChannels) {
    let removed = server.sessions.unbind(handle);
    // Whatever was queued for this session and not written goes back to the router,
    // which finds the resource gone and applies the rules for an unavailable resource.
    channels.rx.close();
    while let Ok(Outbound::Stanza(el)) = channels.rx.try_recv() {
        router::undeliverable(server, el);
    }
    let bare = handle.jid.to_bare();
    let _ = server.store.update_account(bare.as_str(), |a| {
        a.last_logout = Some(crate::store::now_secs())
    });
    // A session replaced by a newer one with the same resource did not go away for
    // anyone else, so only a session that was still registered announces: to everyone
    // if it was available, else only to those it sent directed presence.
    if let Some(r) = removed.filter(|r| r.available || !r.directed.is_empty()) {
        let unavailable = Element::new("presence", ns::CLIENT)
            .with_attr("from", handle.jid.as_str())
            .with_attr("type", "unavailable");
        if r.available {
            for other in server.sessions.resources(&bare) {
                if other.available {
                    let _ =
                        router::send_or_fallback(server, &other.handle, unavailable.clone(), true);
                }
            }
        }
        router::announce(server, handle, &unavailable, r.available, r.directed);
    }
    server
        .registry
        .run_session_end(server, &Jid::from(handle.jid.clone()));
}
