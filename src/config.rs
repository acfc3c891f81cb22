//! Configuration: TOML, every key defaulted. `examples/starling.toml` documents each key;
//! outside tools depend on these names, so keep them stable.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// More runtime threads than this is a typo, not a plan.
const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The hosted domain.
    pub domain: String,
    pub data_dir: PathBuf,
    /// Bare JIDs allowed to run administrative commands.
    pub admins: Vec<String>,
    /// Default log filter; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Threads that run sessions; 0 means one per CPU core.
    pub workers: usize,
    pub c2s: C2sConfig,
    pub s2s: S2sConfig,
    pub muc: MucConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub im: ImConfig,
    pub sm: SmConfig,
    pub mam: MamConfig,
    pub csi: CsiConfig,
}

/// XEP-0198 stream management.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmConfig {
    /// Seconds a dropped session stays resumable; its resource stays bound meanwhile and
    /// stanzas for it wait in its queue. After that, unacknowledged and queued messages
    /// go to offline storage.
    pub resume_timeout_secs: u64,
    /// Stanzas sent to a client and not yet acknowledged before the server closes the
    /// stream (a client that never acks would otherwise grow this without bound).
    pub max_unacked: usize,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            resume_timeout_secs: 300,
            max_unacked: 5000,
        }
    }
}

/// XEP-0313 message archive.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MamConfig {
    /// Archive messages at all (users can still opt out with their preferences).
    pub enabled: bool,
    /// Days an archived message is kept; 0 keeps it forever.
    pub retention_days: u64,
    /// Largest page a query may ask for (XEP-0059 `max`), and the page size when it
    /// does not say.
    pub max_page: usize,
    pub default_page: usize,
    /// Default archiving preference for users who set none: always | never | roster.
    pub default_mode: String,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            enabled: true,
            retention_days: 0,
            max_page: 250,
            default_page: 50,
            default_mode: "always".into(),
        }
    }
}

/// XEP-0352 client state indication.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsiConfig {
    /// Stanzas held back for an inactive client (after coalescing) before they are all
    /// sent anyway.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 100 }
    }
}

/// Instant-messaging limits (RFC 6121 and the per-user services).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImConfig {
    /// Most items in one roster; adding more is refused with `not-allowed`.
    pub max_roster_items: usize,
    /// Messages stored for one offline user; past this the sender gets
    /// `service-unavailable` (XEP-0160).
    pub offline_quota: usize,
    /// Largest vCard (XEP-0054), in bytes of XML; bigger ones get `not-acceptable`.
    pub max_vcard_bytes: usize,
    /// Private XML storage (XEP-0049) per user, in bytes.
    pub max_private_bytes: usize,
    /// Most JIDs on one blocklist (XEP-0191).
    pub max_blocklist_items: usize,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            max_roster_items: 1000,
            offline_quota: 500,
            max_vcard_bytes: 200 * 1024,
            max_private_bytes: 256 * 1024,
            max_blocklist_items: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C2sConfig {
    /// Plain-text listeners offering STARTTLS.
    pub listen: Vec<String>,
    /// XEP-0368 direct TLS listeners.
    pub direct_tls_listen: Vec<String>,
    /// XEP-0077 in-band registration of new accounts.
    pub allow_registration: bool,
    /// When false, SASL (PLAIN included) is allowed on unencrypted streams.
    pub require_encryption: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S2sConfig {
    /// Plain-text listeners offering STARTTLS.
    pub listen: Vec<String>,
    /// XEP-0368 direct TLS listeners (advertised with `_xmpps-server._tcp` SRV records).
    pub direct_tls_listen: Vec<String>,
    /// Static overrides of DNS SRV: remote domain -> "host:port".
    pub routes: BTreeMap<String, String>,
    /// Refuse server streams that are not encrypted (both directions).
    pub require_encryption: bool,
    /// Trust the operating system's certificate authorities for SASL EXTERNAL.
    pub system_roots: bool,
    /// Extra PEM file of certificate authorities trusted for SASL EXTERNAL.
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for a TCP connection to a remote server.
    pub connect_timeout_secs: u64,
    /// Seconds an outgoing stream may take from connecting to being authenticated.
    pub negotiation_timeout_secs: u64,
    /// Seconds without traffic after which an outgoing stream is closed.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MucConfig {
    /// Defaults to "conference." + domain.
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listeners for WebSocket (RFC 7395), BOSH (XEP-0206), host-meta and the web page.
    pub listen: Vec<String>,
    /// Serve HTTPS (and so `wss://`) on these listeners with the `[tls]` certificate.
    pub tls: bool,
    /// Treat every HTTP connection as encrypted, for a TLS-terminating reverse proxy that
    /// reaches this listener over a network it trusts.
    pub consider_secure: bool,
    /// Treat connections from a loopback address as encrypted: the bytes never leave
    /// the machine, which is the usual place for a reverse proxy.
    pub loopback_is_secure: bool,
    /// Base URL clients use to reach this listener ("https://chat.example.org"), for
    /// host-meta and the web page. Empty: taken from each request's Host header.
    pub public_url: String,
    /// Folder holding the web chat's package.json and, once `npm ci` has run there,
    /// node_modules/converse.js. Relative paths are from the working directory.
    pub web_root: PathBuf,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Largest request body (a BOSH request), in bytes.
    pub max_body_bytes: usize,
    /// Simultaneous HTTP connections on all listeners together.
    pub max_connections: usize,
    /// Seconds a client may take to send a request head, and may keep an idle
    /// connection open between requests.
    pub request_timeout_secs: u64,
    /// Longest a BOSH request may be held waiting for data (the client's `wait` is
    /// capped to this).
    pub bosh_max_wait_secs: u64,
    /// Seconds without any request after which a BOSH session ends.
    pub bosh_inactivity_secs: u64,
    /// BOSH requests the server may hold at once per session (the client's `hold` is
    /// capped to this).
    pub bosh_max_hold: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. Absent: a self-signed certificate is generated
    /// under `data_dir` on first start.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// TLS 1.3 session tickets sent to a client after a full handshake (0..8), so that it
    /// can resume TLS when it reconnects. 0: none, and every connection pays a full
    /// handshake; each ticket costs a key derivation and an encryption on every handshake.
    pub session_tickets: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest stanza a client may send, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attrs: usize,
    /// Seconds a connection may take to authenticate and bind.
    pub auth_timeout_secs: u64,
    /// Seconds of silence after which an authenticated stream is closed
    /// (clients send whitespace keepalives or pings well within this).
    pub idle_timeout_secs: u64,
    /// Simultaneous connections accepted from one IP address.
    pub max_connections_per_ip: usize,
    /// Delay before answering a failed authentication attempt, in milliseconds.
    pub auth_failure_delay_ms: u64,
    /// Failed SASL attempts allowed on one stream before it is closed.
    pub max_auth_attempts: u32,
    /// Stanzas queued for one session before it is treated as a stalled reader.
    pub session_queue: usize,
    /// Seconds an XEP-0050 command session may sit between two stages before it expires.
    pub command_session_timeout_secs: u64,
    /// Seconds a write may wait for the peer to read before the connection is dropped.
    pub write_timeout_secs: u64,
    /// Milliseconds a stream we close waits for the peer's own closing tag (RFC 6120
    /// §4.4) before the connection is dropped.
    pub close_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            admins: Vec::new(),
            log_level: "info".into(),
            workers: 0,
            c2s: C2sConfig::default(),
            s2s: S2sConfig::default(),
            muc: MucConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            im: ImConfig::default(),
            sm: SmConfig::default(),
            mam: MamConfig::default(),
            csi: CsiConfig::default(),
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: vec!["127.0.0.1:5222".into()],
            direct_tls_listen: vec!["127.0.0.1:5223".into()],
            allow_registration: false,
            require_encryption: true,
        }
    }
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: vec!["127.0.0.1:5269".into()],
            direct_tls_listen: Vec::new(),
            routes: BTreeMap::new(),
            require_encryption: true,
            system_roots: true,
            ca_file: None,
            connect_timeout_secs: 10,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 300,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec!["127.0.0.1:5280".into()],
            tls: false,
            consider_secure: false,
            loopback_is_secure: true,
            public_url: String::new(),
            web_root: PathBuf::from("web"),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 512 * 1024,
            max_connections: 10_000,
            request_timeout_secs: 30,
            bosh_max_wait_secs: 60,
            bosh_inactivity_secs: 60,
            bosh_max_hold: 1,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attrs: 64,
            auth_timeout_secs: 60,
            idle_timeout_secs: 600,
            max_connections_per_ip: 1000,
            auth_failure_delay_ms: 1000,
            max_auth_attempts: 3,
            session_queue: 1024,
            command_session_timeout_secs: 600,
            write_timeout_secs: 30,
            close_wait_ms: 2000,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The MUC service's domain.
    pub fn muc_domain(&self) -> String {
        self.muc
            .domain
            .clone()
            .unwrap_or_else(|| format!("conference.{}", self.domain))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let domain = jid::BareJid::new(&self.domain)
            .map_err(|e| ConfigError::Invalid(format!("domain {:?}: {e}", self.domain)))?;
        if domain.node().is_some() || domain.as_str() != self.domain {
            return Err(ConfigError::Invalid(format!(
                "domain {:?} must be a normalised domain name",
                self.domain
            )));
        }
        for admin in &self.admins {
            jid::BareJid::new(admin)
                .map_err(|e| ConfigError::Invalid(format!("admin {admin:?}: {e}")))?;
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid(format!(
                "workers = {} (at most {MAX_WORKERS})",
                self.workers
            )));
        }
        for list in [
            &self.c2s.listen,
            &self.c2s.direct_tls_listen,
            &self.s2s.listen,
            &self.s2s.direct_tls_listen,
            &self.http.listen,
        ] {
            parse_addrs(list)?;
        }
        for (domain, target) in &self.s2s.routes {
            if !crate::s2s::route_is_valid(target) {
                return Err(ConfigError::Invalid(format!(
                    "s2s.routes.{domain}: {target:?} is not host:port or tls://host:port"
                )));
            }
        }
        let s = &self.s2s;
        for (ok, what) in [
            (
                (1..=300).contains(&s.connect_timeout_secs),
                "s2s.connect_timeout_secs must be 1..300",
            ),
            (
                (1..=600).contains(&s.negotiation_timeout_secs),
                "s2s.negotiation_timeout_secs must be 1..600",
            ),
            (
                (1..=86400).contains(&s.idle_timeout_secs),
                "s2s.idle_timeout_secs must be 1..86400",
            ),
        ] {
            if !ok {
                return Err(ConfigError::Invalid(what.into()));
            }
        }
        if self.tls.certificate.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.certificate and tls.key go together".into(),
            ));
        }
        let l = &self.limits;
        let checks = [
            (
                self.tls.session_tickets <= 8,
                "tls.session_tickets must be 0..8",
            ),
            (
                l.max_stanza_bytes >= 10 * 1024 && l.max_stanza_bytes <= 64 << 20,
                "limits.max_stanza_bytes must be 10 KiB..64 MiB",
            ),
            (
                l.max_depth >= 8 && l.max_depth <= 1024,
                "limits.max_depth must be 8..1024",
            ),
            (
                l.max_attrs >= 8 && l.max_attrs <= 1024,
                "limits.max_attrs must be 8..1024",
            ),
            (l.auth_timeout_secs >= 1, "limits.auth_timeout_secs >= 1"),
            (l.idle_timeout_secs >= 10, "limits.idle_timeout_secs >= 10"),
            (
                l.max_connections_per_ip >= 1,
                "limits.max_connections_per_ip >= 1",
            ),
            (
                l.auth_failure_delay_ms <= 60_000,
                "limits.auth_failure_delay_ms <= 60000",
            ),
            (l.max_auth_attempts >= 1, "limits.max_auth_attempts >= 1"),
            (l.session_queue >= 16, "limits.session_queue >= 16"),
            (
                l.command_session_timeout_secs >= 1 && l.command_session_timeout_secs <= 86_400,
                "limits.command_session_timeout_secs must be 1..86400",
            ),
            (
                self.http.max_header_bytes >= 8192 && self.http.max_header_bytes <= 1 << 20,
                "http.max_header_bytes must be 8 KiB..1 MiB",
            ),
            (
                self.http.max_body_bytes >= 1024 && self.http.max_body_bytes <= 64 << 20,
                "http.max_body_bytes must be 1 KiB..64 MiB",
            ),
            (self.http.max_connections >= 1, "http.max_connections >= 1"),
            (
                self.http.request_timeout_secs >= 1,
                "http.request_timeout_secs >= 1",
            ),
            (
                self.http.bosh_max_wait_secs >= 1 && self.http.bosh_max_wait_secs <= 3600,
                "http.bosh_max_wait_secs must be 1..3600",
            ),
            (
                self.http.bosh_inactivity_secs >= 1,
                "http.bosh_inactivity_secs >= 1",
            ),
            (
                // A held BOSH request is the client waiting, not the client gone.
                self.limits.idle_timeout_secs > self.http.bosh_max_wait_secs,
                "limits.idle_timeout_secs must exceed http.bosh_max_wait_secs",
            ),
            (
                self.http.bosh_max_hold >= 1 && self.http.bosh_max_hold <= 16,
                "http.bosh_max_hold must be 1..16",
            ),
            (
                self.http.public_url.is_empty()
                    || ((self.http.public_url.starts_with("http://")
                        || self.http.public_url.starts_with("https://"))
                        && !self.http.public_url.contains(['"', '\'', '<', '>', ' '])),
                "http.public_url must be empty or an http(s):// URL",
            ),
            (l.write_timeout_secs >= 1, "limits.write_timeout_secs >= 1"),
            (l.close_wait_ms <= 60_000, "limits.close_wait_ms <= 60000"),
            (self.sm.max_unacked >= 16, "sm.max_unacked >= 16"),
            (
                self.mam.max_page >= 1 && self.mam.default_page >= 1,
                "mam.max_page and mam.default_page >= 1",
            ),
            (
                matches!(
                    self.mam.default_mode.as_str(),
                    "always" | "never" | "roster"
                ),
                "mam.default_mode is always, never or roster",
            ),
            (self.csi.max_held >= 1, "csi.max_held >= 1"),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(ConfigError::Invalid(msg.into()));
            }
        }
        Ok(())
    }
}

pub fn parse_addrs(list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| ConfigError::Invalid(format!("{s:?} is not an IP:port address")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.muc_domain(), "conference.localhost");
        assert_eq!(c.c2s.listen, vec!["127.0.0.1:5222"]);
        assert!(c.c2s.require_encryption);
        assert_eq!(c.limits.max_stanza_bytes, 256 * 1024);
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("../examples/starling.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.domain, "localhost");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::parse("domain = \"a@b\"").is_err());
        assert!(Config::parse("[c2s]\nlisten = [\"nowhere\"]").is_err());
        assert!(Config::parse("bogus = 1").is_err());
        assert!(Config::parse("[limits]\nmax_depth = 2").is_err());
        assert!(Config::parse("workers = 100000").is_err());
        assert!(Config::parse("[limits]\nclose_wait_ms = 120000").is_err());
        assert!(Config::parse("[tls]\ncertificate = \"x.pem\"").is_err());
    }
}
