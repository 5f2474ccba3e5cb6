//! The native engine transport: one connection per MPI job between `rpar-controller` and the
//! job's rank 0, every message of it defined here, encode beside decode.
//!
//! Socket pattern: the controller binds one ROUTER (advertised as `rpar_native` in
//! `ipcontroller-engine.json`); rank 0 (or `rpar-loadgen`, one per simulated job) connects one
//! DEALER whose routing id is the job's id. Every message is the multipart
//!
//! ```text
//! [signature (32 bytes, HMAC-SHA256)] [envelope (bincode)] [payload frame]…
//! ```
//!
//! (the ROUTER sees the DEALER's routing id in front). The [`Envelope`] is a serde type encoded
//! with bincode 2, its protocol [`VERSION`] first, so a peer of another version is told apart
//! before anything else is read. The payload frames of a [`Body::Route`] are the ipyparallel
//! frames of one engine message (identities, delimiter, signature, header, parent, metadata,
//! content, buffers), opaque here: decoding hands them back as they came (borrowed, or moved
//! out of the received frames), never re-parsed or copied.
//!
//! Signing: the envelope is signed with the connection file's key ([`Signer::sign_raw`] over a
//! domain tag and the envelope bytes); the receiver verifies it with replay protection. The
//! envelope carries the sender's random stream id and sequence number, so no two envelopes
//! are alike and a replayed one is refused. The payload is a signed ipyparallel message itself,
//! checked by the hub (engine → client) or by the engine (client → engine), as on every other
//! socket. Anything that fails to decode or verify is an error for the caller to log and drop.
//!
//! Engine ids: a job asks for id = rank for each of its ranks; the controller grants the
//! requested id when it is free, else the lowest free id at or above its id counter, so a
//! second job on the same controller gets ids after the first job's (rank r of the second
//! job of 8 ranks is engine 8 + r when nothing else registered). The granted ids come back in
//! rank order.

use crate::wire::{Frames, Signer, WireError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Protocol version (the first field of every envelope; bumped on any change).
pub const VERSION: u16 = 1;

/// Domain tag in front of the signed bytes (a native signature can never pass for a wire
/// message's, or the other way round).
const DOMAIN: &[u8] = b"rpar-native\0";

/// The largest envelope accepted (a registration of 16 384 engines is about 0.7 MB).
pub const MAX_ENVELOPE: usize = 64 << 20;

/// Which engine socket a routed message belongs to (the ipyparallel socket it would travel on
/// in the compat transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// Direct (MUX) requests and replies.
    Mux,
    /// Load-balanced tasks.
    Task,
    /// Control requests (abort, clear, shutdown, signal) and replies.
    Control,
    /// Broadcast-view requests and replies.
    Broadcast,
    /// Engine output (engine → controller only); the first payload frame is the topic.
    IoPub,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Mux,
        Channel::Task,
        Channel::Control,
        Channel::Broadcast,
        Channel::IoPub,
    ];

    /// The routing id of the controller socket an engine's shell or control ROUTER sees for
    /// this channel in the compat transport (`mux_out`, …); rank 0 puts it in front of a
    /// request, so the engine's kernel cannot tell the transports apart.
    pub fn peer_identity(self) -> &'static [u8] {
        match self {
            Channel::Mux => b"mux_out",
            Channel::Task => b"task_out",
            Channel::Control => b"control_out",
            Channel::Broadcast => b"bcast_out",
            Channel::IoPub => b"",
        }
    }

    /// The channel whose [`Channel::peer_identity`] is `ident` (a reply's first frame).
    pub fn from_peer_identity(ident: &[u8]) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| *c != Channel::IoPub && c.peer_identity() == ident)
    }
}

/// The routing header of one engine message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteHeader {
    /// The engine id (as granted at registration).
    pub engine: u32,
    pub channel: Channel,
}

/// One engine of a job, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSpec {
    /// Its MPI rank.
    pub rank: u32,
    /// Its uuid (session and identity of its messages).
    pub uuid: String,
    /// The id asked for (the rank, or on re-registration the id granted before).
    pub requested: u32,
}

/// What the controller granted a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// Engine ids, in the order of the request's engines.
    pub ids: Vec<u32>,
    /// The controller's heartbeat period.
    pub hb_period_ms: u64,
}

/// Why a job or a rank goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Departure {
    /// Every engine answered a shutdown request; the job exits normally.
    Shutdown,
    /// The job got a signal (mpiexec tearing it down).
    Signal(i32),
    /// A rank stopped answering over MPI, or reported a fatal error.
    RankLost { rank: u32, reason: String },
    /// No heartbeat from the controller.
    ControllerGone,
    /// Anything else, with its exit code.
    Exit(i32),
}

/// The typed part of every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// job → controller: register all these engines at once.
    Register { engines: Vec<EngineSpec> },
    /// controller → job: the ids granted, or why not.
    Registered(Result<Granted, String>),
    /// controller → job, once per heartbeat period: the job's one heartbeat.
    Ping { token: u64 },
    /// job → controller: the echo of a ping (sent by rank 0's runtime thread, which only does
    /// so while every rank answers over MPI).
    Pong { token: u64 },
    /// job → controller when no ping came for a while: a controller that does not know the
    /// job (it was restarted) answers [`Body::Reregister`].
    Hello,
    /// controller → job: this connection is not registered here; register again.
    Reregister,
    /// Either way: one engine message, its ipyparallel frames as the payload.
    Route(RouteHeader),
    /// job → controller: every engine of the job is gone (the controller unregisters them
    /// all and fails their tasks).
    Unregister(Departure),
    /// controller → job: the controller is shutting down.
    Shutdown,
}

/// The versioned envelope of every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`VERSION`]; encoded first.
    pub version: u16,
    /// The sender's random stream id (distinguishes the envelopes of different jobs, and of a
    /// controller and its restarted successor, which would otherwise repeat each other).
    pub job: u64,
    /// The sender's sequence number (never repeats on one connection).
    pub seq: u64,
    pub body: Body,
}

/// A message that could not be taken. Logged and dropped, never a panic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NativeError {
    #[error("native message of {0} frame(s): needs a signature and an envelope")]
    Short(usize),
    #[error("native envelope of {0} bytes is over the limit")]
    TooBig(usize),
    #[error("native protocol version {0}, this build speaks {VERSION}")]
    Version(u16),
    #[error("native envelope does not decode: {0}")]
    Decode(String),
    #[error("native message refused: {0}")]
    Signature(#[from] WireError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENVELOPE>()
}

/// Encodes (and signs) one side's messages: the job id and the sequence counter.
#[derive(Debug, Clone)]
pub struct Encoder {
    signer: Signer,
    job: u64,
    seq: u64,
}

impl Encoder {
    pub fn new(key: &[u8], job: u64) -> Encoder {
        Encoder {
            signer: Signer::new(key),
            job,
            seq: 0,
        }
    }

    pub fn job(&self) -> u64 {
        self.job
    }

    /// `[signature, envelope, payload…]`.
    pub fn encode(&mut self, body: Body, payload: Frames) -> Frames {
        let mut out = Vec::with_capacity(2 + payload.len());
        out.extend(self.head(body));
        out.extend(payload);
        out
    }

    /// The two leading frames (signature, envelope) of a message with this body.
    pub fn head(&mut self, body: Body) -> [Vec<u8>; 2] {
        self.seq += 1;
        let env = Envelope {
            version: VERSION,
            job: self.job,
            seq: self.seq,
            body,
        };
        // an envelope of plain data always encodes
        let bytes = bincode::serde::encode_to_vec(&env, config()).unwrap_or_default();
        [self.signer.sign_raw(&[DOMAIN, &bytes]), bytes]
    }
}

/// Verifies and decodes received messages (with a replay history).
#[derive(Debug, Clone)]
pub struct Decoder {
    signer: Signer,
}

impl Decoder {
    pub fn new(key: &[u8]) -> Decoder {
        Decoder {
            signer: Signer::new(key),
        }
    }

    /// Verify and decode `[signature, envelope, payload…]`: the envelope and the payload
    /// frames, borrowed.
    pub fn decode<'a>(
        &mut self,
        frames: &'a [Vec<u8>],
    ) -> Result<(Envelope, &'a [Vec<u8>]), NativeError> {
        let [sig, env, payload @ ..] = frames else {
            return Err(NativeError::Short(frames.len()));
        };
        if env.len() > MAX_ENVELOPE {
            return Err(NativeError::TooBig(env.len()));
        }
        // the version first: a peer of another version is named as such
        let (version, _): (u16, usize) = bincode::serde::decode_from_slice(env, config())
            .map_err(|e| NativeError::Decode(e.to_string()))?;
        if version != VERSION {
            return Err(NativeError::Version(version));
        }
        self.signer.verify_raw(&[DOMAIN, env], sig)?;
        let (envelope, used): (Envelope, usize) = bincode::serde::decode_from_slice(env, config())
            .map_err(|e| NativeError::Decode(e.to_string()))?;
        if used != env.len() {
            return Err(NativeError::Decode(format!(
                "{} trailing byte(s)",
                env.len() - used
            )));
        }
        Ok((envelope, payload))
    }

    /// [`Decoder::decode`] taking the frames: the payload frames are moved out, not copied.
    pub fn decode_owned(&mut self, mut frames: Frames) -> Result<(Envelope, Frames), NativeError> {
        let (env, _) = self.decode(&frames)?;
        frames.drain(..2);
        Ok((env, frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_body() -> Vec<Body> {
        let mut v = vec![
            Body::Register {
                engines: vec![
                    EngineSpec {
                        rank: 0,
                        uuid: "a-b".into(),
                        requested: 0,
                    },
                    EngineSpec {
                        rank: 1,
                        uuid: "c-d".into(),
                        requested: 9,
                    },
                ],
            },
            Body::Registered(Ok(Granted {
                ids: vec![0, 9, u32::MAX],
                hb_period_ms: 3000,
            })),
            Body::Registered(Err("no".into())),
            Body::Ping { token: 7 },
            Body::Pong { token: u64::MAX },
            Body::Hello,
            Body::Reregister,
            Body::Shutdown,
        ];
        for channel in Channel::ALL {
            v.push(Body::Route(RouteHeader { engine: 3, channel }));
        }
        for d in [
            Departure::Shutdown,
            Departure::Signal(15),
            Departure::RankLost {
                rank: 5,
                reason: "silent".into(),
            },
            Departure::ControllerGone,
            Departure::Exit(-1),
        ] {
            v.push(Body::Unregister(d));
        }
        v
    }

    #[test]
    fn every_message_round_trips_with_its_payload() {
        let mut enc = Encoder::new(b"key", 42);
        let mut dec = Decoder::new(b"key");
        let payload = vec![
            b"client".to_vec(),
            b"<IDS|MSG>".to_vec(),
            vec![0, 255],
            vec![],
        ];
        for body in every_body() {
            let frames = enc.encode(body.clone(), payload.clone());
            let (env, rest) = dec.decode(&frames).unwrap();
            assert_eq!(env.version, VERSION);
            assert_eq!(env.job, 42);
            assert_eq!(env.body, body);
            assert_eq!(rest, payload.as_slice());
            // the payload is borrowed from the received frames, not copied
            assert!(std::ptr::eq(rest.as_ptr(), frames[2..].as_ptr()));
        }
    }

    #[test]
    fn owned_decoding_moves_the_payload() {
        let mut enc = Encoder::new(b"k", 1);
        let mut dec = Decoder::new(b"k");
        let big = vec![7u8; 1 << 20];
        let at = big.as_ptr();
        let frames = enc.encode(
            Body::Route(RouteHeader {
                engine: 1,
                channel: Channel::Mux,
            }),
            vec![big],
        );
        let (_, payload) = dec.decode_owned(frames).unwrap();
        assert_eq!(payload[0].as_ptr(), at);
    }

    #[test]
    fn sequence_numbers_rise_and_replays_are_refused() {
        let mut enc = Encoder::new(b"k", 1);
        let mut dec = Decoder::new(b"k");
        let a = enc.encode(Body::Pong { token: 1 }, vec![]);
        let b = enc.encode(Body::Pong { token: 1 }, vec![]);
        let (ea, _) = dec.decode(&a).unwrap();
        let (eb, _) = dec.decode(&b).unwrap();
        assert!(eb.seq > ea.seq);
        assert!(matches!(
            dec.decode(&a),
            Err(NativeError::Signature(WireError::Replayed))
        ));
        // two jobs sending the same thing are not replays of each other
        let mut other = Encoder::new(b"k", 2);
        dec.decode(&other.encode(Body::Pong { token: 1 }, vec![]))
            .unwrap();
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut enc = Encoder::new(b"k", 1);
        let mut dec = Decoder::new(b"k");
        assert!(matches!(dec.decode(&[]), Err(NativeError::Short(0))));
        assert!(matches!(dec.decode(&[vec![1]]), Err(NativeError::Short(1))));
        // wrong key
        let mut wrong = Encoder::new(b"other", 1);
        assert!(matches!(
            dec.decode(&wrong.encode(Body::Hello, vec![])),
            Err(NativeError::Signature(WireError::BadSignature))
        ));
        // tampered envelope
        let mut f = enc.encode(Body::Ping { token: 5 }, vec![]);
        let last = f[1].len() - 1;
        f[1][last] ^= 1;
        assert!(dec.decode(&f).is_err());
        // garbage and truncation
        for env in [vec![], vec![0xff; 3], vec![1, 0xfc, 0xff, 0xff, 0xff, 0xff]] {
            let sig = Signer::new(b"k").sign_raw(&[DOMAIN, &env]);
            assert!(dec.decode(&[sig, env]).is_err());
        }
        // another version is named
        let env = bincode::serde::encode_to_vec(
            Envelope {
                version: 9,
                job: 1,
                seq: 1,
                body: Body::Hello,
            },
            config(),
        )
        .unwrap();
        let sig = Signer::new(b"k").sign_raw(&[DOMAIN, &env]);
        assert!(matches!(
            dec.decode(&[sig.clone(), env.clone()]),
            Err(NativeError::Version(9))
        ));
        // trailing bytes
        let mut good = enc.head(Body::Hello).to_vec();
        good[1].push(0);
        good[0] = Signer::new(b"k").sign_raw(&[DOMAIN, &good[1]]);
        assert!(matches!(dec.decode(&good), Err(NativeError::Decode(_))));
        // random bytes never panic
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let env: Vec<u8> = (0..(n % 40)).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let sig = Signer::new(b"k").sign_raw(&[DOMAIN, &env]);
            let _ = dec.decode(&[sig, env]);
        }
    }

    #[test]
    fn peer_identities_map_back_to_channels() {
        for c in Channel::ALL {
            if c != Channel::IoPub {
                assert_eq!(Channel::from_peer_identity(c.peer_identity()), Some(c));
            }
        }
        assert_eq!(Channel::from_peer_identity(b""), None);
        assert_eq!(Channel::from_peer_identity(b"nope"), None);
    }
}
