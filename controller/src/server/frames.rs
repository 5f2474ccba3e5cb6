//! Framing: one multipart message in or out of a ZeroMQ socket, without waiting.

use rpar_core::wire::Frames;

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

/// Send a multipart message without waiting; frames are moved into ZeroMQ where that is
/// cheaper than copying. When the first frame (a ROUTER's peer identity) is refused, nothing
/// was sent and the frames come back with the error.
pub(super) fn send_frames(
    sock: &zmq::Socket,
    frames: Frames,
) -> Result<(), (zmq::Error, Option<Frames>)> {
    let last = frames.len().saturating_sub(1);
    if let Some(first) = frames.first() {
        let flags = if last > 0 {
            zmq::DONTWAIT | zmq::SNDMORE
        } else {
            zmq::DONTWAIT
        };
        if let Err(e) = sock.send(&first[..], flags) {
            return Err((e, Some(frames)));
        }
    }
    for (i, f) in frames.into_iter().enumerate().skip(1) {
        let flags = if i < last {
            zmq::DONTWAIT | zmq::SNDMORE
        } else {
            zmq::DONTWAIT
        };
        let res = if f.len() < COPY_BELOW {
            sock.send(&f[..], flags)
        } else {
            sock.send(f, flags)
        };
        res.map_err(|e| (e, None))?;
    }
    Ok(())
}
