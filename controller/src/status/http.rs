//! The status HTTP server: its own thread (tiny_http, synchronous), reading the latest snapshot
//! from the shared slot and never touching the hub. [`route`] decides every answer (token
//! check, path, format) without I/O; [`spawn`] only moves bytes.
//!
//! Every path needs the token, as Jupyter's server does: `?token=...` in the URL or an
//! `Authorization: token ...` (or `Bearer ...`) header. Missing: 401; wrong: 403.
//!
//! * `/` — the status page (HTML with its script inlined; both compiled into the binary).
//! * `/api/status` — the snapshot as JSON; `?engines=0` leaves out the per-engine rows.
//! * `/metrics` — Prometheus text exposition 0.0.4.

use super::{prometheus, Slot};
use rpar_core::status::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, warn};

const PAGE: &str = include_str!("assets/status.html");
const SCRIPT: &str = include_str!("assets/status.js");

/// An answer to one request.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The value of query parameter `name` in a request target (no percent-decoding: the
/// parameters used here are plain ASCII).
fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let q = target.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compare without an early exit (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request presents, if any.
fn presented<'a>(target: &'a str, authorization: Option<&'a str>) -> Option<&'a str> {
    if let Some(a) = authorization {
        let a = a.trim();
        for scheme in ["token ", "Token ", "Bearer ", "bearer "] {
            if let Some(t) = a.strip_prefix(scheme) {
                return Some(t.trim());
            }
        }
    }
    query_param(target, "token")
}

/// The answer to `method target` with the given `Authorization` header.
pub fn route(
    method: &str,
    target: &str,
    authorization: Option<&str>,
    token: &str,
    snap: &Snapshot,
) -> Reply {
    match presented(target, authorization) {
        None => return Reply::text(
            401,
            "a token is required: open the URL that `rpar cluster status` prints (…/?token=…)\n",
        ),
        Some(t) if !same(t.as_bytes(), token.as_bytes()) => {
            return Reply::text(403, "wrong token\n")
        }
        Some(_) => {}
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET\n");
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/" | "/index.html" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: PAGE.replace("/*SCRIPT*/", SCRIPT).into_bytes(),
        },
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: prometheus::render(snap).into_bytes(),
        },
        "/api/status" => {
            let body = if query_param(target, "engines") == Some("0") {
                let mut s = snap.clone();
                s.engine_rows.clear();
                serde_json::to_vec(&s)
            } else {
                serde_json::to_vec(snap)
            };
            match body {
                Ok(body) => Reply {
                    status: 200,
                    content_type: "application/json",
                    body,
                },
                Err(e) => Reply::text(500, &format!("{e}\n")),
            }
        }
        _ => Reply::text(404, "not found: try /, /api/status or /metrics\n"),
    }
}

/// Bind `addr` and serve on a thread of its own; the bound address comes back.
pub fn spawn(addr: &str, token: String, slot: Slot) -> anyhow::Result<SocketAddr> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("{addr} is not an IP address"))?;
    std::thread::Builder::new()
        .name("rpar-status-http".into())
        .spawn(move || serve(server, token, slot))?;
    Ok(bound)
}

fn serve(server: tiny_http::Server, token: String, slot: Slot) {
    for req in server.incoming_requests() {
        let snap: Arc<Snapshot> = match slot.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let auth = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        let method = req.method().as_str().to_string();
        let r = route(&method, req.url(), auth.as_deref(), &token, &snap);
        debug!(%method, status = r.status, "status request");
        let mut resp = tiny_http::Response::from_data(r.body).with_status_code(r.status);
        for (k, v) in [
            ("Content-Type", r.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ] {
            if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
                resp.add_header(h);
            }
        }
        if let Err(e) = req.respond(resp) {
            warn!(error = %e, "status reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::status::{EngineRow, TaskCounts};

    fn snap() -> Snapshot {
        Snapshot {
            tasks: TaskCounts {
                completed: 7,
                ..Default::default()
            },
            engine_rows: vec![EngineRow::default()],
            ..Default::default()
        }
    }

    #[test]
    fn token_is_required() {
        let s = snap();
        assert_eq!(route("GET", "/metrics", None, "tok", &s).status, 401);
        assert_eq!(
            route("GET", "/metrics?token=bad", None, "tok", &s).status,
            403
        );
        assert_eq!(route("GET", "/", Some("token nope"), "tok", &s).status, 403);
        assert_eq!(
            route("GET", "/metrics?token=tok", None, "tok", &s).status,
            200
        );
        assert_eq!(
            route("GET", "/metrics", Some("token tok"), "tok", &s).status,
            200
        );
        assert_eq!(
            route("GET", "/metrics", Some("Bearer tok"), "tok", &s).status,
            200
        );
        assert_eq!(route("GET", "/x?token=tok", None, "tok", &s).status, 404);
        assert_eq!(route("POST", "/?token=tok", None, "tok", &s).status, 405);
    }

    #[test]
    fn page_has_its_script_and_json_can_leave_out_engines() {
        let s = snap();
        let page = route("GET", "/?token=t", None, "t", &s);
        let text = String::from_utf8(page.body).unwrap();
        assert!(text.contains("api/status"), "script inlined");
        assert!(!text.contains("/*SCRIPT*/"));
        let full = route("GET", "/api/status?token=t", None, "t", &s);
        let v: Snapshot = serde_json::from_slice(&full.body).unwrap();
        assert_eq!((v.tasks.completed, v.engine_rows.len()), (7, 1));
        let lean = route("GET", "/api/status?engines=0&token=t", None, "t", &s);
        let v: Snapshot = serde_json::from_slice(&lean.body).unwrap();
        assert!(v.engine_rows.is_empty());
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("/a?x=1&token=abc", "token"), Some("abc"));
        assert_eq!(query_param("/a?token", "token"), Some(""));
        assert_eq!(query_param("/a", "token"), None);
        assert!(same(b"ab", b"ab") && !same(b"ab", b"ac") && !same(b"a", b"ab"));
    }
}
