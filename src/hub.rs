//! A tiny hub client: asks the controller which engines are registered.
//!
//! It sends `connection_request` (content `{}`) on a DEALER socket connected to the hub's
//! `registration` port from `ipcontroller[-<id>]-client.json`, signed with the file's key, and
//! reads `connection_reply` `{"status": "ok", "engines": {"<id>": "<uuid>"}}`. Only fully
//! registered engines are listed, which is exactly what `rpar cluster start` waits for.
//!
//! Replies are checked as every peer's input is: a badly signed or replayed one is dropped
//! (logged) and the wait goes on. When the file carries a `curve_serverkey` (the controller runs
//! CurveZMQ) the socket is a CURVE client with a new key pair, as the Python client's.

use rpar_core::connection::{self, ClientInfo};
use rpar_core::curve::{self, CurveKey, CurveKeyPair};
use rpar_core::wire::{Limits, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("no reply from the hub at {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("bad reply from the hub: {0}")]
    Reply(String),
    #[error("{path}: {message}")]
    Curve { path: String, message: String },
}

/// A connection to the hub's registration socket.
pub struct HubClient {
    ctx: zmq::Context,
    url: String,
    signer: Signer,
    builder: MessageBuilder,
    /// The controller's CURVE key and this client's pair, when the controller uses CURVE.
    curve: Option<(CurveKey, CurveKeyPair)>,
    sock: Option<zmq::Socket>,
}

impl HubClient {
    /// Connect using a client connection file.
    pub fn from_file(path: &Path) -> Result<HubClient, HubError> {
        let info: ClientInfo = connection::read(path).map_err(|e| HubError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let iface = connection::disambiguate_interface(&info.interface, &info.location);
        let url = connection::url(&iface, info.registration);
        let signer =
            Signer::from_scheme(&info.signature_scheme, info.key.as_bytes()).map_err(|e| {
                HubError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        let curve_err = |message: String| HubError::Curve {
            path: path.display().to_string(),
            message,
        };
        let curve = match curve::optional("curve_serverkey", info.curve_serverkey.as_deref())
            .map_err(|e| curve_err(e.to_string()))?
        {
            None => None,
            Some(server) => {
                if !curve::available() {
                    return Err(curve_err(
                        "the controller uses CurveZMQ but this rpar's libzmq has no CURVE: \
                         build rpar against a libzmq with libsodium (apt-get install libzmq3-dev)"
                            .to_string(),
                    ));
                }
                let keys = curve::generate().map_err(|e| curve_err(e.to_string()))?;
                Some((server, keys))
            }
        };
        Ok(HubClient {
            ctx: zmq::Context::new(),
            url,
            signer,
            builder: MessageBuilder::new(),
            curve,
            sock: None,
        })
    }

    fn socket(&mut self) -> Result<&zmq::Socket, HubError> {
        if self.sock.is_none() {
            let s = self.ctx.socket(zmq::DEALER)?;
            s.set_linger(0)?;
            if let Some((server, keys)) = &self.curve {
                curve::set_client(&s, server, keys)?;
            }
            s.connect(&self.url)?;
            self.sock = Some(s);
        }
        Ok(self.sock.as_ref().expect("socket just set"))
    }

    /// The ids of the registered engines.
    pub fn engines(&mut self, timeout: Duration) -> Result<Vec<u64>, HubError> {
        let content = self.request("connection_request", json!({}), timeout)?;
        if content["status"] != "ok" {
            return Err(HubError::Reply(content.to_string()));
        }
        let mut ids: Vec<u64> = content["engines"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Send one hub query (`msg_type`, `content`) and return its reply's content, whatever
    /// its status.
    pub fn request(
        &mut self,
        msg_type: &str,
        content: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, HubError> {
        let msg = self.builder.build(
            &self.signer,
            Vec::new(),
            msg_type,
            b"{}",
            &json!({}),
            &content,
            Vec::new(),
        );
        let msg_id = serde_json::from_slice::<serde_json::Value>(&msg.header)
            .ok()
            .and_then(|h| h["msg_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        let frames = msg.into_frames();
        self.socket()?;
        let sock = self.sock.take().expect("socket just made");
        let result = exchange(&sock, &mut self.signer, frames, &msg_id, &self.url, timeout);
        if result.is_ok() {
            // on an error, start over with a fresh socket next time (drops queued requests)
            self.sock = Some(sock);
        }
        result
    }
}

/// Send `frames` on `sock` and wait up to `timeout` for the reply to `msg_id`, dropping
/// malformed, badly signed and replayed messages and late replies to earlier requests.
fn exchange(
    sock: &zmq::Socket,
    signer: &mut Signer,
    frames: Vec<Vec<u8>>,
    msg_id: &str,
    url: &str,
    timeout: Duration,
) -> Result<serde_json::Value, HubError> {
    sock.send_multipart(frames, 0)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        if left.is_zero() || sock.poll(zmq::POLLIN, left_ms)? == 0 {
            return Err(HubError::Timeout {
                url: url.to_string(),
                timeout,
            });
        }
        let frames = sock.recv_multipart(0)?;
        let reply = match WireMessage::split(frames, &Limits::default()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropped a malformed message from the hub: {e}");
                continue;
            }
        };
        if let Err(e) = signer.verify(&reply) {
            tracing::warn!("dropped a message from the hub: {e}");
            continue;
        }
        let parent = reply
            .parent_value()
            .map_err(|e| HubError::Reply(e.to_string()))?;
        if parent["msg_id"].as_str() != Some(msg_id) {
            continue; // a late reply to an earlier request
        }
        return reply
            .content_value()
            .map_err(|e| HubError::Reply(e.to_string()));
    }
}
