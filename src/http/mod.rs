//! The HTTP listener: XMPP over WebSocket (RFC 7395), BOSH (XEP-0124/0206), XEP-0156
//! discovery and the web chat page.
//!
//! HTTP itself is hyper's job; this module decides what each path means and puts limits
//! on what a client may make us hold: request heads are bounded in size and in time
//! (a client trickling a request head is cut off), bodies in size, connections in number
//! (per IP, shared with c2s, and overall).

pub mod bosh;
mod web;
pub mod ws;

use crate::sasl::ChannelBindings;
use crate::{ConnectionGuard, ServerState};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// How long open HTTP exchanges get to finish once shutdown starts.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(5);

pub type Body = Full<Bytes>;

/// What every HTTP listener of one server shares.
pub struct Http {
    server: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
    /// Held by every task serving a client, so that shutdown waits for them.
    alive: mpsc::Sender<()>,
    connections: Arc<Semaphore>,
    pub bosh: Arc<bosh::Sessions>,
}

/// One accepted connection, as request handlers see it.
pub struct Ctx {
    http: Arc<Http>,
    pub peer: SocketAddr,
    /// The listener speaks HTTPS.
    pub tls: bool,
    /// The stream counts as encrypted for `c2s.require_encryption`.
    pub secure: bool,
    pub bindings: ChannelBindings,
    /// Keeps the connection counted (per IP and overall) while an upgraded WebSocket
    /// outlives the HTTP exchange that created it.
    admission: Arc<(ConnectionGuard, tokio::sync::OwnedSemaphorePermit)>,
}

impl Ctx {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.http.server
    }
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.http.shutdown.clone()
    }
    pub fn alive(&self) -> mpsc::Sender<()> {
        self.http.alive.clone()
    }
    /// Keeps this connection's admission alive for as long as the returned value is.
    pub fn guard(&self) -> Arc<dyn Send + Sync> {
        self.admission.clone()
    }
}

impl Http {
    pub fn new(
        server: Arc<ServerState>,
        shutdown: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
    ) -> Arc<Http> {
        Arc::new(Http {
            connections: Arc::new(Semaphore::new(server.config.http.max_connections)),
            bosh: bosh::Sessions::new(),
            server,
            shutdown,
            alive,
        })
    }

    /// Binds one listener and starts accepting on it.
    pub async fn listen(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let http = self.clone();
        let task = tokio::spawn(async move {
            let mut shutdown = http.shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = shutdown.changed() => break,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept on {bound} failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = http.connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "http.max_connections reached; refused");
                    continue;
                };
                let Some(guard) = http.server.admit(peer.ip()) else {
                    tracing::warn!(%peer, "too many connections from this address; refused");
                    continue;
                };
                let http = http.clone();
                tokio::spawn(async move {
                    let alive = http.alive.clone();
                    connection(http, tcp, peer, Arc::new((guard, permit))).await;
                    drop(alive);
                });
            }
        });
        Ok((bound, task))
    }
}

async fn connection(
    http: Arc<Http>,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: Arc<(ConnectionGuard, tokio::sync::OwnedSemaphorePermit)>,
) {
    let cfg = &http.server.config.http;
    let _ = tcp.set_nodelay(true);
    let trusted = cfg.consider_secure || (cfg.loopback_is_secure && peer.ip().is_loopback());
    let (io, bindings) = if cfg.tls {
        let accept = http.server.tls.http_acceptor.accept(crate::net::Tcp(tcp));
        match tokio::time::timeout(crate::net::TLS_HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(tls)) => {
                let bindings = http.server.tls.bindings(&tls);
                (crate::net::MaybeTls::Tls(Box::new(tls)), bindings)
            }
            _ => {
                tracing::debug!(%peer, "HTTPS handshake failed");
                return;
            }
        }
    } else {
        (crate::net::MaybeTls::Plain(tcp), ChannelBindings::default())
    };
    let ctx = Arc::new(Ctx {
        http: http.clone(),
        peer,
        tls: cfg.tls,
        secure: cfg.tls || trusted,
        bindings,
        admission: guard,
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(ctx, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.request_timeout_secs))
        .max_header_size(cfg.max_header_bytes)
        .max_buf_size(cfg.max_header_bytes.max(8192) + 8192);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = http.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACEFUL_SHUTDOWN, conn).await;
        }
    }
}

async fn route(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/xmpp-websocket" => ws::upgrade(ctx, req),
        "/http-bind" | "/http-bind/" => bosh::handle(ctx, req).await,
        _ if req.method() != Method::GET && req.method() != Method::HEAD => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        "/.well-known/host-meta" => web::host_meta(&ctx, &req, false),
        "/.well-known/host-meta.json" => web::host_meta(&ctx, &req, true),
        _ => web::serve(&ctx, &req, &path).await,
    }
}

/// A short text response (errors and the like).
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
