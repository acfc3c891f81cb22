//! XEP-0156 discovery documents and the web chat page.
//!
//! The chat page is Converse.js, installed by `npm ci` in `[http] web_root` (nothing
//! third-party is committed). `/` is a small page of our own, generated with this
//! server's domain and endpoints, that loads Converse.js from `/converse/`; the files
//! under `/converse/` come from the installed package's `dist` folder.

use super::{plain, Body, Ctx};
use crate::xml::element::escape;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::path::{Component, Path, PathBuf};

/// Where `npm ci` puts the browser build of Converse.js, under `web_root`.
const CONVERSE_DIST: &str = "node_modules/converse.js/dist";
/// Static files larger than this are not served (the Converse.js bundle is a few MiB).
const MAX_STATIC_BYTES: u64 = 32 << 20;

/// The base URL of this listener as the client reached it: `public_url` when configured,
/// otherwise the request's Host header with this listener's scheme.
pub fn base_url(ctx: &Ctx, req: &Request<Incoming>) -> String {
    let cfg = &ctx.server().config.http;
    if !cfg.public_url.is_empty() {
        return cfg.public_url.trim_end_matches('/').to_string();
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        // Only what a host[:port] can hold, so a hostile Host cannot inject markup.
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| ctx.server().config.domain.clone());
    let scheme = if ctx.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn endpoints(ctx: &Ctx, req: &Request<Incoming>) -> (String, String) {
    let base = base_url(ctx, req);
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/xmpp-websocket")
    } else {
        format!("ws://{}/xmpp-websocket", base.trim_start_matches("http://"))
    };
    (format!("{base}/http-bind"), ws)
}

/// `/.well-known/host-meta` (XRD) and `/.well-known/host-meta.json` (JRD).
pub fn host_meta(ctx: &Ctx, req: &Request<Incoming>, json: bool) -> Response<Body> {
    let (bosh, ws) = endpoints(ctx, req);
    let (body, kind) = if json {
        let doc = serde_json::json!({
            "links": [
                { "rel": "urn:xmpp:alt-connections:xbosh", "href": bosh },
                { "rel": "urn:xmpp:alt-connections:websocket", "href": ws },
            ]
        });
        (doc.to_string(), "application/json")
    } else {
        (
            format!(
                "<?xml version='1.0' encoding='utf-8'?>\n\
                 <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n\
                 \x20 <Link rel='urn:xmpp:alt-connections:xbosh' href='{}'/>\n\
                 \x20 <Link rel='urn:xmpp:alt-connections:websocket' href='{}'/>\n\
                 </XRD>\n",
                escape(&bosh),
                escape(&ws)
            ),
            "application/xrd+xml",
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    // XEP-0156 §3: web clients on other origins read this document.
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

pub async fn serve(ctx: &Ctx, req: &Request<Incoming>, path: &str) -> Response<Body> {
    let root = &ctx.server().config.http.web_root;
    let dist = root.join(CONVERSE_DIST);
    if path == "/" || path == "/index.html" {
        return index(ctx, req, &dist);
    }
    let Some(rest) = path.strip_prefix("/converse/") else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(file) = safe_join(&dist, rest) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    match tokio::fs::metadata(&file).await {
        Ok(m) if m.is_file() && m.len() <= MAX_STATIC_BYTES => {}
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    }
    match tokio::fs::read(&file).await {
        Ok(data) => {
            let mut r = Response::new(Full::new(Bytes::from(data)));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            r
        }
        Err(_) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Joins a URL path below `base`, refusing anything that could leave it (`..`, absolute
/// paths, drive prefixes) or that is hidden.
fn safe_join(base: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains('\\') || rel.contains('%') {
        return None;
    }
    let mut out = base.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => out.push(part),
            _ => return None,
        }
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "map" => "application/json",
        _ => "application/octet-stream",
    }
}

/// The chat page: Converse.js set up for this domain and the WebSocket endpoint.
fn index(ctx: &Ctx, req: &Request<Incoming>, dist: &Path) -> Response<Body> {
    let domain = &ctx.server().config.domain;
    let html = if dist.join("converse.min.js").is_file() {
        let (_, ws) = endpoints(ctx, req);
        // Values go into a JSON object (escaped for a <script> block), not spliced into code.
        let settings = serde_json::json!({
            "websocket_url": ws,
            "discover_connection_methods": false,
            "assets_path": "/converse/",
            "view_mode": "fullscreen",
            "default_domain": domain,
            "locked_domain": domain,
            "auto_reconnect": false,
            "allow_registration": false,
            "loglevel": "warn",
            "play_sounds": false,
            "show_client_info": false,
            "i18n": "en",
        })
        .to_string()
        .replace('<', "\\u003c");
        format!(
            "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n\
             <meta name='viewport' content='width=device-width, initial-scale=1'>\n\
             <title>Chat on {d}</title>\n\
             <link rel='stylesheet' href='/converse/converse.min.css'>\n\
             <script type='module' src='/converse/converse.min.js'></script>\n</head>\n\
             <body class='converse-fullscreen'>\n<noscript>The chat needs JavaScript.</noscript>\n\
             <script type='module'>converse.initialize({settings});</script>\n</body>\n</html>\n",
            d = escape(domain),
        )
    } else {
        format!(
            "<!DOCTYPE html>\n<html lang='en'>\n<head><meta charset='utf-8'><title>Starling</title></head>\n\
             <body>\n<h1>Starling on {d}</h1>\n<p>The web chat is not installed. Run <code>npm ci</code> \
             in <code>{root}</code> (the <code>[http] web_root</code> folder) and reload.</p>\n\
             <p>Clients can connect with XMPP over WebSocket at <code>/xmpp-websocket</code> or BOSH at \
             <code>/http-bind</code>.</p>\n</body>\n</html>\n",
            d = escape(domain),
            root = escape(&ctx.server().config.http.web_root.display().to_string()),
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(html)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_root() {
        let base = Path::new("/srv/dist");
        assert_eq!(
            safe_join(base, "converse.min.js"),
            Some(PathBuf::from("/srv/dist/converse.min.js"))
        );
        assert!(safe_join(base, "../secret").is_none());
        assert!(safe_join(base, "a/../../b").is_none());
        assert!(safe_join(base, "/etc/passwd").is_none());
        assert!(safe_join(base, ".env").is_none());
        assert!(safe_join(base, "%2e%2e/x").is_none());
        assert!(safe_join(base, "").is_none());
    }
}
