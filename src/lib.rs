//! Starling, an XMPP server.
//!
//! `Server::start(config)` binds every configured listener and returns a handle; tests
//! start servers in-process on port 0 and read the bound addresses from the handle.

pub mod accounts;
pub mod c2s;
pub mod config;
pub mod control;
pub mod datetime;
pub mod forms;
pub mod http;
pub mod im;
pub mod jidext;
pub mod module;
pub mod muc;
pub mod net;
pub mod ns;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod services;
pub mod sessions;
pub mod stanza;
pub mod store;
pub mod xml;

pub use config::Config;

use module::Registry;
use net::tls::TlsSetup;
use sessions::Sessions;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Everything a connection or handler needs, shared behind one `Arc`.
pub struct ServerState {
    pub config: Config,
    pub store: Store,
    pub sessions: Sessions,
    pub registry: Registry,
    pub tls: TlsSetup,
    /// XEP-0198 sessions that can be resumed, by id.
    pub resumable: c2s::sm::Resumable,
    pub s2s: s2s::S2s,
    connections: Mutex<HashMap<IpAddr, usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Tls(#[from] net::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Control(std::io::Error),
}

/// Counts a connection against its IP's limit for as long as it lives.
struct ConnectionGuard {
    server: Arc<ServerState>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = self
            .server
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ServerState {
    /// The shared state, before any listener exists (also what unit tests build).
    pub fn new(config: Config, store: Store, registry: Registry, tls: TlsSetup) -> ServerState {
        ServerState {
            // A login flushes up to a full offline store into the new session at once, so
            // the queue has room for that on top of the stalled-reader allowance. tokio
            // allocates the first block of 32 slots with the channel and the rest only as
            // they fill, and slots are pointer-sized (see `OutboundRx`), so the bound
            // costs an idle session almost nothing.
            sessions: Sessions::new(config.limits.session_queue + config.im.offline_quota),
            config,
            store,
            registry,
            tls,
            s2s: s2s::S2s::new(),
            resumable: c2s::sm::Resumable::default(),
            connections: Mutex::new(HashMap::new()),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.config.limits.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            server: self.clone(),
            ip,
        })
    }
}

/// What a listener accepts.
#[derive(Clone, Copy, Debug)]
enum Listener {
    C2s,
    C2sTls,
    S2s,
    S2sTls,
}

/// A running server.
pub struct Server {
    pub state: Arc<ServerState>,
    /// Bound addresses: (c2s STARTTLS, c2s direct TLS).
    pub c2s_addrs: Vec<SocketAddr>,
    pub c2s_tls_addrs: Vec<SocketAddr>,
    /// Bound HTTP listeners (WebSocket, BOSH, host-meta, web chat).
    pub http_addrs: Vec<SocketAddr>,
    /// Bound addresses: (s2s STARTTLS, s2s direct TLS).
    pub s2s_addrs: Vec<SocketAddr>,
    pub s2s_tls_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Every connection task holds a clone; shutdown waits until all are dropped.
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store, loads or generates the certificate, binds every listener.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        let store = Store::open(&config.data_dir)?;
        let tls = TlsSetup::load(&config)?;
        let mut registry = Registry::default();
        services::register_all(&mut registry, &config);
        let state = Arc::new(ServerState::new(config, store, registry, tls));
        state.registry.run_start(&state);
        let (shutdown, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        state
            .s2s
            .attach(&state, shutdown.subscribe(), alive_tx.clone());
        let mut server = Server {
            state: state.clone(),
            c2s_addrs: Vec::new(),
            c2s_tls_addrs: Vec::new(),
            http_addrs: Vec::new(),
            s2s_addrs: Vec::new(),
            s2s_tls_addrs: Vec::new(),
            shutdown,
            alive_tx,
            alive_rx,
            tasks: Vec::new(),
        };
        for addr in config::parse_addrs(&state.config.c2s.listen)? {
            let bound = server.listen(addr, Listener::C2s).await?;
            server.c2s_addrs.push(bound);
        }
        for addr in config::parse_addrs(&state.config.c2s.direct_tls_listen)? {
            let bound = server.listen(addr, Listener::C2sTls).await?;
            server.c2s_tls_addrs.push(bound);
        }
        // Every HTTP task holds an `alive` clone, so shutdown waits for them as for c2s.
        let web = http::Http::new(
            state.clone(),
            server.shutdown.subscribe(),
            server.alive_tx.clone(),
        );
        for addr in config::parse_addrs(&state.config.http.listen)? {
            let (bound, task) = web
                .listen(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            server.http_addrs.push(bound);
            server.tasks.push(task);
        }
        drop(web);
        for addr in config::parse_addrs(&state.config.s2s.listen)? {
            let bound = server.listen(addr, Listener::S2s).await?;
            server.s2s_addrs.push(bound);
        }
        for addr in config::parse_addrs(&state.config.s2s.direct_tls_listen)? {
            let bound = server.listen(addr, Listener::S2sTls).await?;
            server.s2s_tls_addrs.push(bound);
        }
        let control = control::start(state.clone(), server.shutdown.subscribe())
            .await
            .map_err(StartError::Control)?;
        server.tasks.push(control);
        tracing::info!(
            domain = %state.config.domain,
            c2s = ?server.c2s_addrs,
            c2s_tls = ?server.c2s_tls_addrs,
            http = ?server.http_addrs,
            s2s = ?server.s2s_addrs,
            s2s_tls = ?server.s2s_tls_addrs,
            "Starling started"
        );
        Ok(server)
    }

    async fn listen(&mut self, addr: SocketAddr, kind: Listener) -> Result<SocketAddr, StartError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let state = self.state.clone();
        let mut shutdown = self.shutdown.subscribe();
        let alive = self.alive_tx.clone();
        self.tasks.push(tokio::spawn(async move {
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
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(guard) = state.admit(peer.ip()) else {
                    tracing::warn!(%peer, "too many connections from this address; refused");
                    drop(tcp);
                    continue;
                };
                let state = state.clone();
                let shutdown = shutdown.clone();
                let alive = alive.clone();
                tokio::spawn(async move {
                    match kind {
                        Listener::C2s => c2s::serve(state, tcp, peer, false, shutdown).await,
                        Listener::C2sTls => c2s::serve(state, tcp, peer, true, shutdown).await,
                        Listener::S2s => {
                            s2s::incoming::serve(state, tcp, peer, false, shutdown).await
                        }
                        Listener::S2sTls => {
                            s2s::incoming::serve(state, tcp, peer, true, shutdown).await
                        }
                    }
                    drop(guard);
                    drop(alive);
                });
            }
        }));
        Ok(bound)
    }

    /// Closes every stream with `<system-shutdown/>`, waits for the connections to end
    /// (bounded), and flushes the store.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        let _ = self.shutdown.send(true);
        self.state.s2s.detach();
        drop(self.alive_tx);
        let wait = async { while self.alive_rx.recv().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        control::remove_socket(&self.state.config);
        if let Err(e) = self.state.store.flush() {
            tracing::error!("flushing the store failed: {e}");
        }
        tracing::info!("stopped");
    }
}
