//! The local control socket: how `starling adduser` and friends reach a running server.
//!
//! sled lets one process open the database at a time, so while the server runs the CLI
//! sends its request here instead. The socket lives in the data directory with
//! owner-only permissions; the protocol is one JSON request line, one JSON reply line.

use crate::accounts::{self, AccountError};
use crate::services::admin;
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
    AddUser {
        jid: String,
        password: String,
    },
    DelUser {
        jid: String,
    },
    Passwd {
        jid: String,
        password: String,
    },
    SetDisabled {
        jid: String,
        disabled: bool,
    },
    ListUsers,
    Online,
    /// A headline to every online session (needs a running server, naturally).
    Announce {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
}

/// Why a request failed, so the CLI can exit with a distinct status for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A malformed JID, a JID of another domain, an empty password.
    BadInput,
    NoSuchAccount,
    Exists,
    /// The request needs a running server and none answers.
    NotRunning,
    /// The database is held by another process that does not answer, or talking to the
    /// server failed.
    Unavailable,
    /// Anything else (a corrupt record, a disk error).
    Failed,
}

impl ErrorKind {
    /// The CLI's exit status for this failure (documented in `starling --help`).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::BadInput => 3,
            ErrorKind::NoSuchAccount => 4,
            ErrorKind::Exists => 5,
            ErrorKind::NotRunning => 6,
            ErrorKind::Unavailable => 7,
        }
    }
}

impl From<&AccountError> for ErrorKind {
    fn from(e: &AccountError) -> Self {
        match e {
            AccountError::BadJid(..) | AccountError::BadPassword => ErrorKind::BadInput,
            AccountError::Exists => ErrorKind::Exists,
            AccountError::NoSuchAccount => ErrorKind::NoSuchAccount,
            AccountError::Store(_) => ErrorKind::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set with `error`; absent from servers older than this field (then: `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

impl Reply {
    pub fn ok(lines: Vec<String>) -> Reply {
        Reply {
            ok: true,
            error: None,
            kind: None,
            lines,
        }
    }

    pub fn err(kind: ErrorKind, e: impl ToString) -> Reply {
        Reply {
            ok: false,
            error: Some(e.to_string()),
            kind: Some(kind),
            lines: Vec::new(),
        }
    }

    pub fn account_err(e: AccountError) -> Reply {
        Reply::err(ErrorKind::from(&e), e)
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
    // Who is on the other end, for the log: the socket is owner-only, but several
    // administrators may share that owner through sudo.
    let by = match stream.peer_cred() {
        Ok(cred) => format!("control socket (uid {})", cred.uid()),
        Err(_) => "control socket".to_string(),
    };
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // A request is small; refuse to buffer more than this from a local client.
    let mut reader = BufReader::new(r).take(64 * 1024);
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let desc = describe(&req);
            let reply = execute(state, req, &by);
            tracing::info!(
                by = %by,
                action = %desc,
                ok = reply.ok,
                "administrative action"
            );
            reply
        }
        Err(e) => Reply::err(ErrorKind::BadInput, format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

fn describe(req: &Request) -> String {
    // Never the password, nor the announcement's text.
    match req {
        Request::AddUser { jid, .. } => format!("add user {jid}"),
        Request::DelUser { jid } => format!("delete user {jid}"),
        Request::Passwd { jid, .. } => format!("change password of {jid}"),
        Request::SetDisabled { jid, disabled } => format!("set {jid} disabled={disabled}"),
        Request::ListUsers => "list users".into(),
        Request::Online => "list online sessions".into(),
        Request::Announce { .. } => "announce".into(),
    }
}

fn execute(state: &ServerState, req: Request, by: &str) -> Reply {
    if let Request::Announce { text, .. } = &req {
        if text.trim().is_empty() {
            return Reply::err(ErrorKind::BadInput, "the announcement is empty");
        }
    }
    let domain = &state.config.domain;
    let result: Result<Vec<String>, AccountError> = (|| match req {
        Request::AddUser { jid, password } => {
            let jid = accounts::local_jid(&jid, domain)?;
            state.create_account(&jid, &password, by)?;
            Ok(vec![])
        }
        Request::DelUser { jid } => {
            state.delete_account(&accounts::local_jid(&jid, domain)?, by)?;
            Ok(vec![])
        }
        Request::Passwd { jid, password } => {
            let jid = accounts::local_jid(&jid, domain)?;
            state.change_password(&jid, &password, None, by)?;
            Ok(vec![])
        }
        Request::SetDisabled { jid, disabled } => {
            state.set_disabled(&accounts::local_jid(&jid, domain)?, disabled, by)?;
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
        Request::Announce { text, subject } => {
            let n = admin::announce(state, subject.as_deref(), &text, by);
            Ok(vec![format!("announcement sent to {n} session(s)")])
        }
    })();
    match result {
        Ok(lines) => Reply::ok(lines),
        Err(e) => Reply::account_err(e),
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
