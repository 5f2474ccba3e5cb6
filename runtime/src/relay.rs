//! The relay protocol between rank 0 (the broker, which owns every ZeroMQ socket) and the other
//! ranks, carried over MPI on a duplicate of `COMM_WORLD`.
//!
//! One MPI message = one [`Packet`]: a magic byte, a small typed header (a serde type encoded with
//! bincode 2, its version first: channel, rank, frame lengths), then the multipart ZeroMQ frames
//! as opaque bytes. Rank 0 routes on the header only (which engine, which socket) and never
//! parses the frames: a 1 GiB pickled argument crosses it as bytes, copied once into the MPI
//! buffer on the sending side; [`Packet::decode_ref`] borrows the frames out of the received
//! buffer. [`Life`] packets are the runtime's own small control messages (a rank has shut down,
//! the job is exiting; bincode too) and are the only ones whose body is interpreted.
//!
//! Layout: `magic u8 | bincode(Head { version, channel, rank, lens }) | frame bytes…`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// First byte of every packet.
pub const MAGIC: u8 = 0xA7;
/// Relay protocol version (bumped on any layout change).
pub const VERSION: u8 = 1;
/// MPI tag of relay traffic on the duplicated communicator.
pub const TAG: i32 = 7;

/// An MPI rank of the engine job (= the engine id it asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rank(pub u32);

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which socket of the engine a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// The shell ROUTER (mux, task and broadcast traffic).
    Shell,
    /// The control ROUTER.
    Control,
    /// IOPub (engine → controller only): frames start with the topic.
    IoPub,
    /// Heartbeat ping (rank 0 → rank) and its echo (rank → rank 0), frames unchanged.
    Heartbeat,
    /// Runtime lifecycle, one bincode frame ([`Life`]).
    Life,
}

/// The routing header: which engine (rank) and which socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    pub channel: Channel,
    pub rank: Rank,
}

/// One relayed multipart message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: RelayHeader,
    pub frames: Vec<Vec<u8>>,
}

/// Runtime lifecycle messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Life {
    /// The engine of this rank answered a shutdown_request and serves nothing more.
    Done,
    /// Every rank stops and exits with this code (rank 0 → all).
    Exit { code: i32 },
    /// A rank hit a fatal error; rank 0 unregisters everything and aborts the job.
    Fatal { reason: String },
}

/// A packet that could not be decoded. Logged and dropped, never a panic.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayError {
    #[error("packet of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("bad magic byte {0:#x}")]
    Magic(u8),
    #[error("relay protocol version {0}, this build speaks {VERSION}")]
    Version(u8),
    #[error("bad relay header: {0}")]
    Header(String),
    #[error("frame lengths do not match the packet ({need} != {have} bytes)")]
    Lengths { need: u64, have: usize },
    #[error("bad lifecycle message: {0}")]
    Life(String),
}

/// The typed header of a packet (bincode; the version first).
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    version: u8,
    channel: Channel,
    rank: Rank,
    /// The length of each frame.
    lens: Vec<u64>,
}

/// The most header bytes read (a header of 65 536 frames is under 600 KiB).
const HEAD_LIMIT: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HEAD_LIMIT>()
}

impl Packet {
    pub fn new(channel: Channel, rank: Rank, frames: Vec<Vec<u8>>) -> Packet {
        Packet {
            header: RelayHeader { channel, rank },
            frames,
        }
    }

    /// A lifecycle packet about/for `rank`.
    pub fn life(rank: Rank, life: &Life) -> Packet {
        let body = bincode::serde::encode_to_vec(life, config()).unwrap_or_default();
        Packet::new(Channel::Life, rank, vec![body])
    }

    /// The lifecycle message carried by a [`Channel::Life`] packet.
    pub fn as_life(&self) -> Result<Life, RelayError> {
        let body = self.frames.first().map(Vec::as_slice).unwrap_or(b"");
        bincode::serde::decode_from_slice(body, config())
            .map(|(l, _)| l)
            .map_err(|e| RelayError::Life(e.to_string()))
    }

    /// Serialize for one MPI send (the one copy of the frames on this side).
    pub fn encode(&self) -> Vec<u8> {
        let head = Head {
            version: VERSION,
            channel: self.header.channel,
            rank: self.header.rank,
            lens: self.frames.iter().map(|f| f.len() as u64).collect(),
        };
        // a header of plain data always encodes
        let head = bincode::serde::encode_to_vec(&head, config()).unwrap_or_default();
        let data: usize = self.frames.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(1 + head.len() + data);
        out.push(MAGIC);
        out.extend_from_slice(&head);
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }

    /// The header and where the frames start.
    fn head(buf: &[u8]) -> Result<(Head, usize), RelayError> {
        let (&magic, rest) = buf.split_first().ok_or(RelayError::Short(buf.len()))?;
        if magic != MAGIC {
            return Err(RelayError::Magic(magic));
        }
        // the version first: a peer of another version is named as such
        let &version = rest.first().ok_or(RelayError::Short(buf.len()))?;
        if version != VERSION {
            return Err(RelayError::Version(version));
        }
        let (head, used): (Head, usize) = bincode::serde::decode_from_slice(rest, config())
            .map_err(|e| RelayError::Header(e.to_string()))?;
        Ok((head, 1 + used))
    }

    /// Parse a received MPI message, the frames borrowed from `buf`.
    pub fn decode_ref(buf: &[u8]) -> Result<(RelayHeader, Vec<&[u8]>), RelayError> {
        let (head, start) = Self::head(buf)?;
        let total = head
            .lens
            .iter()
            .try_fold(start as u64, |t, l| t.checked_add(*l));
        if total != Some(buf.len() as u64) {
            return Err(RelayError::Lengths {
                need: total.unwrap_or(u64::MAX),
                have: buf.len(),
            });
        }
        let mut frames = Vec::with_capacity(head.lens.len());
        let mut rest = &buf[start..];
        for l in &head.lens {
            // every length fits: their sum is the buffer's
            let (f, r) = rest.split_at(usize::try_from(*l).unwrap_or(rest.len()));
            frames.push(f);
            rest = r;
        }
        let header = RelayHeader {
            channel: head.channel,
            rank: head.rank,
        };
        Ok((header, frames))
    }

    /// Parse a received MPI message into owned frames (the one copy on this side).
    pub fn decode(buf: &[u8]) -> Result<Packet, RelayError> {
        let (header, frames) = Self::decode_ref(buf)?;
        Ok(Packet {
            header,
            frames: frames.into_iter().map(<[u8]>::to_vec).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_channel() {
        for ch in [
            Channel::Shell,
            Channel::Control,
            Channel::IoPub,
            Channel::Heartbeat,
            Channel::Life,
        ] {
            let p = Packet::new(
                ch,
                Rank(3),
                vec![
                    b"mux_out".to_vec(),
                    vec![],
                    vec![0, 1, 2, 255],
                    vec![7; 5000],
                ],
            );
            let buf = p.encode();
            assert_eq!(Packet::decode_ref(&buf).unwrap().0, p.header);
            assert_eq!(Packet::decode(&buf).unwrap(), p);
        }
    }

    #[test]
    fn encode_fills_its_buffer_exactly() {
        // the MPI send takes the buffer as a boxed slice: spare capacity would be a second copy
        let p = Packet::new(
            Channel::Shell,
            Rank(1),
            vec![vec![1; 1 << 20], b"x".to_vec()],
        );
        let buf = p.encode();
        assert_eq!(buf.capacity(), buf.len());
        // and decoding copies each frame once, into a buffer of its own size (ZeroMQ takes it
        // as it is)
        let back = Packet::decode(&buf).unwrap();
        assert!(back.frames.iter().all(|f| f.capacity() == f.len()));
    }

    #[test]
    fn empty_packet_round_trips() {
        let p = Packet::new(Channel::Heartbeat, Rank(u32::MAX), vec![]);
        assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn life_round_trip() {
        for l in [
            Life::Done,
            Life::Exit { code: 3 },
            Life::Fatal {
                reason: "boom".into(),
            },
        ] {
            let p = Packet::life(Rank(1), &l);
            let back = Packet::decode(&p.encode()).unwrap();
            assert_eq!(back.header.channel, Channel::Life);
            assert_eq!(back.as_life().unwrap(), l);
        }
        let bad = Packet::new(Channel::Life, Rank(0), vec![b"{nope".to_vec()]);
        assert!(bad.as_life().is_err());
    }

    #[test]
    fn decode_ref_borrows_the_frames() {
        let p = Packet::new(Channel::Shell, Rank(2), vec![b"abc".to_vec(), vec![9; 100]]);
        let buf = p.encode();
        let (h, frames) = Packet::decode_ref(&buf).unwrap();
        assert_eq!(h, p.header);
        assert_eq!(frames, vec![&b"abc"[..], &[9u8; 100][..]]);
        let inside = buf.as_ptr_range();
        assert!(inside.contains(&frames[1].as_ptr()));
    }

    #[test]
    fn corrupt_packets_are_errors() {
        let p = Packet::new(Channel::Shell, Rank(1), vec![b"abc".to_vec()]);
        let good = p.encode();
        assert_eq!(Packet::decode(&[]), Err(RelayError::Short(0)));
        assert_eq!(Packet::decode(&[MAGIC]), Err(RelayError::Short(1)));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(Packet::decode(&b), Err(RelayError::Magic(0)));
        let mut b = good.clone();
        b[1] = 99;
        assert_eq!(Packet::decode(&b), Err(RelayError::Version(99)));
        // an unknown channel
        let mut b = good.clone();
        b[2] = 42;
        assert!(matches!(Packet::decode(&b), Err(RelayError::Header(_))));
        // truncated payload
        assert!(matches!(
            Packet::decode(&good[..good.len() - 1]),
            Err(RelayError::Lengths { .. })
        ));
        // trailing garbage
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            Packet::decode(&b),
            Err(RelayError::Lengths { .. })
        ));
        // absurd frame counts and lengths
        let absurd = |lens: Vec<u64>| {
            let h = Head {
                version: VERSION,
                channel: Channel::Shell,
                rank: Rank(1),
                lens,
            };
            let mut b = vec![MAGIC];
            b.extend(bincode::serde::encode_to_vec(&h, config()).unwrap());
            b.extend_from_slice(b"abc");
            b
        };
        assert!(Packet::decode(&absurd(vec![u64::MAX])).is_err());
        assert!(Packet::decode(&absurd(vec![u64::MAX, 4])).is_err());
        assert!(Packet::decode(&absurd(vec![0; 300_000])).is_err());
        // a claimed frame count far beyond the buffer is refused without allocating it
        let mut b = vec![MAGIC, VERSION, 0, 1, 0xfc, 0xff, 0xff, 0xff, 0xff];
        b.extend_from_slice(&[0; 16]);
        assert!(Packet::decode(&b).is_err());
        // random bytes never panic
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..3000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b: Vec<u8> = (0..(n % 48)).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if n % 2 == 0 && b.len() > 2 {
                b[0] = MAGIC;
                b[1] = VERSION;
            }
            let _ = Packet::decode(&b);
        }
    }
}
