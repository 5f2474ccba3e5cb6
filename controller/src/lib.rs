//! rpar-controller: an ipyparallel 9.x compatible controller.
//!
//! * [`hub`]: the sans-I/O core — registration, heartbeats, hub queries, routing and records.
//! * [`server`]: sockets, connection files and the poll loop around the core.
//! * [`cli`] and [`settings`]: ipcontroller's command line and configuration, resolved;
//!   [`db`] opens the task database they name.
//! * [`alloc`]: the global allocator (mimalloc for small blocks, glibc for big ones).
//! * [`errors`]: error contents in ipyparallel's shape.
//! * [`status`]: the status page, `/api/status` and Prometheus `/metrics` (`--metrics`).
//!
//! Schedulers are in crate `rpar-sched`, the task database in crate `rpar-taskdb`.

pub mod alloc;
pub mod cli;
pub mod dask;
pub mod db;
pub mod errors;
pub mod hub;
pub mod server;
pub mod settings;
pub mod status;
