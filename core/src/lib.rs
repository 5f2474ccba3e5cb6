//! rpar-core: the pieces every rpar program shares.
//!
//! * [`wire`]: Jupyter/ipyparallel multipart framing, HMAC-SHA256 signing and verification,
//!   replay protection and size limits.
//! * [`msg`]: message headers and the builder that stamps them.
//! * [`ids`]: session/engine uuids and timestamps in the client's format (engine ids are plain
//!   `u32`, converted from peer numbers with `try_from`).
//! * [`connection`]: the `ipcontroller-*.json` connection files.
//! * [`curve`]: CurveZMQ keys (Z85 text, checked) and the `IPP_CURVE_*` variables.
//! * [`profile`]: IPython profile directories (`$IPYTHONDIR/profile_<name>`).
//! * [`config`]: `*_config.py` / `*_config.json` / `--Class.trait=value` for all three programs.
//! * [`logging`]: the log-level parser and the logging set-up of every program.
//! * [`flags`]: the profile flags and the `--foo_bar` spelling, for every command line.
//! * [`native`]: the native engine transport's messages (one connection per MPI job).
//! * [`signals`]: the stopping-signal flag every program's loop checks.
//! * [`fdlimit`]: the open-file limit, raised for the many connections of big jobs.
//! * [`status`]: the controller's status snapshot and status file, for `rpar cluster status`.
//!
//! Nothing here does I/O on sockets: the controller and the engine runtime own their sockets and
//! feed frames through these types.

pub mod config;
pub mod connection;
pub mod curve;
pub mod fdlimit;
pub mod flags;
pub mod ids;
pub mod logging;
pub mod malloc;
pub mod msg;
pub mod native;
pub mod profile;
pub mod signals;
pub mod status;
pub mod wire;

pub use msg::{Header, MessageBuilder};
pub use wire::{Frames, Signer, WireError, WireMessage};
