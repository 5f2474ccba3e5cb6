//! The relay protocol between rank 0 (the broker, which owns every ZeroMQ socket) and the other
//! ranks, carried over MPI on a duplicate of `COMM_WORLD`.
//!
//! One MPI message = one [`Packet`]: a small fixed header (magic, version, channel, rank), then
//! the multipart ZeroMQ frames as length-prefixed opaque bytes. Rank 0 routes on the header only
//! (which engine, which socket) and never parses the frames: a 1 GiB pickled argument crosses it
//! as bytes. [`Life`] packets are the runtime's own small control messages (a rank has shut down,
//! the job is exiting) and are the only ones whose body is interpreted.
//!
//! Layout (little-endian): `magic u8 | version u8 | channel u8 | 0 u8 | rank u32 | nframes u32 |
//! len u64 × nframes | frame bytes…`.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    /// The shell ROUTER (mux, task and broadcast traffic).
    Shell = 1,
    /// The control ROUTER.
    Control = 2,
    /// IOPub (engine → controller only): frames start with the topic.
    IoPub = 3,
    /// Heartbeat ping (rank 0 → rank) and its echo (rank → rank 0), frames unchanged.
    Heartbeat = 4,
    /// Runtime lifecycle, one JSON frame ([`Life`]).
    Life = 5,
}

impl Channel {
    fn from_u8(b: u8) -> Option<Channel> {
        Some(match b {
            1 => Channel::Shell,
            2 => Channel::Control,
            3 => Channel::IoPub,
            4 => Channel::Heartbeat,
            5 => Channel::Life,
            _ => return None,
        })
    }
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
    #[error("unknown channel {0}")]
    Channel(u8),
    #[error("frame lengths exceed the packet ({need} > {have} bytes)")]
    Lengths { need: u64, have: usize },
    #[error("bad lifecycle message: {0}")]
    Life(String),
}

const FIXED: usize = 12;

impl Packet {
    pub fn new(channel: Channel, rank: Rank, frames: Vec<Vec<u8>>) -> Packet {
        Packet {
            header: RelayHeader { channel, rank },
            frames,
        }
    }

    /// A lifecycle packet about/for `rank`.
    pub fn life(rank: Rank, life: &Life) -> Packet {
        let body = serde_json::to_vec(life).unwrap_or_default();
        Packet::new(Channel::Life, rank, vec![body])
    }

    /// The lifecycle message carried by a [`Channel::Life`] packet.
    pub fn as_life(&self) -> Result<Life, RelayError> {
        let body = self.frames.first().map(Vec::as_slice).unwrap_or(b"");
        serde_json::from_slice(body).map_err(|e| RelayError::Life(e.to_string()))
    }

    /// Serialize for one MPI send.
    pub fn encode(&self) -> Vec<u8> {
        let data: usize = self.frames.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(FIXED + 8 * self.frames.len() + data);
        out.extend_from_slice(&[MAGIC, VERSION, self.header.channel as u8, 0]);
        out.extend_from_slice(&self.header.rank.0.to_le_bytes());
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&(f.len() as u64).to_le_bytes());
        }
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }

    /// Only the routing header (what rank 0 needs to route a packet it will not otherwise read).
    pub fn peek_header(buf: &[u8]) -> Result<RelayHeader, RelayError> {
        if buf.len() < FIXED {
            return Err(RelayError::Short(buf.len()));
        }
        if buf[0] != MAGIC {
            return Err(RelayError::Magic(buf[0]));
        }
        if buf[1] != VERSION {
            return Err(RelayError::Version(buf[1]));
        }
        let channel = Channel::from_u8(buf[2]).ok_or(RelayError::Channel(buf[2]))?;
        let rank = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        Ok(RelayHeader {
            channel,
            rank: Rank(rank),
        })
    }

    /// Parse a received MPI message.
    pub fn decode(buf: &[u8]) -> Result<Packet, RelayError> {
        let header = Self::peek_header(buf)?;
        let n = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let lens_end = (n as u64)
            .checked_mul(8)
            .and_then(|x| x.checked_add(FIXED as u64))
            .ok_or(RelayError::Lengths {
                need: u64::MAX,
                have: buf.len(),
            })?;
        if lens_end > buf.len() as u64 {
            return Err(RelayError::Lengths {
                need: lens_end,
                have: buf.len(),
            });
        }
        let lens_end = lens_end as usize;
        let mut lens = Vec::with_capacity(n);
        let mut total: u64 = lens_end as u64;
        for i in 0..n {
            let o = FIXED + 8 * i;
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            let l = u64::from_le_bytes(b);
            total = total.saturating_add(l);
            lens.push(l as usize);
        }
        if total != buf.len() as u64 {
            return Err(RelayError::Lengths {
                need: total,
                have: buf.len(),
            });
        }
        let mut frames = Vec::with_capacity(n);
        let mut pos = lens_end;
        for l in lens {
            frames.push(buf[pos..pos + l].to_vec());
            pos += l;
        }
        Ok(Packet { header, frames })
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
            assert_eq!(Packet::peek_header(&buf).unwrap(), p.header);
            assert_eq!(Packet::decode(&buf).unwrap(), p);
        }
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
    fn corrupt_packets_are_errors() {
        let p = Packet::new(Channel::Shell, Rank(1), vec![b"abc".to_vec()]);
        let good = p.encode();
        assert_eq!(Packet::decode(&good[..5]), Err(RelayError::Short(5)));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(Packet::decode(&b), Err(RelayError::Magic(0)));
        let mut b = good.clone();
        b[1] = 99;
        assert_eq!(Packet::decode(&b), Err(RelayError::Version(99)));
        let mut b = good.clone();
        b[2] = 42;
        assert_eq!(Packet::decode(&b), Err(RelayError::Channel(42)));
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
        // absurd frame count
        let mut b = good;
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Packet::decode(&b),
            Err(RelayError::Lengths { .. })
        ));
        // absurd frame length
        let mut b = Packet::new(Channel::Shell, Rank(1), vec![vec![1]]).encode();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Packet::decode(&b),
            Err(RelayError::Lengths { .. })
        ));
    }
}
