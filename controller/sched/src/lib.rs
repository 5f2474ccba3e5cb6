//! Sans-I/O schedulers of rpar-controller: the load-balanced task scheduler and the broadcast
//! scheduler. (API summary for the hub: see below.)
//!
//! # API summary
//!
//! No sockets and no clocks: every call takes `now: Instant` and returns the actions to perform,
//! in order. The hub has verified every message's signature before handing it over; messages
//! the schedulers make themselves are built with the [`MessageBuilder`](rpar_core::MessageBuilder)
//! and [`Signer`](rpar_core::Signer) given at construction.
//!
//! ## [`TaskScheduler`] (client-facing ROUTER `task_in`, engine-facing ROUTER `task_out`)
//!
//! * `TaskScheduler::new(TaskConfig { scheme, hwm, engine_death_grace, seed }, builder, signer)`
//! * `add_engine(uuid, id, now)` once the engine is up (after its first heartbeat);
//!   `remove_engine(uuid, now)` when it unregisters or dies.
//! * `submit(msg, now)`: a request as received on `task_in`, `msg.idents == [client_id]`.
//!   `submit_shared(msg, buffers, now)`: the same with its buffers taken out and shared with
//!   the caller (the hub's record); with `share_buffers(true)` dispatches lend them
//!   (`ToEngineShared`) instead of copying (the broadcast scheduler has the same switch).
//! * `on_engine_reply(msg, now)`: as received on `task_out`, `msg.idents == [engine_uuid, client_id]`.
//! * `tick(now)` whenever `now >= next_deadline()`.
//! * queue_status: `unassigned()`, `engine_loads()`, `outstanding_on(uuid)`, `outstanding_ids(uuid)`.
//!
//! Actions ([`TaskAction`]):
//! * `ToEngine(frames)`: send on `task_out` (`[engine_uuid, client_id, DELIM, request…]`, request
//!   bytes unchanged).
//! * `ToEngineShared(frames, buffers)`: the same message as `frames` followed by `buffers`.
//! * `Assigned { msg_id, engine_uuid }`: the `tracktask` bookkeeping (again on each resubmission).
//! * `Finished { msg_id, engine_uuid, reply }`: the final reply (`outtask`): record it, then send
//!   `reply.into_frames()` on `task_in`. Engine replies and the synthesized `EngineError` are
//!   routed `[client_id, engine_uuid]`; the scheduler's own errors (`InvalidDependency`,
//!   `ImpossibleDependency`, `TaskTimeout`, malformed metadata) `[client_id]`, with metadata `{}`.
//!   Failures that are retried, and replies with `dependencies_met: false`, never show up.
//!
//! ## [`BroadcastScheduler`] (one flat scheduler; client ROUTER + engine-facing ROUTER)
//!
//! * `BroadcastScheduler::new(BroadcastConfig { engine_death_grace }, builder, signer)`
//! * `add_engine(uuid, id, now)`, `remove_engine(uuid, now)`, `tick(now)`/`next_deadline()`.
//! * `submit(msg, now)` (`msg.idents == [client_id]`), `on_engine_reply(msg, now)`
//!   (`msg.idents == [engine_uuid, client_id]`).
//! * Actions [`BroadcastAction`]: `ToEngine(frames)` on the engine-facing ROUTER,
//!   `ToClient(frames)` on the client-facing ROUTER (`[client_id, DELIM, …]`, no engine frame).
//!   Broadcasts are not tracked by the hub (as in ipyparallel), so there are no bookkeeping events.
//!
//! See [`broadcast`] for derived msg_ids, metadata, coalescing and engine death.

pub mod broadcast;
pub mod deps;
pub mod errors;
pub mod schemes;
pub mod task;

pub use broadcast::{BroadcastAction, BroadcastConfig, BroadcastScheduler};
pub use errors::{MetadataError, SchedFailure};
pub use schemes::{Scheme, UnknownScheme};
pub use task::{EngineLoad, ReplyMetadata, TaskAction, TaskConfig, TaskMetadata, TaskScheduler};
