//! File-descriptor-level capture of stdout and stderr, turned into IOPub `stream` messages.
//!
//! Descriptors 1 and 2 are replaced by pipes before Python starts, so everything the rank
//! writes — Python's `print` (the interpreter runs with unbuffered stdio), C `printf` from an
//! extension or ctypes, Fortran — goes through one reader thread. While a request runs, its text
//! is published with the request as parent (topic `engine.<id>.stdout|stderr`); outside a request
//! it goes to the original descriptors (the terminal / mpiexec's output).
//!
//! Ordering: before an engine sends a reply it calls [`Capture::flush`], which flushes C stdio and
//! writes a marker into each pipe, then waits until the reader has passed the marker. A pipe is a
//! FIFO, so every byte written before the reply is published before it. The common case, nothing
//! written since the last flush, skips the round trip through the reader thread: the reader reads
//! and publishes under a lock, so with that lock held, both pipes empty (`poll`) and nothing
//! held back by the reader, every byte written before is already published.

use crate::session::{Outbox, Session};
use serde_json::json;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::warn;

const MARK: &[u8] = b"\x00\x01rpar-flush:";
const NAMES: [&str; 2] = ["stdout", "stderr"];

struct Attached {
    session: Arc<Session>,
    outbox: Outbox,
}

/// The capture of one rank.
pub struct Capture {
    parent: Mutex<Option<Vec<u8>>>,
    flushed: Mutex<[u64; 2]>,
    cv: Condvar,
    seq: Mutex<u64>,
    attached: OnceLock<Attached>,
    /// The original stdout/stderr (for text outside requests, and for logs).
    orig: [OwnedFd; 2],
    /// The read ends of the two pipes (read by the reader thread only).
    pipes: [OwnedFd; 2],
    /// Held by the reader while it reads and publishes: the bytes it holds back (a partial
    /// marker or UTF-8 sequence, text within its linger) of each pipe.
    held: Mutex<[usize; 2]>,
}

fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: dup of a descriptor; the result is owned by us.
    let d = unsafe { libc::dup(fd) };
    if d < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: d is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

impl Capture {
    /// Redirect fds 1 and 2 into pipes and start the reader thread.
    pub fn install() -> std::io::Result<Arc<Capture>> {
        let orig = [dup(1)?, dup(2)?];
        let mut readers: Vec<OwnedFd> = Vec::new();
        for target in [1, 2] {
            let (r, w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
            // SAFETY: dup2 onto the standard descriptor; w is closed after (1/2 keep the pipe).
            if unsafe { libc::dup2(w.as_raw_fd(), target) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            drop(w);
            readers.push(r);
        }
        let cap = Arc::new(Capture {
            parent: Mutex::new(None),
            flushed: Mutex::new([0, 0]),
            cv: Condvar::new(),
            seq: Mutex::new(0),
            attached: OnceLock::new(),
            orig,
            pipes: readers
                .try_into()
                .map_err(|_| std::io::Error::other("two pipes"))?,
            held: Mutex::new([0, 0]),
        });
        let c = cap.clone();
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || c.reader())?;
        Ok(cap)
    }

    /// A duplicate of the original stderr, for the log.
    pub fn original_stderr(&self) -> std::io::Result<std::fs::File> {
        Ok(std::fs::File::from(dup(self.orig[1].as_raw_fd())?))
    }

    /// From now on, text during requests becomes stream messages of this engine.
    pub fn attach(&self, session: Arc<Session>, outbox: Outbox) {
        let _ = self.attached.set(Attached { session, outbox });
    }

    /// The request whose output is being captured (None between requests).
    pub fn set_parent(&self, parent: Option<Vec<u8>>) {
        *self.parent.lock().unwrap_or_else(|e| e.into_inner()) = parent;
    }

    /// Make sure everything written so far has been published (see the module doc).
    pub fn flush(&self) {
        // SAFETY: fflush(NULL) flushes every C stdio output stream.
        unsafe {
            libc::fflush(std::ptr::null_mut());
        }
        if self.settled() {
            return;
        }
        let seq = {
            let mut s = self.seq.lock().unwrap_or_else(|e| e.into_inner());
            *s += 1;
            *s
        };
        let mut mark = MARK.to_vec();
        mark.extend_from_slice(format!("{seq}\x00").as_bytes());
        for fd in [1, 2] {
            write_all(fd, &mark);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut f = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        while f[0] < seq || f[1] < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!("output capture did not catch up within 5 s");
                return;
            }
            f = self
                .cv
                .wait_timeout(f, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Has every byte written so far been published (nothing in the pipes, nothing held)?
    fn settled(&self) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *held == [0, 0] && both_empty(&self.pipes)
    }

    fn emit(&self, which: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let parent = self
            .parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (parent, self.attached.get()) {
            (Some(parent), Some(a)) => {
                let text = String::from_utf8_lossy(bytes);
                let content = json!({ "name": NAMES[which], "text": text });
                a.outbox
                    .send(a.session.iopub(NAMES[which], "stream", &parent, &content));
            }
            _ => write_all(self.orig[which].as_raw_fd(), bytes),
        }
    }

    fn reader(self: Arc<Self>) {
        let readers = [self.pipes[0].as_raw_fd(), self.pipes[1].as_raw_fd()];
        let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut since: [Option<Instant>; 2] = [None, None];
        let mut buf = vec![0u8; 65536];
        let linger = Duration::from_millis(10);
        loop {
            let timeout = since
                .iter()
                .flatten()
                .map(|t| linger.saturating_sub(t.elapsed()).as_millis() as i32)
                .min()
                .unwrap_or(-1);
            let mut fds: Vec<libc::pollfd> = readers
                .iter()
                .map(|r| libc::pollfd {
                    fd: *r,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: fds is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            // reading and publishing under `held` (see `settled`)
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents & (libc::POLLIN | libc::POLLHUP) == 0 {
                    continue;
                }
                // SAFETY: reading into our buffer from a descriptor we own.
                let got = unsafe { libc::read(pfd.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if got <= 0 {
                    if got == 0 {
                        return;
                    }
                    continue;
                }
                pending[i].extend_from_slice(&buf[..got as usize]);
                since[i].get_or_insert_with(Instant::now);
                self.process(i, &mut pending[i], &mut since[i], false);
            }
            for i in 0..2 {
                if since[i].is_some_and(|t| t.elapsed() >= linger) || pending[i].len() > 1 << 16 {
                    self.process(i, &mut pending[i], &mut since[i], true);
                }
            }
            *held = [pending[0].len(), pending[1].len()];
        }
    }

    /// Publish what can be published from `pending`: everything before a flush marker always;
    /// the rest when `emit_tail` (holding back a partial marker or UTF-8 sequence).
    fn process(
        &self,
        i: usize,
        pending: &mut Vec<u8>,
        since: &mut Option<Instant>,
        emit_tail: bool,
    ) {
        loop {
            match split_marker(pending) {
                Marker::Found { before, seq, after } => {
                    self.emit(i, &pending[..before]);
                    pending.drain(..after);
                    let mut f = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
                    f[i] = f[i].max(seq);
                    self.cv.notify_all();
                }
                Marker::Partial { safe } | Marker::None { safe } => {
                    if emit_tail && safe > 0 {
                        let cut = utf8_safe(&pending[..safe]);
                        self.emit(i, &pending[..cut]);
                        pending.drain(..cut);
                    }
                    break;
                }
            }
        }
        *since = if pending.is_empty() {
            None
        } else if emit_tail {
            Some(Instant::now())
        } else {
            *since
        };
    }
}

/// Are both pipes empty (one `poll` for the two: `POLLIN` is set exactly when a pipe holds
/// bytes)? False if it cannot say.
fn both_empty(pipes: &[OwnedFd; 2]) -> bool {
    let mut fds = pipes.each_ref().map(|p| libc::pollfd {
        fd: p.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: polling a live array of two pollfds, without waiting.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) };
    r >= 0 && fds.iter().all(|f| f.revents & libc::POLLIN == 0)
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    /// A complete marker: text is `..before`, the marker ends at `after`.
    Found {
        before: usize,
        seq: u64,
        after: usize,
    },
    /// A marker starts but is incomplete; `..safe` can be published.
    Partial { safe: usize },
    /// No marker; `..safe` can be published (a trailing prefix of a marker is held back).
    None { safe: usize },
}

fn split_marker(p: &[u8]) -> Marker {
    if let Some(pos) = find(p, MARK) {
        let rest = &p[pos + MARK.len()..];
        return match rest.iter().position(|&b| b == 0) {
            Some(end) => {
                let seq = std::str::from_utf8(&rest[..end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Marker::Found {
                    before: pos,
                    seq,
                    after: pos + MARK.len() + end + 1,
                }
            }
            None => Marker::Partial { safe: pos },
        };
    }
    // hold back a suffix that could be the start of a marker
    let mut safe = p.len();
    for k in (1..MARK.len().min(p.len() + 1)).rev() {
        if p.ends_with(&MARK[..k]) {
            safe = p.len() - k;
            break;
        }
    }
    Marker::None { safe }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest prefix that does not end inside a UTF-8 sequence.
fn utf8_safe(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let mut m = b"hello".to_vec();
        m.extend_from_slice(MARK);
        m.extend_from_slice(b"12\x00world");
        assert_eq!(
            split_marker(&m),
            Marker::Found {
                before: 5,
                seq: 12,
                after: 5 + MARK.len() + 3
            }
        );
        let mut p = b"abc".to_vec();
        p.extend_from_slice(&MARK[..4]);
        assert_eq!(split_marker(&p), Marker::None { safe: 3 });
        let mut p = b"abc".to_vec();
        p.extend_from_slice(MARK);
        p.extend_from_slice(b"4");
        assert_eq!(split_marker(&p), Marker::Partial { safe: 3 });
        assert_eq!(split_marker(b"plain"), Marker::None { safe: 5 });
    }

    #[test]
    fn utf8_boundaries() {
        let s = "aé".as_bytes();
        assert_eq!(utf8_safe(s), 3);
        assert_eq!(utf8_safe(&s[..2]), 1);
        assert_eq!(utf8_safe(b"\xffx"), 2);
    }
}
