//! TLS setup: the configured certificate, or a self-signed one generated on first start.

use crate::config::Config;
use crate::sasl::ChannelBindings;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no certificate found")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key found")]
    NoKey(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What every TLS listener shares.
#[derive(Clone)]
pub struct TlsSetup {
    pub acceptor: TlsAcceptor,
    /// Same certificate, for the HTTPS listeners (ALPN http/1.1: browsers offer it,
    /// and would be refused if the only protocol we named were xmpp-client).
    pub http_acceptor: TlsAcceptor,
    /// Server side of server-to-server TLS: asks for (but does not require) the peer's
    /// certificate, which is checked after the handshake for SASL EXTERNAL.
    pub s2s_acceptor: TlsAcceptor,
    /// Client side of server-to-server TLS (STARTTLS): presents our certificate.
    pub s2s_connector: TlsConnector,
    /// The same, announcing the "xmpp-server" ALPN protocol for XEP-0368 direct TLS.
    pub s2s_direct_connector: TlsConnector,
    /// Checks a peer server's certificate against the trusted authorities; `None` when
    /// no authority is trusted (then every peer uses dialback).
    peer_verifier: Option<Arc<WebPkiServerVerifier>>,
    /// RFC 5929 tls-server-end-point data: SHA-256 of our certificate (right for the
    /// SHA-256 and ECDSA-P256 certificates we generate and that CAs issue today).
    server_end_point: Arc<Vec<u8>>,
}

impl TlsSetup {
    pub fn load(config: &Config) -> Result<TlsSetup, TlsError> {
        let (cert_path, key_path) = match (&config.tls.certificate, &config.tls.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => ensure_self_signed(&config.data_dir, &config.domain)?,
        };
        let certs = read_certs(&cert_path)?;
        let key = read_key(&key_path)?;
        let server_end_point = Sha256::digest(certs[0].as_ref()).to_vec();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(listener_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())?;
        // Our order, not the client's: see `listener_provider`.
        server_config.ignore_client_order = true;
        // rustls's default is two tickets per handshake backed by a 256-entry in-memory
        // cache: on a server with more clients than that, a ticket is usually evicted
        // before its client comes back, yet every handshake pays for both. Tickets are
        // either off or stateless (valid however many clients there are).
        server_config.send_tls13_tickets = config.tls.session_tickets;
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        if config.tls.session_tickets > 0 {
            server_config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        }
        // XEP-0368 direct TLS clients may ask for "xmpp-client"; STARTTLS clients send none.
        let mut http_config = server_config.clone();
        http_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        server_config.alpn_protocols = vec![b"xmpp-client".to_vec()];

        let mut s2s_server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(RecordClientCert(provider.clone())))
            .with_single_cert(certs.clone(), key.clone_key())?;
        s2s_server.alpn_protocols = vec![b"xmpp-server".to_vec()];
        let client = |alpn: bool| -> Result<TlsConnector, TlsError> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UnverifiedServerCert::new(
                    provider.clone(),
                )))
                .with_client_auth_cert(certs.clone(), key.clone_key())?;
            if alpn {
                c.alpn_protocols = vec![b"xmpp-server".to_vec()];
            }
            Ok(TlsConnector::from(Arc::new(c)))
        };
        let peer_verifier = peer_verifier(config, provider.clone())?;
        Ok(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            http_acceptor: TlsAcceptor::from(Arc::new(http_config)),
            s2s_acceptor: TlsAcceptor::from(Arc::new(s2s_server)),
            s2s_connector: client(false)?,
            s2s_direct_connector: client(true)?,
            peer_verifier,
            server_end_point: Arc::new(server_end_point),
        })
    }

    /// Whether a peer server's certificate chain (as presented in TLS) is issued by a
    /// trusted authority for `domain`. The check is the one for a TLS server certificate
    /// (RFC 6125 DNS-ID, serverAuth extended key usage) whether the peer was our TLS
    /// client or server: the certificates servers hold today, Let's Encrypt's included,
    /// are issued for serverAuth only, and rustls's client-certificate verifier would
    /// refuse them for want of clientAuth.
    pub fn peer_cert_valid_for(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let (Some(verifier), Some((end_entity, intermediates))) =
            (&self.peer_verifier, chain.split_first())
        else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        match verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(domain, "peer certificate not accepted: {e}");
                false
            }
        }
    }

    /// Channel-binding data for an established TLS connection.
    pub fn bindings(&self, stream: &TlsStream<super::Tcp>) -> ChannelBindings {
        let (_, conn) = stream.get_ref();
        // RFC 9266: tls-exporter is only defined for TLS 1.3 (or 1.2 with EMS, which we
        // cannot tell from here), so it is offered for 1.3 only.
        let tls_exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok()
                .map(|k| k.to_vec())
        } else {
            None
        };
        ChannelBindings {
            tls_exporter,
            tls_server_end_point: Some(self.server_end_point.as_ref().clone()),
        }
    }
}

/// The crypto provider of the listeners clients connect to: *ring*'s, with TLS 1.3's
/// mandatory suite TLS_AES_128_GCM_SHA256 first (then the TLS 1.2 AES-128 suites).
/// rustls's default order puts AES-256-GCM with SHA-384 first, and a server that follows
/// its clients gets it from most (OpenSSL's default order has it first too), but SHA-384
/// runs without hardware help here while SHA-256 has it: a TLS 1.3 handshake's key
/// schedule and transcript hashes cost about three times as much with SHA-384, for no
/// security a login needs. ChaCha20-Poly1305 stays available for clients without AES.
fn listener_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// The trusted authorities for peer servers: the system's and/or `s2s.ca_file`.
fn peer_verifier(
    config: &Config,
    provider: Arc<CryptoProvider>,
) -> Result<Option<Arc<WebPkiServerVerifier>>, TlsError> {
    let mut roots = RootCertStore::empty();
    if config.s2s.system_roots {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::debug!(
                "some system certificates could not be read: {:?}",
                found.errors
            );
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system certificate authorities loaded");
    }
    if let Some(path) = &config.s2s.ca_file {
        for cert in read_certs(path)? {
            roots.add(cert)?;
        }
    }
    if roots.is_empty() {
        return Ok(None);
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map(Some)
        .map_err(|e| TlsError::Generate(format!("peer certificate verifier: {e}")))
}

/// Client-certificate policy of server-to-server TLS: ask for a certificate, accept the
/// handshake with or without one (its signature is still checked), and leave the trust
/// decision to [`TlsSetup::peer_cert_valid_for`] once the peer has said which domain it
/// is. Refusing here would cut off every peer that authenticates with dialback.
#[derive(Debug)]
struct RecordClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for RecordClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server certificate is accepted whoever issued it and whatever names it carries;
/// only the handshake signature is checked (the peer holds the key of the certificate it
/// sent). This is the policy of outgoing server-to-server TLS: encryption is always
/// negotiated, but a peer with a self-signed or otherwise unverifiable certificate is
/// still reachable, because dialback (which proves the peer controls the domain's DNS)
/// is what authenticates the domain on those streams. Tests use it to talk to servers
/// with generated certificates.
#[derive(Debug)]
pub struct UnverifiedServerCert(Arc<CryptoProvider>);

impl UnverifiedServerCert {
    pub fn new(provider: Arc<CryptoProvider>) -> UnverifiedServerCert {
        UnverifiedServerCert(provider)
    }
}

impl ServerCertVerifier for UnverifiedServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Returns the paths of the generated certificate and key, creating them on first use.
fn ensure_self_signed(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = data_dir.join("cert.pem");
    let key_path = data_dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let names = vec![domain.to_string(), format!("*.{domain}")];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())
        .map_err(io(&key_path))?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(io(&cert_path))?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed certificate for {domain}");
    Ok((cert_path, key_path))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}
