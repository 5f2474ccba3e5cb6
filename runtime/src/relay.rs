//! The relay protocol between rank 0 (the broker, which owns every ZeroMQ socket) and the other
//! ranks, carried over MPI on a duplicate of `COMM_WORLD`.
//!
//! One MPI message = one [`Packet`]: the multipart ZeroMQ frames as opaque bytes, then a small
//! typed trailer (a serde type encoded with bincode 2: channel, rank, frame lengths, which frame
//! comes first), its length, the version and a magic byte. Rank 0 routes on the
//! trailer only (which engine, which socket) and never parses the frames. [`Life`] packets are
//! the runtime's own small control messages (a rank has shut down, the job is exiting; bincode
//! too) and are the only ones whose body is interpreted.
//!
//! Layout: `first frame | the other frames, in order | bincode(Head) | head length u32 LE |
//! version u8 | magic u8`. The biggest frame, from [`IN_PLACE`] bytes, goes first, so a big
//! buffer crosses a hop without a copy on either side: the sender appends the rest to that
//! frame's own buffer ([`Packet::into_bytes`]; a copy only when it has no room to grow in
//! place), and the receiver cuts the received buffer down to it ([`Packet::from_bytes`]).
//! The trailer sits at the end for the same reason: what is cut off is the small part.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// First byte of every packet.
pub const MAGIC: u8 = 0xA7;
/// Relay protocol version (bumped on any layout change).
pub const VERSION: u8 = 2;
/// A frame from this size on travels in place, first in the packet (see the module docs).
const IN_PLACE: usize = 64 << 10;
/// The fixed end of a packet: head length (u32 LE), version, magic.
const END: usize = 6;
/// The room a big frame received from ZeroMQ gets for the rest of its packet.
const ROOM: usize = 16 << 10;
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
    #[error("bad magic byte {0:#x} at the end")]
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

/// The typed header of a packet (bincode; the version is the byte before the magic).
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    channel: Channel,
    rank: Rank,
    /// The length of each frame.
    lens: Vec<u64>,
    /// The frame that comes first in the packet (the others follow in order).
    first: Option<u32>,
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

    /// The frame to put first: the biggest, if it is at least [`IN_PLACE`] bytes.
    fn first_frame(&self) -> Option<usize> {
        let (i, f) = self
            .frames
            .iter()
            .enumerate()
            .max_by_key(|(_, f)| f.len())?;
        (f.len() >= IN_PLACE).then_some(i)
    }

    fn head(&self, first: Option<usize>) -> Vec<u8> {
        let head = Head {
            channel: self.header.channel,
            rank: self.header.rank,
            lens: self.frames.iter().map(|f| f.len() as u64).collect(),
            first: first.and_then(|i| u32::try_from(i).ok()),
        };
        // a header of plain data always encodes
        bincode::serde::encode_to_vec(&head, config()).unwrap_or_default()
    }

    /// Serialize for one MPI send, in the biggest frame's own buffer when it is big (see the
    /// module docs); the buffer's length is its capacity only when it was built here.
    pub fn into_bytes(mut self) -> Vec<u8> {
        let first = self.first_frame();
        let head = self.head(first);
        let rest: usize = self.frames.iter().map(Vec::len).sum::<usize>()
            - first.map_or(0, |i| self.frames[i].len())
            + head.len()
            + END;
        let mut out = match first {
            Some(i) => {
                let mut f = std::mem::take(&mut self.frames[i]);
                f.reserve_exact(rest);
                f
            }
            None => Vec::with_capacity(rest),
        };
        for (i, f) in self.frames.iter().enumerate() {
            if Some(i) != first {
                out.extend_from_slice(f);
            }
        }
        Self::finish(out, &head)
    }

    fn finish(mut out: Vec<u8>, head: &[u8]) -> Vec<u8> {
        out.extend_from_slice(head);
        // the head is under HEAD_LIMIT
        out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.push(VERSION);
        out.push(MAGIC);
        out
    }

    /// The header, and where the frame bytes end, checked against the buffer.
    fn trailer(buf: &[u8]) -> Result<(Head, usize), RelayError> {
        let Some(end) = buf.len().checked_sub(END) else {
            return Err(RelayError::Short(buf.len()));
        };
        let (magic, version) = (buf[buf.len() - 1], buf[buf.len() - 2]);
        if magic != MAGIC {
            return Err(RelayError::Magic(magic));
        }
        // the version first: a peer of another version is named as such
        if version != VERSION {
            return Err(RelayError::Version(version));
        }
        let mut n = [0u8; 4];
        n.copy_from_slice(&buf[end..end + 4]);
        let head_len = usize::try_from(u32::from_le_bytes(n)).unwrap_or(usize::MAX);
        let Some(data_end) = end.checked_sub(head_len) else {
            return Err(RelayError::Short(buf.len()));
        };
        let (head, used) =
            bincode::serde::decode_from_slice::<Head, _>(&buf[data_end..end], config())
                .map_err(|e| RelayError::Header(e.to_string()))?;
        if used != head_len {
            return Err(RelayError::Header(format!(
                "{used} of {head_len} header bytes read"
            )));
        }
        let total = head.lens.iter().try_fold(0u64, |t, l| t.checked_add(*l));
        if total != Some(data_end as u64) {
            return Err(RelayError::Lengths {
                need: total.unwrap_or(u64::MAX),
                have: data_end,
            });
        }
        if let Some(i) = head.first {
            if usize::try_from(i).map_or(true, |i| i >= head.lens.len()) {
                return Err(RelayError::Header(format!(
                    "first frame {i} of {}",
                    head.lens.len()
                )));
            }
        }
        Ok((head, data_end))
    }

    /// The frames' ranges in the buffer, in packet order (the trailer has checked their sum).
    fn ranges(head: &Head) -> Vec<std::ops::Range<usize>> {
        let len = |i: usize| usize::try_from(head.lens[i]).unwrap_or(0);
        let first = head.first.and_then(|i| usize::try_from(i).ok());
        let mut out = vec![0..0; head.lens.len()];
        let mut at = 0;
        let order = first
            .into_iter()
            .chain((0..head.lens.len()).filter(|i| Some(*i) != first));
        for i in order {
            out[i] = at..at + len(i);
            at += len(i);
        }
        out
    }

    fn header(head: &Head) -> RelayHeader {
        RelayHeader {
            channel: head.channel,
            rank: head.rank,
        }
    }

    /// Deserialize a received packet in its own buffer: the frame that came first is the
    /// buffer, cut down to it; the others are copied out.
    pub fn from_bytes(mut buf: Vec<u8>) -> Result<Packet, RelayError> {
        let (head, _) = Self::trailer(&buf)?;
        let ranges = Self::ranges(&head);
        let first = head.first.and_then(|i| usize::try_from(i).ok());
        let mut frames: Vec<Vec<u8>> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if Some(i) == first {
                    Vec::new()
                } else {
                    buf[r.clone()].to_vec()
                }
            })
            .collect();
        if let Some(i) = first {
            buf.truncate(ranges[i].end);
            frames[i] = buf;
        }
        Ok(Packet {
            header: Self::header(&head),
            frames,
        })
    }
}

/// A multipart message from ZeroMQ, each frame from [`IN_PLACE`] bytes in a buffer with
/// [`ROOM`] to spare, so that relaying it over MPI does not copy it again
/// ([`Packet::into_bytes`]).
pub fn recv_multipart(sock: &zmq::Socket, flags: i32) -> zmq::Result<Vec<Vec<u8>>> {
    let mut part = zmq::Message::new();
    let mut frames = Vec::with_capacity(8);
    loop {
        sock.recv(&mut part, flags)?;
        frames.push(with_room(&part));
        if !part.get_more() {
            return Ok(frames);
        }
    }
}

/// `bytes` as a frame: exactly its size, or with [`ROOM`] to spare from [`IN_PLACE`] bytes.
fn with_room(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < IN_PLACE {
        return bytes.to_vec();
    }
    let mut v = Vec::with_capacity(bytes.len() + ROOM);
    v.extend_from_slice(bytes);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `p` sent and received (its frames have no room to spare: the sender's copy path).
    fn round(p: &Packet) -> Packet {
        Packet::from_bytes(p.clone().into_bytes()).unwrap()
    }

    #[test]
    fn round_trip_every_channel() {
        for ch in [
            Channel::Shell,
            Channel::Control,
            Channel::IoPub,
            Channel::Heartbeat,
            Channel::Life,
        ] {
            for big in [5000, IN_PLACE, 3 * IN_PLACE] {
                let p = Packet::new(
                    ch,
                    Rank(3),
                    vec![
                        b"mux_out".to_vec(),
                        vec![],
                        vec![0, 1, 2, 255],
                        vec![7; big],
                        vec![8; IN_PLACE],
                    ],
                );
                assert_eq!(round(&p), p);
            }
        }
    }

    #[test]
    fn a_big_frame_crosses_in_place() {
        // the sender appends the rest to the big frame's buffer when it has room
        let mut big = Vec::with_capacity((1 << 20) + 4096);
        big.extend((0..1u32 << 20).map(|i| (i % 251) as u8));
        let at = big.as_ptr();
        let p = Packet::new(
            Channel::Shell,
            Rank(1),
            vec![b"ident".to_vec(), b"<IDS|MSG>".to_vec(), big, b"x".to_vec()],
        );
        let want = p.clone();
        let buf = p.into_bytes();
        assert_eq!(buf.as_ptr(), at);
        // the receiver keeps it in the received buffer
        let at = buf.as_ptr();
        let back = Packet::from_bytes(buf).unwrap();
        assert_eq!(back.frames[2].as_ptr(), at);
        assert_eq!(back, want);
        // small frames are copied, each into a buffer of its own size (ZeroMQ takes it as is)
        assert!(back
            .frames
            .iter()
            .enumerate()
            .all(|(i, f)| i == 2 || f.capacity() == f.len()));
        // a frame received from ZeroMQ has the room
        let f = with_room(&back.frames[2]);
        assert!(f.capacity() >= f.len() + ROOM);
        assert_eq!(with_room(b"abc").capacity(), 3);
        // a packet of small frames fills its buffer exactly
        let small = Packet::new(Channel::Shell, Rank(1), vec![vec![1; 100], b"x".to_vec()]);
        let buf = small.into_bytes();
        assert_eq!(buf.capacity(), buf.len());
    }

    #[test]
    fn empty_packet_round_trips() {
        let p = Packet::new(Channel::Heartbeat, Rank(u32::MAX), vec![]);
        assert_eq!(round(&p), p);
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
            let back = round(&p);
            assert_eq!(back.header.channel, Channel::Life);
            assert_eq!(back.as_life().unwrap(), l);
        }
        let bad = Packet::new(Channel::Life, Rank(0), vec![b"{nope".to_vec()]);
        assert!(bad.as_life().is_err());
    }

    #[test]
    fn corrupt_packets_are_errors() {
        let p = Packet::new(Channel::Shell, Rank(1), vec![b"abc".to_vec()]);
        let good = p.into_bytes();
        let decode = |b: &[u8]| Packet::from_bytes(b.to_vec());
        assert_eq!(decode(&[]), Err(RelayError::Short(0)));
        assert_eq!(decode(&[VERSION, MAGIC]), Err(RelayError::Short(2)));
        let n = good.len();
        let mut b = good.clone();
        b[n - 1] = 0;
        assert_eq!(decode(&b), Err(RelayError::Magic(0)));
        let mut b = good.clone();
        b[n - 2] = 99;
        assert_eq!(decode(&b), Err(RelayError::Version(99)));
        // a head length beyond the buffer
        let mut b = good.clone();
        b[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&b).is_err());
        // truncated payload (a byte off the front) and leading garbage
        assert!(decode(&good[1..]).is_err());
        let mut b = vec![0];
        b.extend_from_slice(&good);
        assert!(matches!(decode(&b), Err(RelayError::Lengths { .. })));
        // absurd frame counts, lengths and first frames
        let absurd = |lens: Vec<u64>, first: Option<u32>| {
            let h = Head {
                channel: Channel::Shell,
                rank: Rank(1),
                lens,
                first,
            };
            let head = bincode::serde::encode_to_vec(&h, config()).unwrap();
            Packet::finish(b"abc".to_vec(), &head)
        };
        assert!(decode(&absurd(vec![3], None)).is_ok());
        assert!(decode(&absurd(vec![3], Some(0))).is_ok());
        assert!(decode(&absurd(vec![3], Some(1))).is_err());
        assert!(decode(&absurd(vec![3], Some(u32::MAX))).is_err());
        assert!(decode(&absurd(vec![u64::MAX], None)).is_err());
        assert!(decode(&absurd(vec![u64::MAX, 4], None)).is_err());
        assert!(decode(&absurd(vec![0; 300_000], None)).is_err());
        // a claimed frame count far beyond the buffer is refused without allocating it
        let mut b = vec![0, 1, 0xfc, 0xff, 0xff, 0xff, 0xff];
        b.extend_from_slice(&[0; 16]);
        let k = u32::try_from(b.len()).unwrap();
        b.extend_from_slice(&k.to_le_bytes());
        b.extend_from_slice(&[VERSION, MAGIC]);
        assert!(decode(&b).is_err());
        // random bytes never panic
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..3000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b: Vec<u8> = (0..(n % 48)).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if n % 2 == 0 && b.len() > 6 {
                let k = b.len();
                b[k - 1] = MAGIC;
                b[k - 2] = VERSION;
                b[k - 6..k - 2].copy_from_slice(&u32::try_from(n % 40).unwrap().to_le_bytes());
            }
            let _ = decode(&b);
        }
    }
}
