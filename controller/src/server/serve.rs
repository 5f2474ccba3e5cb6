//! The poll loop: read the sockets, feed the [`Hub`], carry out its effects.

use super::bind::Sockets;
use super::files::Files;
use super::frames::{recv_frames, send_frames};
use super::poll::Readers;
use crate::hub::{Effect, Hub, Parked, Sock};
use anyhow::Result;
use rpar_core::wire::SharedBuffers;
use std::time::Instant;
use tracing::{info, warn};

/// Most messages taken from one socket before the others get a turn.
const BATCH: usize = 256;

/// Serve until a signal or a shutdown request stops the hub.
pub(super) fn serve(
    hub: &mut Hub,
    socks: &Sockets,
    files: &Files,
    mut status: Option<crate::status::Status>,
) -> Result<()> {
    let mut readers = Readers::new(socks.readable())?;
    let mut part = zmq::Message::new();
    let mut effects = hub.tick_shared(Instant::now());
    let mut state_dirty = false;
    let mut parked = Parked::default();
    let mut dask = crate::dask::DaskShell::default();
    loop {
        for a in hub.take_dask_actions() {
            dask.act(a);
        }
        if let Some(r) = dask.poll() {
            effects.extend(hub.dask_started(r));
        }
        run_effects(
            &mut effects,
            socks,
            &mut readers,
            &mut state_dirty,
            &mut parked,
        );
        // after the sends: buffers ZeroMQ is done with go into their records
        hub.settle_records();
        parked.tick(Instant::now(), |kind, frames| {
            retry_send(socks, &mut readers, kind, frames)
        });
        // one write per wake-up, however many engines (un)registered in it
        if std::mem::take(&mut state_dirty) {
            files.save_engines(&hub.engine_state());
        }
        if rpar_core::signals::received().is_some() {
            info!("signal received: stopping");
            return Ok(());
        }
        let now = Instant::now();
        if let Some(s) = status.as_mut() {
            s.tick(hub, now);
        }
        if hub.should_exit(now) {
            info!("hub shut down by request");
            return Ok(());
        }
        if !readers.check_touched() {
            let wait = parked
                .next_retry()
                .map_or(hub.next_deadline(), |r| r.min(hub.next_deadline()))
                .saturating_duration_since(now);
            // round up, so a deadline less than 1 ms away is not a busy loop
            let mut timeout = (wait.as_micros().div_ceil(1000)).min(1000) as i32;
            if dask.starting() {
                // the scheduler's address arrives on a thread: look often
                timeout = timeout.min(20);
            }
            if !readers.wait(timeout)? {
                continue;
            }
            readers.check_touched();
        }
        for i in 0..readers.socks.len() {
            if !std::mem::take(&mut readers.ready[i]) {
                continue;
            }
            let (kind, sock) = readers.socks[i];
            // Drain a bounded batch so no socket starves the others. A receive that ends in
            // EAGAIN leaves the socket consistent (its notification descriptor fires for the
            // next message); anything else must be asked again.
            readers.touched[i] = true;
            for _ in 0..BATCH {
                match recv_frames(sock, &mut part) {
                    Ok(frames) => {
                        let now = Instant::now();
                        hub.on_message_into(kind, frames, now, &mut effects);
                    }
                    Err(zmq::Error::EAGAIN) => {
                        readers.touched[i] = false;
                        break;
                    }
                    Err(zmq::Error::EINTR) => break,
                    Err(e) => {
                        warn!(?kind, error = %e, "receive failed");
                        break;
                    }
                }
            }
            if effects.len() > 4096 {
                run_effects(
                    &mut effects,
                    socks,
                    &mut readers,
                    &mut state_dirty,
                    &mut parked,
                );
            }
        }
        let now = Instant::now();
        if now >= hub.next_deadline() {
            effects.extend(hub.tick_shared(now));
        }
    }
}

/// Try a parked message again: `Err` gives it back while its engine is still not connected.
fn retry_send(
    socks: &Sockets,
    readers: &mut Readers,
    kind: Sock,
    frames: rpar_core::wire::Frames,
) -> Result<(), rpar_core::wire::Frames> {
    let Some(s) = socks.out(kind) else {
        return Ok(());
    };
    readers.touch(kind);
    match send_frames(s, frames, None) {
        Ok(()) => Ok(()),
        Err((zmq::Error::EHOSTUNREACH, Some(frames))) => Err(frames),
        Err((err, _)) => {
            warn!(?kind, error = %err, "send failed");
            Ok(())
        }
    }
}

/// Carry out (and empty) `effects`, each `Send` with the [`Effect::Trailer`] after it.
fn run_effects(
    effects: &mut Vec<Effect>,
    socks: &Sockets,
    readers: &mut Readers,
    state_dirty: &mut bool,
    parked: &mut Parked,
) {
    let mut it = effects.drain(..).peekable();
    while let Some(e) = it.next() {
        let trailer = match (&e, it.peek()) {
            (Effect::Send(..), Some(Effect::Trailer(_))) => match it.next() {
                Some(Effect::Trailer(b)) => Some(b),
                _ => None,
            },
            _ => None,
        };
        run_effect(e, trailer, socks, readers, state_dirty, parked);
    }
}

fn run_effect(
    e: Effect,
    trailer: Option<SharedBuffers>,
    socks: &Sockets,
    readers: &mut Readers,
    state_dirty: &mut bool,
    parked: &mut Parked,
) {
    match e {
        Effect::Send(kind, mut frames) => {
            let Some(s) = socks.out(kind) else { return };
            readers.touch(kind);
            // A message that may wait (parked, or sent on both registration sockets) is made
            // whole first; the others go out with their shared buffers lent to ZeroMQ.
            let mut trailer = trailer;
            let may_wait = Parked::holds(kind) && !parked.is_empty();
            let both = kind == Sock::Registration && socks.extra_registration.is_some();
            if may_wait || both {
                if let Some(b) = trailer.take() {
                    frames.extend(std::sync::Arc::unwrap_or_clone(b));
                }
            }
            let Some(frames) = parked.admit(kind, frames, Instant::now()) else {
                return;
            };
            let res = if kind == Sock::Registration && socks.extra_registration.is_some() {
                // the peer is on one of the two registration sockets; ROUTERs drop what they
                // cannot route, so sending on both reaches it exactly once
                let r2 = socks
                    .extra_registration
                    .as_ref()
                    .map(|r| r.send_multipart(frames.iter(), zmq::DONTWAIT));
                // (the copy above is for this rare case only)
                if let Some(Err(err)) = r2 {
                    warn!(error = %err, "send failed");
                }
                send_frames(s, frames, trailer)
            } else {
                send_frames(s, frames, trailer)
            };
            match res {
                Ok(()) => {}
                Err((zmq::Error::EHOSTUNREACH, Some(frames))) => {
                    parked.send_failed(kind, frames, Instant::now());
                }
                Err((zmq::Error::EHOSTUNREACH, None)) => {}
                Err((err, _)) => warn!(?kind, error = %err, "send failed"),
            }
        }
        Effect::SaveEngines => *state_dirty = true,
        // (taken with the `Send` before it; one on its own has no message to end)
        Effect::Trailer(_) => {}
    }
}
