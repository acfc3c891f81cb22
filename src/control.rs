//! The local control socket: how `starling adduser` and friends reach a running server.
//!
//! sled lets one process open the database at a time, so while the server runs the CLI
//! sends its request here instead. The socket lives in the data directory with
//! owner-only permissions; the protocol is one JSON request line, one JSON reply line.

use crate::accounts::{self, AccountError};
use crate::{Config, ServerState};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    AddUser { jid: String, password: String },
    DelUser { jid: String },
    Passwd { jid: String, password: String },
    SetDisabled { jid: String, disabled: bool },
    ListUsers,
    Online,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

impl Reply {
    fn ok(lines: Vec<String>) -> Reply {
        Reply {
            ok: true,
            error: None,
            lines,
        }
    }
    fn err(e: impl ToString) -> Reply {
        Reply {
            ok: false,
            error: Some(e.to_string()),
            lines: Vec::new(),
        }
    }
}

pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("control.sock")
}

pub fn remove_socket(config: &Config) {
    let _ = std::fs::remove_file(socket_path(config));
}

/// Binds the control socket and serves it until shutdown.
pub async fn start(
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(&state.config);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use: is another server running?", path.display()),
            ));
        }
        // Left behind by a server that did not exit cleanly.
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(&state, stream).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    }))
}

async fn serve_one(state: &ServerState, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // A request is small; refuse to buffer more than this from a local client.
    let mut reader = BufReader::new(r).take(64 * 1024);
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let desc = describe(&req);
            let reply = execute(state, req);
            tracing::info!(
                by = "control socket",
                action = %desc,
                ok = reply.ok,
                "administrative action"
            );
            reply
        }
        Err(e) => Reply::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

fn describe(req: &Request) -> String {
    // Never the password.
    match req {
        Request::AddUser { jid, .. } => format!("add user {jid}"),
        Request::DelUser { jid } => format!("delete user {jid}"),
        Request::Passwd { jid, .. } => format!("change password of {jid}"),
        Request::SetDisabled { jid, disabled } => format!("set {jid} disabled={disabled}"),
        Request::ListUsers => "list users".into(),
        Request::Online => "list online sessions".into(),
    }
}

fn execute(state: &ServerState, req: Request) -> Reply {
    let domain = &state.config.domain;
    let result: Result<Vec<String>, AccountError> = (|| match req {
        Request::AddUser { jid, password } => {
            let jid = accounts::local_jid(&jid, domain)?;
            accounts::create(&state.store, &jid, &password)?;
            Ok(vec![])
        }
        Request::DelUser { jid } => {
            state.delete_account(&accounts::local_jid(&jid, domain)?)?;
            Ok(vec![])
        }
        Request::Passwd { jid, password } => {
            let jid = accounts::local_jid(&jid, domain)?;
            state.change_password(&jid, &password)?;
            Ok(vec![])
        }
        Request::SetDisabled { jid, disabled } => {
            state.set_disabled(&accounts::local_jid(&jid, domain)?, disabled)?;
            Ok(vec![])
        }
        Request::ListUsers => Ok(state.store.account_jids()?),
        Request::Online => {
            let mut list: Vec<String> = state
                .sessions
                .all()
                .into_iter()
                .map(|h| h.jid.to_string())
                .collect();
            list.sort();
            Ok(list)
        }
    })();
    match result {
        Ok(lines) => Reply::ok(lines),
        Err(e) => Reply::err(e),
    }
}

/// Client side, for the CLI: `Ok(None)` when no server is listening.
pub async fn call(config: &Config, req: &Request) -> std::io::Result<Option<Reply>> {
    let path = socket_path(config);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(r).read_line(&mut reply).await?;
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some(reply))
}
