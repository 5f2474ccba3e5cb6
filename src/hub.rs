//! A tiny hub client: asks the controller which engines are registered.
//!
//! It sends `connection_request` (content `{}`) on a DEALER socket connected to the hub's
//! `registration` port from `ipcontroller[-<id>]-client.json`, signed with the file's key, and
//! reads `connection_reply` `{"status": "ok", "engines": {"<id>": "<uuid>"}}`. Only fully
//! registered engines are listed, which is exactly what `rpar cluster start` waits for.

use rpar_core::connection::{self, ClientInfo};
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
}

/// A connection to the hub's registration socket.
pub struct HubClient {
    ctx: zmq::Context,
    url: String,
    signer: Signer,
    builder: MessageBuilder,
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
        Ok(HubClient {
            ctx: zmq::Context::new(),
            url,
            signer,
            builder: MessageBuilder::new(),
            sock: None,
        })
    }

    fn socket(&mut self) -> Result<&zmq::Socket, HubError> {
        if self.sock.is_none() {
            let s = self.ctx.socket(zmq::DEALER)?;
            s.set_linger(0)?;
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
        let url = self.url.clone();
        let result = (|| {
            let sock = self.socket()?;
            sock.send_multipart(frames, 0)?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || sock.poll(zmq::POLLIN, left.as_millis() as i64)? == 0 {
                    return Err(HubError::Timeout {
                        url: url.clone(),
                        timeout,
                    });
                }
                let frames = sock.recv_multipart(0)?;
                let reply = WireMessage::split(frames, &Limits::default())
                    .map_err(|e| HubError::Reply(e.to_string()))?;
                let parent = reply
                    .parent_value()
                    .map_err(|e| HubError::Reply(e.to_string()))?;
                if parent["msg_id"].as_str() != Some(msg_id.as_str()) {
                    continue; // a late reply to an earlier request
                }
                return reply
                    .content_value()
                    .map_err(|e| HubError::Reply(e.to_string()));
            }
        })();
        if result.is_err() {
            // start over with a fresh socket next time (drops queued requests)
            self.sock = None;
        }
        result
    }
}
