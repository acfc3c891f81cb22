//! BOSH (XEP-0124) carrying XMPP (XEP-0206) at `/http-bind`.

use super::{plain, Body, Ctx};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

pub struct Sessions {}

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions {})
    }
}

pub async fn handle(_ctx: Arc<Ctx>, _req: Request<Incoming>) -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not yet\n")
}
