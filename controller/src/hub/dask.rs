//! `become_dask_request` / `stop_distributed_request` (reference §6): the hub's side of
//! `Client.become_dask()`. ipyparallel runs a `distributed.Scheduler` inside its hub; rpar's hub
//! asks its I/O shell for one ([`DaskAction::Start`]: a scheduler process in the controller's
//! Python) and answers every waiting client once the shell reports the scheduler's address (or
//! why it could not start) through [`Hub::dask_started`]. The scheduler is stopped on
//! `stop_distributed_request` ([`DaskAction::Stop`]) and by the shell when the controller exits.

use super::{Effect, Hub};
use rpar_core::wire::WireMessage;
use serde_json::{json, Value};
use tracing::info;

/// What the I/O shell is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum DaskAction {
    /// Start a scheduler with these `distributed.Scheduler` keyword arguments.
    Start { scheduler_args: Value },
    /// Stop the scheduler.
    Stop,
}

/// A running scheduler, as `become_dask_reply` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaskInfo {
    pub address: String,
    pub ip: String,
    pub port: u16,
}

/// The hub's dask state.
#[derive(Debug, Default)]
pub(super) struct Dask {
    running: Option<DaskInfo>,
    /// Requests waiting for the scheduler that is starting (empty: none starting).
    waiting: Vec<WireMessage>,
    actions: Vec<DaskAction>,
    /// The engine-facing interface, the scheduler's default host.
    host: Option<String>,
}

impl Dask {
    pub(super) fn new(host: Option<String>) -> Dask {
        Dask {
            host,
            ..Default::default()
        }
    }
}

impl Hub {
    pub(super) fn become_dask_request(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        out: &mut Vec<Effect>,
    ) {
        if let Some(info) = self.dask.running.clone() {
            self.reply(msg, "become_dask_reply", ok_content(&info), vec![], out);
            return;
        }
        let start = self.dask.waiting.is_empty();
        self.dask.waiting.push(msg.clone());
        if start {
            let mut args = match content.get("scheduler_args") {
                Some(Value::Object(m)) => m.clone(),
                _ => serde_json::Map::new(),
            };
            // engines reach the scheduler where they reach the controller
            if !args.contains_key("host") && !args.contains_key("interface") {
                if let Some(h) = &self.dask.host {
                    args.insert("host".into(), json!(h));
                }
            }
            info!(?args, "starting a dask.distributed scheduler");
            self.dask.actions.push(DaskAction::Start {
                scheduler_args: Value::Object(args),
            });
        }
    }

    pub(super) fn stop_distributed_request(&mut self, msg: &WireMessage, out: &mut Vec<Effect>) {
        if self.dask.running.take().is_some() || !self.dask.waiting.is_empty() {
            info!("stopping the dask.distributed scheduler");
            self.dask.actions.push(DaskAction::Stop);
            self.fail_dask_waiters("the scheduler was stopped before it started", out);
        } else {
            info!("no dask.distributed scheduler running");
        }
        self.reply(
            msg,
            "stop_distributed_reply",
            json!({"status": "ok"}),
            vec![],
            out,
        );
    }

    /// What the I/O shell is to do about the scheduler, in order.
    pub fn take_dask_actions(&mut self) -> Vec<DaskAction> {
        std::mem::take(&mut self.dask.actions)
    }

    /// Is a scheduler starting (the shell should look for its answer soon)?
    pub fn dask_starting(&self) -> bool {
        !self.dask.waiting.is_empty()
    }

    /// The shell's report on a [`DaskAction::Start`]: the scheduler, or why it did not start
    /// (exception name and message). Answers the waiting clients.
    pub fn dask_started(&mut self, result: Result<DaskInfo, (String, String)>) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.dask.waiting.is_empty() {
            // stopped meanwhile; the shell stops what it started on the Stop action
            return out;
        }
        match result {
            Ok(info) => {
                info!(address = %info.address, "dask.distributed scheduler running");
                for m in std::mem::take(&mut self.dask.waiting) {
                    self.reply(&m, "become_dask_reply", ok_content(&info), vec![], &mut out);
                }
                self.dask.running = Some(info);
            }
            Err((ename, evalue)) => {
                for m in std::mem::take(&mut self.dask.waiting) {
                    self.reply_error(&m, "become_dask_reply", &ename, &evalue, &mut out);
                }
            }
        }
        out
    }

    fn fail_dask_waiters(&mut self, why: &str, out: &mut Vec<Effect>) {
        for m in std::mem::take(&mut self.dask.waiting) {
            self.reply_error(&m, "become_dask_reply", "RuntimeError", why, out);
        }
    }
}

fn ok_content(info: &DaskInfo) -> Value {
    json!({"status": "ok", "ip": info.ip, "address": info.address, "port": info.port})
}
