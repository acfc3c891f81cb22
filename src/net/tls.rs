//! TLS setup: the configured certificate, or a self-signed one generated on first start.

use crate::config::Config;
use crate::sasl::ChannelBindings;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        // XEP-0368 direct TLS clients may ask for "xmpp-client"; STARTTLS clients send none.
        let mut http_config = server_config.clone();
        http_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        server_config.alpn_protocols = vec![b"xmpp-client".to_vec()];
        Ok(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            http_acceptor: TlsAcceptor::from(Arc::new(http_config)),
            server_end_point: Arc::new(server_end_point),
        })
    }

    /// Channel-binding data for an established TLS connection.
    pub fn bindings(&self, stream: &TlsStream<tokio::net::TcpStream>) -> ChannelBindings {
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
