//! Where a remote domain's server listens: `[s2s.routes]` first (STARTTLS, or direct TLS
//! with a `tls://` prefix), then DNS SRV
//! (`_xmpps-server._tcp` for XEP-0368 direct TLS, `_xmpp-server._tcp` for STARTTLS),
//! then the domain's own address on port 5269 (RFC 6120 §3.2).

use crate::ServerState;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// XEP-0368: TLS from the first byte.
    pub direct_tls: bool,
}

/// Candidate targets, most preferred first; an error says why there are none.
pub async fn targets(server: &ServerState, domain: &str) -> Result<Vec<Target>, String> {
    if let Some(route) = server.config.s2s.routes.get(domain) {
        return parse_route(route)
            .map(|t| vec![t])
            .ok_or_else(|| format!("s2s.routes.{domain} is not host:port or tls://host:port"));
    }
    let Some(resolver) = resolver(server).await else {
        return Err("no DNS resolver configured".into());
    };
    let mut found: Vec<(u16, u16, Target)> = Vec::new();
    let mut explicit_none = false;
    for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
        let name = format!("{service}.{domain}.");
        let Ok(lookup) = resolver.lookup(name.as_str(), RecordType::SRV).await else {
            continue;
        };
        for record in lookup.answers() {
            if let RData::SRV(srv) = &record.data {
                let host = srv.target.to_ascii();
                let host = host.trim_end_matches('.').to_string();
                if host.is_empty() {
                    // RFC 2782: a target of "." means the service is decidedly not here.
                    explicit_none = true;
                    continue;
                }
                found.push((
                    srv.priority,
                    srv.weight,
                    Target {
                        host,
                        port: srv.port,
                        direct_tls,
                    },
                ));
            }
        }
    }
    if found.is_empty() {
        if explicit_none {
            return Err(format!("{domain} publishes no XMPP server"));
        }
        return Ok(vec![Target {
            host: domain.to_string(),
            port: 5269,
            direct_tls: false,
        }]);
    }
    // Lower priority first; within a priority, heavier weight first (a deterministic
    // reading of RFC 2782's weighted choice), and direct TLS before STARTTLS as
    // XEP-0368 suggests for equal records.
    found.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.direct_tls.cmp(&a.2.direct_tls))
    });
    Ok(found.into_iter().map(|(_, _, t)| t).collect())
}

/// The addresses of one target.
pub async fn addresses(server: &ServerState, target: &Target) -> Vec<SocketAddr> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, target.port)];
    }
    let routed = server
        .config
        .s2s
        .routes
        .values()
        .any(|r| parse_route(r).is_some_and(|t| t.host == target.host));
    if routed {
        // A name in a static route is resolved the way the operator's tools resolve it
        // (the system resolver, /etc/hosts included).
        return match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(addrs) => addrs.collect(),
            Err(_) => Vec::new(),
        };
    }
    let Some(resolver) = resolver(server).await else {
        return Vec::new();
    };
    match resolver.lookup_ip(format!("{}.", target.host)).await {
        Ok(ips) => ips
            .iter()
            .map(|ip| SocketAddr::new(ip, target.port))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn resolver(server: &ServerState) -> Option<&hickory_resolver::TokioResolver> {
    server
        .s2s
        .resolver
        .get_or_init(|| async {
            match hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.build()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("DNS resolver unavailable: {e}");
                    None
                }
            }
        })
        .await
        .as_ref()
}

/// A `[s2s.routes]` value: "host:port" (STARTTLS there) or "tls://host:port" (XEP-0368
/// direct TLS there).
pub fn parse_route(s: &str) -> Option<Target> {
    let (rest, direct_tls) = match s.strip_prefix("tls://") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (host, port) = split_host_port(rest)?;
    Some(Target {
        host,
        port,
        direct_tls,
    })
}

/// "host:port", "1.2.3.4:port" or "[v6]:port".
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.3:5269"),
            Some(("127.0.0.3".into(), 5269))
        );
        assert_eq!(split_host_port("[::1]:5269"), Some(("::1".into(), 5269)));
        assert_eq!(
            split_host_port("xmpp.example:5270"),
            Some(("xmpp.example".into(), 5270))
        );
        assert_eq!(split_host_port("nowhere"), None);
        assert_eq!(split_host_port(":5269"), None);
    }

    #[test]
    fn routes_name_starttls_or_direct_tls() {
        assert_eq!(
            parse_route("127.0.0.3:5269"),
            Some(Target {
                host: "127.0.0.3".into(),
                port: 5269,
                direct_tls: false
            })
        );
        assert_eq!(
            parse_route("tls://xmpp.example:5270"),
            Some(Target {
                host: "xmpp.example".into(),
                port: 5270,
                direct_tls: true
            })
        );
        assert_eq!(parse_route("tls://nowhere"), None);
        assert_eq!(parse_route("nowhere"), None);
    }
}
