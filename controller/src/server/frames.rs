//! Framing: one multipart message in or out of a ZeroMQ socket, without waiting.
//!
//! Outgoing buffers shared with the task records ([`SharedBuffers`]) are handed to ZeroMQ
//! without a copy: each frame's ZeroMQ message points into the shared bytes and holds a
//! reference to them, dropped by ZeroMQ (on its I/O thread) once the frame is on the wire.

use rpar_core::wire::{Frames, SharedBuffers};
use std::os::raw::c_void;

/// One multipart message, without waiting: like `recv_multipart`, but with one reusable
/// `zmq_msg_t` and `zmq_msg_more` instead of a `ZMQ_RCVMORE` query per frame.
pub(super) fn recv_frames(sock: &zmq::Socket, part: &mut zmq::Message) -> zmq::Result<Frames> {
    let mut frames = Vec::with_capacity(8);
    loop {
        sock.recv(part, zmq::DONTWAIT)?;
        frames.push(part.to_vec());
        if !part.get_more() {
            return Ok(frames);
        }
    }
}

/// Frames up to this size are copied into the ZeroMQ message (no allocation for the smallest,
/// one copy of a few bytes) rather than handed over, which costs a reference-count block.
const COPY_BELOW: usize = 256;

/// A socket to send on: the `zmq` crate's handle and its raw `void *` for `zmq_msg_send`.
#[derive(Clone, Copy)]
pub(super) struct Out<'a> {
    pub(super) sock: &'a zmq::Socket,
    pub(super) raw: *mut c_void,
}

/// Send a multipart message without waiting: `frames`, then the `shared` buffers if any.
/// Frames are moved into ZeroMQ where that is cheaper than copying; shared buffers are lent
/// ([`send_shared`]). When the first frame (a ROUTER's peer identity) is refused, nothing was
/// sent and the frames come back with the error, the shared buffers folded in.
pub(super) fn send_frames(
    out: Out,
    frames: Frames,
    shared: Option<SharedBuffers>,
) -> Result<(), (zmq::Error, Option<Frames>)> {
    let n_shared = shared.as_ref().map_or(0, |b| b.len());
    let last = (frames.len() + n_shared).saturating_sub(1);
    let flags = |i: usize| {
        if i < last {
            zmq::DONTWAIT | zmq::SNDMORE
        } else {
            zmq::DONTWAIT
        }
    };
    if let Some(first) = frames.first() {
        if let Err(e) = out.sock.send(&first[..], flags(0)) {
            let mut back = frames;
            if let Some(b) = shared {
                back.extend(std::sync::Arc::unwrap_or_clone(b));
            }
            return Err((e, Some(back)));
        }
    }
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate().skip(1) {
        let res = if f.len() < COPY_BELOW {
            out.sock.send(&f[..], flags(i))
        } else {
            out.sock.send(f, flags(i))
        };
        res.map_err(|e| (e, None))?;
    }
    if let Some(b) = shared {
        for j in 0..b.len() {
            send_shared(out, &b, j, flags(n + j)).map_err(|e| (e, None))?;
        }
    }
    Ok(())
}

/// Frees what [`send_shared`] lent ZeroMQ: the boxed reference to the shared buffers.
unsafe extern "C" fn release(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<SharedBuffers>` leaked by `send_shared`, released once, here.
    drop(unsafe { Box::from_raw(hint.cast::<SharedBuffers>()) });
}

/// Send buffer `j` of `b` as one frame, without copying it: the ZeroMQ message points into
/// the buffer and owns a reference to `b` until ZeroMQ releases it.
fn send_shared(out: Out, b: &SharedBuffers, j: usize, flags: i32) -> zmq::Result<()> {
    let data = &b[j];
    if data.len() < COPY_BELOW {
        return out.sock.send(&data[..], flags);
    }
    let hint = Box::into_raw(Box::new(b.clone()));
    let mut msg = std::mem::MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
    // SAFETY: `data` lives as long as the reference in `hint` (the buffers are never mutated
    // while shared); ZeroMQ calls `release` exactly once when it is done with the message, or
    // we do below through `zmq_msg_close` when the send fails.
    unsafe {
        let rc = zmq_sys::zmq_msg_init_data(
            msg.as_mut_ptr(),
            data.as_ptr() as *mut c_void,
            data.len(),
            Some(release),
            hint.cast::<c_void>(),
        );
        if rc != 0 {
            drop(Box::from_raw(hint));
            return Err(zmq::Error::from_raw(zmq_sys::zmq_errno()));
        }
        if zmq_sys::zmq_msg_send(msg.as_mut_ptr(), out.raw, flags) < 0 {
            let e = zmq::Error::from_raw(zmq_sys::zmq_errno());
            zmq_sys::zmq_msg_close(msg.as_mut_ptr());
            return Err(e);
        }
    }
    Ok(())
}
