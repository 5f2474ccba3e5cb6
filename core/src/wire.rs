//! The Jupyter multipart wire format as ipyparallel uses it, with HMAC signing.
//!
//! A message on any channel except the heartbeat is
//! `[ident.., b"<IDS|MSG>", hmac_hex, header, parent_header, metadata, content, buffer..]`.
//! The HMAC-SHA256 digest covers the four JSON frames in that order (not identities or buffers).
//!
//! [`WireMessage`] keeps every JSON frame as the raw bytes received, so a relay can forward a
//! message without re-serializing it (the original signature stays valid). [`Signer`] signs,
//! verifies in constant time, refuses unsigned messages when a key is set, and refuses a
//! signature it has already seen (replay), with a bounded history like jupyter_client's.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use thiserror::Error;

/// The delimiter between routing identities and the message proper.
pub const DELIM: &[u8] = b"<IDS|MSG>";

/// A multipart ZeroMQ message, frame by frame.
pub type Frames = Vec<Vec<u8>>;

/// A message's buffers (the frames after content), held once and shared by everyone who keeps
/// them while they travel: the scheduler that may resend a task, the frames on their way out
/// (the controller hands these to ZeroMQ without copying) and the task record. Cloning one is a
/// reference count, never a copy of the bytes.
pub type SharedBuffers = std::sync::Arc<Vec<Vec<u8>>>;

/// Total bytes of `buffers`.
pub fn buffers_len(buffers: &[Vec<u8>]) -> usize {
    buffers.iter().map(Vec::len).sum()
}

/// Why a message was refused. None of these is ever a reason to panic: the receiver logs and drops.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("no <IDS|MSG> delimiter in {0} frames")]
    NoDelimiter(usize),
    #[error("only {0} frames after the delimiter (at least 5 needed: signature, header, parent, metadata, content)")]
    Truncated(usize),
    #[error("unsigned message (a key is set)")]
    Unsigned,
    #[error("invalid signature")]
    BadSignature,
    #[error("duplicate signature (replayed message)")]
    Replayed,
    #[error("oversized message: {what} is {size} bytes, limit {limit}")]
    Oversized {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("too many frames: {0}")]
    TooManyFrames(usize),
    #[error("{part} is not valid JSON: {err}")]
    BadJson { part: &'static str, err: String },
    #[error("header has no {0}")]
    MissingField(&'static str),
    #[error("unsupported signature scheme {0:?} (only hmac-sha256)")]
    UnsupportedScheme(String),
}

/// Size limits applied before anything is parsed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single JSON frame (header, parent, metadata, content).
    pub max_json_frame: usize,
    /// Largest whole message, buffers included.
    pub max_total: usize,
    /// Most frames in one message.
    pub max_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_frame: 64 << 20,
            max_total: 2 << 30,
            max_frames: 1 << 16,
        }
    }
}

/// A message split at the delimiter. JSON frames are kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireMessage {
    pub idents: Vec<Vec<u8>>,
    pub signature: Vec<u8>,
    pub header: Vec<u8>,
    pub parent: Vec<u8>,
    pub metadata: Vec<u8>,
    pub content: Vec<u8>,
    pub buffers: Vec<Vec<u8>>,
}

impl WireMessage {
    /// Split frames at the delimiter, checking frame count and sizes against `limits`.
    pub fn split(frames: Frames, limits: &Limits) -> Result<Self, WireError> {
        if frames.len() > limits.max_frames {
            return Err(WireError::TooManyFrames(frames.len()));
        }
        let total: usize = frames.iter().map(|f| f.len()).sum();
        if total > limits.max_total {
            return Err(WireError::Oversized {
                what: "message",
                size: total,
                limit: limits.max_total,
            });
        }
        let pos = frames
            .iter()
            .position(|f| f.as_slice() == DELIM)
            .ok_or(WireError::NoDelimiter(frames.len()))?;
        let after = frames.len() - pos - 1;
        if after < 5 {
            return Err(WireError::Truncated(after));
        }
        // taken off the end, so that the idents stay in the frames' own vector (no new one)
        let mut idents = frames;
        let buffers = idents.split_off(pos + 6);
        let mut last = || idents.pop().unwrap_or_default();
        let content = last();
        let metadata = last();
        let parent = last();
        let header = last();
        let signature = last();
        last(); // delimiter
        for (what, f) in [
            ("header", &header),
            ("parent_header", &parent),
            ("metadata", &metadata),
            ("content", &content),
        ] {
            if f.len() > limits.max_json_frame {
                return Err(WireError::Oversized {
                    what,
                    size: f.len(),
                    limit: limits.max_json_frame,
                });
            }
        }
        Ok(WireMessage {
            idents,
            signature,
            header,
            parent,
            metadata,
            content,
            buffers,
        })
    }

    /// Back to frames: idents, delimiter, signature, the four JSON frames, buffers (in the
    /// idents' vector: after [`WireMessage::split`] it has room for them all).
    pub fn into_frames(self) -> Frames {
        let mut f = self.idents;
        f.reserve(6 + self.buffers.len());
        f.push(DELIM.to_vec());
        f.push(self.signature);
        f.push(self.header);
        f.push(self.parent);
        f.push(self.metadata);
        f.push(self.content);
        f.extend(self.buffers);
        f
    }

    /// Frames with a different routing prefix, message part unchanged.
    pub fn frames_with_idents(&self, idents: Vec<Vec<u8>>) -> Frames {
        let mut f = Vec::with_capacity(idents.len() + 6 + self.buffers.len());
        f.extend(idents);
        f.push(DELIM.to_vec());
        f.push(self.signature.clone());
        f.push(self.header.clone());
        f.push(self.parent.clone());
        f.push(self.metadata.clone());
        f.push(self.content.clone());
        f.extend(self.buffers.iter().cloned());
        f
    }

    /// Parse one JSON frame into a value (an empty frame reads as `{}`).
    pub fn parse_part(part: &'static str, bytes: &[u8]) -> Result<serde_json::Value, WireError> {
        if bytes.is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::from_slice(bytes).map_err(|e| WireError::BadJson {
            part,
            err: e.to_string(),
        })
    }

    pub fn header_value(&self) -> Result<serde_json::Value, WireError> {
        Self::parse_part("header", &self.header)
    }
    pub fn parent_value(&self) -> Result<serde_json::Value, WireError> {
        Self::parse_part("parent_header", &self.parent)
    }
    pub fn metadata_value(&self) -> Result<serde_json::Value, WireError> {
        Self::parse_part("metadata", &self.metadata)
    }
    pub fn content_value(&self) -> Result<serde_json::Value, WireError> {
        Self::parse_part("content", &self.content)
    }
}

type HmacSha256 = Hmac<Sha256>;

/// What the replay history keeps of a signature: its first 128 bits (two different signatures
/// agree there with odds of 2^-128; half the memory of whole ones, so fewer cache misses on a
/// 65 536-entry set, checked on every message).
type SeenKey = [u8; 16];

/// Hashes a [`SeenKey`] by its first 8 bytes. The keys are HMAC outputs, remembered only once
/// verified, so nobody without the key can choose them: no need for SipHash's protection
/// (which cost more than the lookup).
#[derive(Default, Clone, Copy)]
struct SeenHasher(u64);

impl Hasher for SeenHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut w = [0u8; 8];
        let n = bytes.len().min(8);
        w[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(8) ^ u64::from_le_bytes(w);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Signs and verifies messages with one HMAC key; remembers recent signatures to refuse replays.
#[derive(Clone)]
pub struct Signer {
    mac: Option<HmacSha256>,
    seen: HashSet<SeenKey, BuildHasherDefault<SeenHasher>>,
    order: VecDeque<SeenKey>,
    history: usize,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keyed", &self.mac.is_some())
            .field("history", &self.history)
            .finish()
    }
}

impl Signer {
    /// Default replay history, as jupyter_client's `digest_history_size`.
    pub const DEFAULT_HISTORY: usize = 1 << 16;

    /// A signer for `key` (empty key: no signing, as jupyter_client with `key=b""`).
    pub fn new(key: &[u8]) -> Self {
        let mac = if key.is_empty() {
            None
        } else {
            Some(HmacSha256::new_from_slice(key).expect("HMAC accepts any key length"))
        };
        Signer {
            mac,
            seen: HashSet::default(),
            order: VecDeque::new(),
            history: Self::DEFAULT_HISTORY,
        }
    }

    /// A signer for a connection file's `signature_scheme` and `key`.
    pub fn from_scheme(scheme: &str, key: &[u8]) -> Result<Self, WireError> {
        if !scheme.is_empty() && scheme != "hmac-sha256" {
            return Err(WireError::UnsupportedScheme(scheme.to_string()));
        }
        Ok(Self::new(key))
    }

    /// Set how many signatures are remembered for replay detection.
    pub fn with_history(mut self, n: usize) -> Self {
        self.history = n.max(1);
        self
    }

    pub fn is_keyed(&self) -> bool {
        self.mac.is_some()
    }

    fn digest(&self, parts: [&[u8]; 4]) -> Option<[u8; 32]> {
        let mut mac = self.mac.clone()?;
        for p in parts {
            mac.update(p);
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// The signature frame for these four JSON frames (hex digest; empty without a key).
    pub fn sign(&self, header: &[u8], parent: &[u8], metadata: &[u8], content: &[u8]) -> Vec<u8> {
        match self.digest([header, parent, metadata, content]) {
            Some(d) => hex::encode(d).into_bytes(),
            None => Vec::new(),
        }
    }

    /// Sign `msg` in place.
    pub fn sign_message(&self, msg: &mut WireMessage) {
        msg.signature = self.sign(&msg.header, &msg.parent, &msg.metadata, &msg.content);
    }

    /// Check a received message: signed, signature valid (constant time), not seen before.
    /// A message that passes is remembered, so the same bytes are refused next time.
    pub fn verify(&mut self, msg: &WireMessage) -> Result<(), WireError> {
        let Some(mac) = self.mac.clone() else {
            return Ok(());
        };
        if msg.signature.is_empty() {
            return Err(WireError::Unsigned);
        }
        let got = decode_digest(&msg.signature).ok_or(WireError::BadSignature)?;
        let mut mac = mac;
        for p in [&msg.header, &msg.parent, &msg.metadata, &msg.content] {
            mac.update(p);
        }
        mac.verify_slice(&got)
            .map_err(|_| WireError::BadSignature)?;
        self.remember(got)
    }

    /// Refuse a signature seen before; remember it otherwise.
    fn remember(&mut self, got: [u8; 32]) -> Result<(), WireError> {
        let mut key = SeenKey::default();
        key.copy_from_slice(&got[..16]);
        if !self.seen.insert(key) {
            return Err(WireError::Replayed);
        }
        // forget before queueing, so the queue never outgrows the history (a VecDeque doubles
        // its capacity when pushed past it); the key just inserted is not among the old ones
        while self.order.len() >= self.history {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(key);
        Ok(())
    }

    /// The raw (32-byte) HMAC of `parts` concatenated, for rpar's own binary messages (the
    /// native transport); empty without a key.
    pub fn sign_raw(&self, parts: &[&[u8]]) -> Vec<u8> {
        let Some(mut mac) = self.mac.clone() else {
            return Vec::new();
        };
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Check a [`Signer::sign_raw`] signature (constant time) and refuse a replay, as
    /// [`Signer::verify`] does for wire messages.
    pub fn verify_raw(&mut self, parts: &[&[u8]], signature: &[u8]) -> Result<(), WireError> {
        let Some(mut mac) = self.mac.clone() else {
            return Ok(());
        };
        if signature.is_empty() {
            return Err(WireError::Unsigned);
        }
        let got: [u8; 32] = signature.try_into().map_err(|_| WireError::BadSignature)?;
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(&got)
            .map_err(|_| WireError::BadSignature)?;
        self.remember(got)
    }
}

/// A hex digit's value; [`NOT_HEX`] for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

/// A hex signature frame's 32 bytes (either case, as `hex::decode_to_slice` reads it); `None`
/// unless it is exactly 64 hex digits. A table lookup per digit: this runs for every message.
fn decode_digest(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = HEX_VALUE[usize::from(pair[0])];
        let lo = HEX_VALUE[usize::from(pair[1])];
        // a digit is at most 0x0f: NOT_HEX has the high bits set
        bad |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_digest_reads_as_the_hex_crate() {
        let d: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let lower = hex::encode(&d);
        let upper = lower.to_uppercase();
        for s in [&lower, &upper] {
            assert_eq!(
                super::decode_digest(s.as_bytes()).map(|a| a.to_vec()),
                Some(d.clone())
            );
        }
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            lower.as_bytes()[..62].to_vec(),
            format!("{lower}00").into_bytes(),
        ];
        for pos in [0, 1, 33, 63] {
            for c in [b'g', b'G', b' ', b'-', 0xff, b'/', b':', b'@', b'`'] {
                let mut b = lower.clone().into_bytes();
                b[pos] = c;
                bad.push(b);
            }
        }
        for b in bad {
            let mut out = [0u8; 32];
            assert!(hex::decode_to_slice(&b, &mut out).is_err());
            assert_eq!(
                super::decode_digest(&b),
                None,
                "{:?}",
                String::from_utf8_lossy(&b)
            );
        }
    }

    use super::*;

    fn msg(signer: &Signer, content: &str) -> WireMessage {
        let mut m = WireMessage {
            idents: vec![b"peer".to_vec()],
            signature: vec![],
            header: br#"{"msg_id":"a","msg_type":"x","session":"s","username":"u","date":"2026-01-01T00:00:00.000000Z","version":"5.4"}"#.to_vec(),
            parent: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            content: content.as_bytes().to_vec(),
            buffers: vec![b"buf".to_vec()],
        };
        signer.sign_message(&mut m);
        m
    }

    #[test]
    fn known_digest() {
        // HMAC-SHA256(b"key", b"abcd"), computed with Python's hmac module.
        let s = Signer::new(b"key");
        assert_eq!(
            s.sign(b"a", b"b", b"c", b"d"),
            b"2a31ec0ee8d878c9eece9fb0df79b3b90b2256240163aa5ee50d176d3d1121f8".to_vec()
        );
    }

    #[test]
    fn round_trip_and_verify() {
        let mut s = Signer::new(b"secret");
        let m = msg(&s, r#"{"a":1}"#);
        let frames = m.clone().into_frames();
        let back = WireMessage::split(frames, &Limits::default()).unwrap();
        assert_eq!(back, m);
        s.verify(&back).unwrap();
    }

    #[test]
    fn replay_is_refused() {
        let mut s = Signer::new(b"secret");
        let m = msg(&s, "{}");
        s.verify(&m).unwrap();
        assert_eq!(s.verify(&m), Err(WireError::Replayed));
    }

    #[test]
    fn replay_history_is_bounded() {
        let mut s = Signer::new(b"k").with_history(2);
        let a = msg(&s, r#"{"n":1}"#);
        let b = msg(&s, r#"{"n":2}"#);
        let c = msg(&s, r#"{"n":3}"#);
        s.verify(&a).unwrap();
        s.verify(&b).unwrap();
        s.verify(&c).unwrap();
        // a fell out of the history
        assert_eq!(s.seen.len(), 2);
        s.verify(&a).unwrap();
    }

    #[test]
    fn bad_and_missing_signatures() {
        let mut s = Signer::new(b"secret");
        let mut m = msg(&s, "{}");
        m.content = br#"{"evil":true}"#.to_vec();
        assert_eq!(s.verify(&m), Err(WireError::BadSignature));
        m.signature = b"zz-not-hex".to_vec();
        assert_eq!(s.verify(&m), Err(WireError::BadSignature));
        m.signature.clear();
        assert_eq!(s.verify(&m), Err(WireError::Unsigned));
        let other = Signer::new(b"other");
        let m2 = msg(&other, "{}");
        assert_eq!(s.verify(&m2), Err(WireError::BadSignature));
    }

    #[test]
    fn unkeyed_signer_accepts_anything() {
        let mut s = Signer::new(b"");
        let m = msg(&s, "{}");
        assert!(m.signature.is_empty());
        s.verify(&m).unwrap();
    }

    #[test]
    fn framing_errors() {
        let l = Limits::default();
        assert_eq!(
            WireMessage::split(vec![b"a".to_vec(), b"b".to_vec()], &l),
            Err(WireError::NoDelimiter(2))
        );
        let f = vec![
            b"id".to_vec(),
            DELIM.to_vec(),
            b"sig".to_vec(),
            b"{}".to_vec(),
        ];
        assert_eq!(WireMessage::split(f, &l), Err(WireError::Truncated(2)));
        // wrong delimiter spelling is not a delimiter
        let f = vec![b"<IDS|MSG".to_vec(), vec![], vec![], vec![], vec![], vec![]];
        assert_eq!(WireMessage::split(f, &l), Err(WireError::NoDelimiter(6)));
        let small = Limits {
            max_json_frame: 4,
            max_total: 1000,
            max_frames: 10,
        };
        let f = vec![
            DELIM.to_vec(),
            vec![],
            b"{\"a\":1}".to_vec(),
            vec![],
            vec![],
            vec![],
        ];
        assert!(matches!(
            WireMessage::split(f, &small),
            Err(WireError::Oversized { what: "header", .. })
        ));
        let f = vec![vec![0u8; 2000], DELIM.to_vec()];
        assert!(matches!(
            WireMessage::split(f, &small),
            Err(WireError::Oversized {
                what: "message",
                ..
            })
        ));
        let f = vec![vec![]; 11];
        assert_eq!(
            WireMessage::split(f, &small),
            Err(WireError::TooManyFrames(11))
        );
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(WireMessage::parse_part("content", b"{nope").is_err());
        assert!(WireMessage::parse_part("content", b"").unwrap().is_object());
    }

    #[test]
    fn scheme() {
        assert!(Signer::from_scheme("hmac-sha256", b"k").is_ok());
        assert!(Signer::from_scheme("hmac-md5", b"k").is_err());
    }
}
