//! Client-to-server streams (RFC 6120): header checks, STARTTLS, SASL, resource binding,
//! then the session loop. One task per connection owns its socket, parser and state.

mod csi;
pub mod sm;
pub mod stream;

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
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stream::{C2sError, Conn};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Stream-level extensions implemented here rather than by a module of their own.
pub fn register(reg: &mut crate::module::Registry) {
    reg.spec("0198", "1.6.1", "Stream Management");
    reg.stream_feature(Element::new("sm", ns::SM));
    reg.spec("0352", "1.0.0", "Client State Indication");
    reg.stream_feature(Element::new("csi", ns::CSI));
}

/// Serves one accepted client connection to completion.
pub async fn serve(
    server: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    // The TLS handshake is boxed for the reason given on `run`.
    async move {
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(&server, tcp, peer);
        if direct_tls {
            if let Err(e) = Box::pin(conn.start_tls(&server)).await {
                tracing::debug!("direct TLS handshake failed: {e}");
                return;
            }
        }
        run(server, conn, shutdown).await
    }
    .instrument(span)
    .await
}

/// Serves a stream over an HTTP transport (WebSocket, BOSH) to completion.
pub async fn serve_framed(
    server: Arc<ServerState>,
    end: stream::Framed,
    peer: SocketAddr,
    transport: &'static str,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("c2s", %peer, transport, jid = tracing::field::Empty);
    let conn = Conn::framed(&server, end, peer);
    run(server, conn, shutdown).instrument(span).await
}

/// Negotiation, then the session, on a prepared connection.
/// The connection's future lives as long as the connection, and its size is that of its
/// largest await point. Negotiation, resumption, closing and parking are big (TLS and SASL
/// state, scratch buffers) but short-lived or rare, so they are boxed: the heap holds them
/// only while they run, and an established session carries only the session loop's state.
async fn run(server: Arc<ServerState>, mut conn: Conn, shutdown: watch::Receiver<bool>) {
    {
        let mut shutdown = shutdown;
        let auth_timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
        let mut authenticated = None;
        let mut continuing = false;
        let (live, resumed) = loop {
            let negotiated = tokio::select! {
                r = tokio::time::timeout(
                    auth_timeout,
                    Box::pin(negotiate(&server, &mut conn, &mut authenticated, continuing)),
                ) => match r {
                    Ok(r) => r,
                    Err(_) => Err(C2sError::Stream(StreamError::new("connection-timeout")
                        .with_text("authentication took too long"))),
                },
                _ = shutdown.changed() => Err(C2sError::Stream(StreamError::new("system-shutdown"))),
            };
            match negotiated {
                Ok(Negotiated::Bound(live)) => break (live, false),
                Ok(Negotiated::Resume { bare, previd, h }) => {
                    // Outside the timeout and shutdown race on purpose: a session handed
                    // over to us must never be dropped half-way by a cancelled future.
                    match Box::pin(resume(&server, &mut conn, &bare, &previd, h)).await {
                        Some(live) => break (live, true),
                        None => continuing = true,
                    }
                }
                Err(e) => return Box::pin(conn.finish(e)).await,
            }
        };
        tracing::Span::current().record("jid", tracing::field::display(&live.handle.jid));
        tracing::info!(resumed, "session started");
        if !resumed {
            // A resumed session is the same session: it started once.
            server.registry.run_session_start(&server, &live.handle);
        }
        let mut live = live;
        let mut first = true;
        loop {
            let end = if std::mem::take(&mut first) {
                // What a client pipelined behind its bind (or resume) request is already
                // in the reader, where the session loop only looks after a read. Then
                // what negotiation queued last (the bind result, or `<resumed/>` and the
                // retransmissions) and any replies go out before the loop waits.
                match drain_events(&server, &mut conn, &mut live) {
                    Err(e) => End::Over(e),
                    Ok(()) => match conn.flush().await {
                        Ok(()) => session_loop(&server, &mut conn, &mut live, &mut shutdown).await,
                        Err(e) => End::Lost(e),
                    },
                }
            } else {
                session_loop(&server, &mut conn, &mut live, &mut shutdown).await
            };
            match end {
                End::TakenOver(reply) => {
                    conn.discard_output();
                    match reply.send(live) {
                        Ok(()) => {
                            tracing::info!("session resumed on another connection");
                            let err = StreamError::new("conflict")
                                .with_text("the session was resumed on another connection");
                            return Box::pin(conn.finish(C2sError::Stream(err))).await;
                        }
                        // The resuming connection went away before taking it: carry on.
                        Err(back) => live = back,
                    }
                }
                End::Lost(err) if live.resumable() => {
                    tracing::info!("connection lost; session kept for resumption");
                    Box::pin(conn.finish(err)).await;
                    return Box::pin(park(&server, live, &mut shutdown)).await;
                }
                End::Lost(err) | End::Over(err) => {
                    finish_live(&server, *live);
                    tracing::info!("session ended");
                    return Box::pin(conn.finish(err)).await;
                }
            }
        }
    }
}

/// Stream negotiation, from the first header to a bound resource.
/// `continuing`: the stream is already open and authenticated (a resumption attempt
/// failed and the client may bind instead), so no header or features are expected.
async fn negotiate(
    server: &ServerState,
    conn: &mut Conn,
    authenticated: &mut Option<BareJid>,
    continuing: bool,
) -> Result<Negotiated, C2sError> {
    let mut failures = 0u32;
    let mut continuing = continuing;
    'stream: loop {
        let offered = offered_mechanisms(server, conn);
        if !std::mem::take(&mut continuing) {
            let header = conn.expect_header().await?;
            check_header(server, &header).map_err(C2sError::Stream)?;
            // Header and features go out in one write, together with whatever else is
            // queued before the next read (see `Conn::next_event_wait`).
            conn.queue_header(server, header.attr("from"));
            conn.queue(&features(server, conn, authenticated.is_some(), &offered));
        }
        loop {
            let el = conn.expect_element().await?;
            match (authenticated.as_ref(), el.ns(), el.name()) {
                (None, ns::TLS, "starttls") if conn.can_starttls() => {
                    conn.queue(&Element::new("proceed", ns::TLS));
                    conn.start_tls_after_proceed(server).await?;
                    continue 'stream;
                }
                (None, ns::SASL, "auth") if !offered.is_empty() => {
                    match authenticate(server, conn, &el, &offered).await? {
                        AuthOutcome::Success(bare) => {
                            tracing::info!(user = %bare, "authenticated");
                            *authenticated = Some(bare);
                            conn.restart_authenticated(server);
                            continue 'stream;
                        }
                        AuthOutcome::Refused => {}
                        AuthOutcome::WrongCredentials => {
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
                    conn.queue(&sasl_failure(Failure::EncryptionRequired, None));
                }
                (None, ns::CLIENT, "iq") if register_allowed(server, conn) => {
                    let reply = register::unauthenticated(server, &el).map_err(C2sError::Stream)?;
                    conn.queue(&reply);
                }
                (Some(bare), ns::CLIENT, "iq") => {
                    if let Some((handle, channels)) = try_bind(server, conn, bare, &el).await? {
                        return Ok(Negotiated::Bound(Box::new(Live {
                            handle,
                            channels,
                            sm: None,
                            csi: csi::Csi::default(),
                        })));
                    }
                }
                (Some(bare), ns::SM, "resume") => {
                    let h = el.attr("h").and_then(|h| h.trim().parse::<u32>().ok());
                    match (el.attr("previd"), h) {
                        (Some(previd), Some(h)) => {
                            return Ok(Negotiated::Resume {
                                bare: bare.clone(),
                                previd: previd.to_string(),
                                h,
                            })
                        }
                        _ => conn.queue(&sm::failed("bad-request", None)),
                    }
                }
                (Some(_), ns::SM, "enable") => {
                    // XEP-0198 §3: only a bound resource can enable stream management.
                    conn.queue(&sm::failed("unexpected-request", None));
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
    if conn.can_starttls() {
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
/// How one SASL exchange ended.
enum AuthOutcome {
    Success(BareJid),
    /// Refused before any credentials were consulted (unknown mechanism or channel-binding
    /// type, bad encoding): not a password guess, so neither delayed nor counted. COMPAT:
    /// slixmpp on TLS 1.2 tries `p=tls-unique` on each -PLUS mechanism before falling back.
    Refused,
    /// Credentials were checked and did not match (or the account cannot log in).
    WrongCredentials,
}

async fn authenticate(
    server: &ServerState,
    conn: &mut Conn,
    auth: &Element,
    offered: &[&'static str],
) -> Result<AuthOutcome, C2sError> {
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
            conn.queue(&sasl_failure(f, None));
            return Ok(AuthOutcome::Refused);
        }
    };
    let mut consulted = false;
    let initial = auth.text();
    let mut input = if initial.trim().is_empty() {
        // No initial response: ask for it with an empty challenge.
        conn.queue(&Element::new("challenge", ns::SASL));
        match next_sasl_response(conn).await? {
            Ok(data) => data,
            Err(f) => return fail(server, conn, f, None, consulted).await,
        }
    } else {
        match decode_sasl(&initial) {
            Ok(data) => data,
            Err(()) => return fail(server, conn, Failure::IncorrectEncoding, None, false).await,
        }
    };
    loop {
        let step = session.step(&input, &mut |user| {
            consulted = true;
            lookup(server, user)
        });
        match step {
            Step::Challenge(data) => {
                conn.queue(&Element::new("challenge", ns::SASL).with_text(B64.encode(data)));
                input = match next_sasl_response(conn).await? {
                    Ok(data) => data,
                    Err(f) => return fail(server, conn, f, None, consulted).await,
                };
            }
            Step::Success {
                username,
                additional_data,
            } => {
                let bare = match BareJid::new(&format!("{username}@{}", server.config.domain)) {
                    Ok(b) => b,
                    Err(_) => return fail(server, conn, Failure::NotAuthorized, None, true).await,
                };
                let mut success = Element::new("success", ns::SASL);
                if !additional_data.is_empty() {
                    success.push_text(B64.encode(additional_data));
                }
                conn.queue(&success);
                return Ok(AuthOutcome::Success(bare));
            }
            Step::Failure(f, text) => return fail(server, conn, f, text, consulted).await,
        }
    }
}

async fn fail(
    server: &ServerState,
    conn: &mut Conn,
    failure: Failure,
    text: Option<String>,
    consulted: bool,
) -> Result<AuthOutcome, C2sError> {
    tracing::info!(condition = failure.condition(), "authentication failed");
    if consulted && failure != Failure::Aborted {
        // Slows password guessing down; the connection holds nothing else meanwhile.
        tokio::time::sleep(Duration::from_millis(
            server.config.limits.auth_failure_delay_ms,
        ))
        .await;
    }
    conn.queue(&sasl_failure(failure, text));
    Ok(if consulted && failure != Failure::Aborted {
        AuthOutcome::WrongCredentials
    } else {
        AuthOutcome::Refused
    })
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
                conn.queue(&reply);
            }
            return Ok(None);
        }
    };
    let (handle, channels) = server.sessions.bind(full.clone());
    if let Err(e) = server
        .store
        .record_activity(bare.as_str(), false, crate::store::now_secs())
    {
        tracing::warn!("recording the login time failed: {e}");
    }
    let reply = iq_result(
        iq,
        Some(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(full.as_str())),
        ),
    );
    // Flushed by `run` before the session loop starts.
    conn.queue(&reply);
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

/// What negotiation ends with.
enum Negotiated {
    Bound(Box<Live>),
    /// The client asked to resume a session (XEP-0198 §5) instead of binding.
    Resume {
        bare: BareJid,
        previd: String,
        h: u32,
    },
}

/// A bound session and the protocol state that moves with it when it is resumed on
/// another connection.
pub struct Live {
    pub handle: SessionHandle,
    pub channels: SessionChannels,
    /// Stream management, once the client enabled it.
    pub sm: Option<sm::SmState>,
    csi: csi::Csi,
}

impl Live {
    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|s| s.id.is_some())
    }
}

/// How a session loop ended.
enum End {
    /// The connection went away without the client closing the stream (I/O error, EOF,
    /// silence): a resumable session waits for the client to come back.
    Lost(C2sError),
    /// The session is over (the client closed the stream, a stream error, shutdown).
    Over(C2sError),
    /// Another connection resumed this session.
    TakenOver(sm::TakeoverRequest),
}

/// Takes over a detached (or not yet noticed dead) session for this connection and
/// queues `<resumed/>` and the retransmissions. `None`: `<failed/>` was queued and the
/// client may bind a fresh resource instead.
async fn resume(
    server: &ServerState,
    conn: &mut Conn,
    bare: &BareJid,
    previd: &str,
    h: u32,
) -> Option<Box<Live>> {
    let mut live = match server.resumable.take(previd, bare).await {
        Ok(live) => live,
        Err(sm::ResumeError::NotFound) => {
            tracing::info!("resumption refused: unknown or expired id");
            conn.queue(&sm::failed("item-not-found", None));
            let _ = conn.flush().await;
            return None;
        }
    };
    if live.sm.is_none() {
        // Only stream-management sessions are registered for resumption; should one
        // without it ever turn up, it still ends properly rather than being dropped.
        finish_live(server, *live);
        return None;
    }
    let state = live.sm.as_mut()?;
    if let Err(t) = state.ack(h) {
        // The client claims stanzas it was never sent: its view of the session cannot be
        // trusted, so the session ends (unacknowledged messages go to offline storage).
        let mut f = sm::failed("undefined-condition", Some(state.inbound));
        f.push(
            Element::new("handled-count-too-high", ns::SM)
                .with_attr("h", t.h.to_string())
                .with_attr("send-count", t.sent.to_string()),
        );
        conn.queue(&f);
        let _ = conn.flush().await;
        finish_live(server, *live);
        return None;
    }
    state.requested = false;
    conn.queue(
        &Element::new("resumed", ns::SM)
            .with_attr("previd", previd)
            .with_attr("h", state.inbound.to_string()),
    );
    // Exactly the stanzas the client did not acknowledge, in their original order and
    // with their original numbers (so they are not recorded a second time).
    for el in &state.unacked {
        conn.queue(el);
    }
    // Resumption starts the client out active (XEP-0352 state belongs to a stream);
    // what was held back is newer than anything already sent, so it comes after.
    live.csi.inactive = false;
    for el in live.csi.release() {
        write(conn, live.sm.as_mut(), el);
    }
    if let Some(state) = live.sm.as_mut() {
        if !state.unacked.is_empty() {
            conn.queue(&sm::r());
            state.requested = true;
        }
    }
    Some(live)
}

/// Keeps a detached session until it is resumed or its time is up.
async fn park(server: &ServerState, mut live: Box<Live>, shutdown: &mut watch::Receiver<bool>) {
    enum Ev {
        Take(sm::TakeoverRequest),
        End,
    }
    let deadline = tokio::time::sleep(Duration::from_secs(server.config.sm.resume_timeout_secs));
    tokio::pin!(deadline);
    while let Some(takeover) = live.sm.as_mut().and_then(|s| s.takeover.as_mut()) {
        let ev = tokio::select! {
            req = takeover.recv() => match req {
                Some(reply) => Ev::Take(reply),
                None => Ev::End,
            },
            // Replaced by a new bind of the same resource, account closed, or a queue
            // that overflowed while detached: the session is over.
            _ = live.channels.control.recv() => Ev::End,
            _ = &mut deadline => Ev::End,
            _ = shutdown.changed() => Ev::End,
        };
        match ev {
            Ev::Take(reply) => match reply.send(live) {
                Ok(()) => return,
                Err(back) => live = back,
            },
            Ev::End => break,
        }
    }
    tracing::info!("detached session ended");
    finish_live(server, *live);
}

/// Ends a session for good.
fn finish_live(server: &ServerState, live: Live) {
    let Live {
        handle,
        mut channels,
        sm,
        csi: _,
    } = live;
    // Held-back presence and chat states are stale once nobody will read them.
    let unacked = sm.map(|s| {
        if let Some(id) = &s.id {
            server.resumable.remove(id);
        }
        s.unacked
    });
    end_session(server, &handle, &mut channels, unacked);
}

/// Writes a stanza to the client, counting it when stream management is on.
fn write(conn: &mut Conn, sm: Option<&mut sm::SmState>, el: Element) {
    conn.queue(&el);
    if let Some(sm) = sm {
        if el.ns() == ns::CLIENT && Kind::of(&el).is_some() {
            sm.record_sent(el);
        }
    }
}

/// Offers an outbound stanza to client state indication, then writes what is due.
fn emit(server: &ServerState, conn: &mut Conn, live: &mut Live, out: Outbound) {
    if live.csi.inactive {
        let el = out.into_element(&live.handle.jid);
        if let Some(list) = live.csi.offer(el, server.config.csi.max_held) {
            for el in list {
                write(conn, live.sm.as_mut(), el);
            }
        }
        return;
    }
    match out {
        Outbound::Stanza(el) => write(conn, live.sm.as_mut(), el),
        Outbound::Shared(shared) => {
            let to = live.handle.jid.as_str();
            conn.queue_shared(&shared, to);
            // Stream management keeps a copy of its own until the client acknowledges it
            // (shared stanzas are always stanzas, so it always counts).
            if let Some(sm) = live.sm.as_mut() {
                sm.record_sent(shared.to_element(to));
            }
        }
    }
}

/// After a batch of output: ask for an acknowledgement if none is outstanding, and stop
/// a client that lets unacknowledged stanzas pile up.
fn request_ack(server: &ServerState, conn: &mut Conn, live: &mut Live) -> Result<(), C2sError> {
    let Some(state) = live.sm.as_mut() else {
        return Ok(());
    };
    if state.unacked.len() > server.config.sm.max_unacked {
        return Err(C2sError::Stream(
            StreamError::new("policy-violation").with_text("too many unacknowledged stanzas"),
        ));
    }
    if !state.unacked.is_empty() && !state.requested {
        conn.queue(&sm::r());
        state.requested = true;
    }
    Ok(())
}

/// The bound session: stanzas in from the client, stanzas out from the router.
async fn session_loop(
    server: &ServerState,
    conn: &mut Conn,
    live: &mut Live,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    enum Ev {
        Control(Option<Control>),
        Shutdown,
        Out(Option<Outbound>),
        Read(Result<(), C2sError>),
        Takeover(Option<sm::TakeoverRequest>),
        Idle,
    }
    // The idle timeout counts from the end of the last event handled. One timer lives as
    // long as the loop and is only moved when it fires early: arming a fresh timeout for
    // every event (registering it with the runtime's timer wheel and removing it again)
    // cost more than the rest of an event's bookkeeping.
    let idle = Duration::from_secs(server.config.limits.idle_timeout_secs);
    let mut last_event = tokio::time::Instant::now();
    let idle_timer = tokio::time::sleep_until(last_event + idle);
    tokio::pin!(idle_timer);
    // Likewise the waits for a close order and for shutdown: made once, they register
    // with their notifier once, instead of registering and unregistering on every event.
    // Either ends the loop when it completes, so neither is polled again after that.
    let mut control = live.channels.control.watcher();
    let control_order = control.recv();
    tokio::pin!(control_order);
    let shutdown_probe = shutdown.clone();
    let shutdown_signal = shutdown.changed();
    tokio::pin!(shutdown_signal);
    loop {
        // Traffic is polled first, so an event costs no poll of the close order's and
        // shutdown's notifiers (each takes a lock). Both still come before traffic: an
        // atomic load here catches them between events, and their waits below (registered
        // on the first pass) wake the task when it is idle.
        let early = if live.channels.control.posted() {
            live.channels.control.try_recv().ok()
        } else {
            None
        };
        let ev = if let Some(order) = early {
            Ev::Control(Some(order))
        } else if shutdown_probe.has_changed().unwrap_or(true) {
            Ev::Shutdown
        } else {
            let takeover = live.sm.as_mut().and_then(|s| s.takeover.as_mut());
            tokio::select! {
                biased;
                // A resumption elsewhere takes over before more traffic is handled here.
                req = async {
                    match takeover {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Ev::Takeover(req),
                out = live.channels.rx.recv() => Ev::Out(out),
                read = conn.read_some() => Ev::Read(read),
                ctl = &mut control_order => Ev::Control(ctl),
                _ = &mut shutdown_signal => Ev::Shutdown,
                () = &mut idle_timer => Ev::Idle,
            }
        };
        match ev {
            Ev::Idle => {
                let due = last_event + idle;
                if tokio::time::Instant::now() >= due {
                    return End::Lost(C2sError::Stream(StreamError::new("connection-timeout")));
                }
                idle_timer.as_mut().reset(due);
                // Not an event: the deadline stays where it is.
                continue;
            }
            Ev::Control(Some(Control::Close(err))) => {
                // What was queued before the order (a reply, an announcement) still
                // goes out ahead of the stream error.
                while let Ok(out) = live.channels.rx.try_recv() {
                    emit(server, conn, live, out);
                }
                for el in live.csi.release() {
                    write(conn, live.sm.as_mut(), el);
                }
                return End::Over(C2sError::Stream(err));
            }
            Ev::Control(None) | Ev::Out(None) => return End::Over(C2sError::Closed),
            Ev::Shutdown => {
                return End::Over(C2sError::Stream(StreamError::new("system-shutdown")))
            }
            Ev::Takeover(Some(reply)) => return End::TakenOver(reply),
            Ev::Takeover(None) => {
                if let Some(s) = live.sm.as_mut() {
                    s.takeover = None;
                }
            }
            Ev::Out(Some(out)) => {
                emit(server, conn, live, out);
                // Batch whatever else is already waiting into the same write.
                let mut n = 0;
                while n < 64 {
                    match live.channels.rx.try_recv() {
                        Ok(out) => emit(server, conn, live, out),
                        Err(_) => break,
                    }
                    n += 1;
                }
                if let Err(e) = request_ack(server, conn, live) {
                    return End::Over(e);
                }
                if let Err(e) = conn.flush().await {
                    return End::Lost(e);
                }
            }
            Ev::Read(Err(e)) => return End::Lost(e),
            Ev::Read(Ok(())) => {
                if let Err(e) = drain_events(server, conn, live) {
                    return End::Over(e);
                }
                if let Some(state) = live.sm.as_mut() {
                    if std::mem::take(&mut state.answer_due) {
                        // The acknowledgement promises durability: archive and offline
                        // writes of the stanzas it covers reach the disk first.
                        if let Err(e) = server.store.flush_async().await {
                            tracing::error!("flushing before an acknowledgement failed: {e}");
                            return End::Over(C2sError::Stream(StreamError::new(
                                "internal-server-error",
                            )));
                        }
                        conn.queue(&sm::a(state.inbound));
                    }
                }
                if let Err(e) = request_ack(server, conn, live) {
                    return End::Over(e);
                }
                if let Err(e) = conn.flush().await {
                    return End::Lost(e);
                }
            }
        }
        last_event = tokio::time::Instant::now();
    }
}

/// Handles every complete element the reader has. `Err(Closed)`: the client closed
/// the stream.
fn drain_events(server: &ServerState, conn: &mut Conn, live: &mut Live) -> Result<(), C2sError> {
    while let Some(event) = conn.next_event()? {
        match event {
            StreamEvent::Close => return Err(C2sError::Closed),
            StreamEvent::Open(_) => {
                return Err(C2sError::Stream(
                    StreamError::new("not-well-formed").with_text("unexpected stream header"),
                ))
            }
            StreamEvent::Element(el) if el.ns() == ns::SM => sm_nonza(server, conn, live, &el)?,
            StreamEvent::Element(el)
                if el.ns() == ns::CSI && matches!(el.name(), "active" | "inactive") =>
            {
                live.csi.inactive = el.name() == "inactive";
                for el in live.csi.release() {
                    write(conn, live.sm.as_mut(), el);
                }
            }
            StreamEvent::Element(el) => {
                let reply = client_stanza(server, &live.handle, el)?;
                // Routed (delivered to a queue, stored, or answered): it counts.
                if let Some(state) = live.sm.as_mut() {
                    state.record_handled();
                }
                if let Some(reply) = reply {
                    emit(server, conn, live, Outbound::Stanza(reply));
                }
            }
        }
    }
    Ok(())
}

/// XEP-0198 nonzas in a bound session.
fn sm_nonza(
    server: &ServerState,
    conn: &mut Conn,
    live: &mut Live,
    el: &Element,
) -> Result<(), C2sError> {
    tracing::trace!(nonza = el.name(), h = el.attr("h"), "stream management");
    match (el.name(), live.sm.as_mut()) {
        ("enable", None) => {
            let resume = matches!(el.attr("resume"), Some("true" | "1"));
            let mut enabled = Element::new("enabled", ns::SM);
            let state = if resume {
                let (id, rx) = server.resumable.register(live.handle.jid.to_bare());
                enabled.set_attr("id", id.clone());
                enabled.set_attr("resume", "true");
                enabled.set_attr("max", server.config.sm.resume_timeout_secs.to_string());
                sm::SmState::new(Some(id), Some(rx))
            } else {
                sm::SmState::new(None, None)
            };
            live.sm = Some(state);
            conn.queue(&enabled);
        }
        ("enable" | "resume", _) => conn.queue(&sm::failed("unexpected-request", None)),
        ("r", Some(state)) => state.answer_due = true,
        ("a", Some(state)) => {
            let Some(h) = el.attr("h").and_then(|h| h.trim().parse::<u32>().ok()) else {
                return Err(C2sError::Stream(
                    StreamError::new("invalid-xml").with_text("<a/> needs a numeric h"),
                ));
            };
            state
                .ack(h)
                .map_err(|t| C2sError::Stream(sm::too_high_error(&t)))?;
            state.requested = false;
        }
        _ => {
            return Err(C2sError::Stream(
                StreamError::new("unsupported-stanza-type").with_text(format!(
                    "<{}/> is not expected here (is stream management enabled?)",
                    el.name()
                )),
            ))
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
    let mut to_jid = None;
    if let Some(to) = el.attr("to") {
        match Jid::new(to) {
            Ok(j) => {
                if j.as_str() != to {
                    let normalised = j.as_str().to_string();
                    el.set_attr("to", normalised);
                }
                to_jid = Some(j);
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
    // The router is handed the parsed `to`, so it does not prepare the JID again.
    router::from_client_parsed(server, handle, el, to_jid);
    Ok(None)
}

/// After the session is gone: tell the account's other resources (and, through the hook,
/// contacts) that this resource went away, then run the modules' cleanup.
///
/// `unacked` is set for a stream-management session: what it sent without an
/// acknowledgement, and what was still queued, goes to offline storage (see `sm.rs` for
/// why not to the other resources).
fn end_session(
    server: &ServerState,
    handle: &SessionHandle,
    channels: &mut SessionChannels,
    unacked: Option<VecDeque<Element>>,
) {
    let sm_session = unacked.is_some();
    if let Some(unacked) = unacked {
        // Still bound while the backlog moves to offline storage, so messages arriving
        // meanwhile queue up behind it instead of overtaking it into storage; the
        // second pass below takes what arrived until the unbind.
        for el in unacked {
            sm::reroute(server, el);
        }
        while let Ok(out) = channels.rx.try_recv() {
            sm::reroute(server, out.into_element(&handle.jid));
        }
    }
    let removed = server.sessions.unbind(handle);
    channels.rx.close();
    match sm_session {
        true => {
            while let Ok(out) = channels.rx.try_recv() {
                sm::reroute(server, out.into_element(&handle.jid));
            }
        }
        false => {
            // Whatever was queued and not written goes back to the router, which finds
            // the resource gone and applies the rules for an unavailable resource.
            while let Ok(out) = channels.rx.try_recv() {
                router::undeliverable(server, out.into_element(&handle.jid));
            }
        }
    }
    let bare = handle.jid.to_bare();
    if let Err(e) = server
        .store
        .record_activity(bare.as_str(), true, crate::store::now_secs())
    {
        tracing::warn!("recording the logout time failed: {e}");
    }
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
