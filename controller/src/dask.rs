//! The dask scheduler process behind `Client.become_dask()` (the hub's [`DaskAction`]s).
//!
//! `distributed.Scheduler` is Python: it runs in a child process of the controller, in the
//! Python the controller runs its helpers with ([`rpar_core::config::python_candidates`]:
//! `$RPAR_PYTHON`, else `python3`). The child prints one JSON line (the scheduler's address, or
//! the error: `distributed` not installed, bad `scheduler_args`) and runs until its stdin closes,
//! which happens on [`DaskAction::Stop`], when the controller exits, or when it dies.

use crate::hub::{DaskAction, DaskInfo};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::time::{Duration, Instant};
use tracing::{info, warn};

const SCHEDULER: &str = r#"
import asyncio, json, sys

def say(d):
    sys.stdout.write(json.dumps(d) + "\n")
    sys.stdout.flush()

try:
    from distributed import Scheduler
except ImportError as e:
    say({"ename": "ImportError", "evalue": (
        f"become_dask needs the Python package 'distributed' in the Python rpar-controller "
        f"starts the dask scheduler with ({sys.executable}): {e}. Fix: pip install distributed "
        f"into that Python, or set RPAR_PYTHON to a Python that has it.")})
    sys.exit(1)

async def main():
    try:
        s = Scheduler(**json.loads(sys.argv[1]))
        await s.start()
    except Exception as e:
        say({"ename": type(e).__name__, "evalue": f"the dask scheduler did not start: {e}"})
        return
    say({"address": s.address, "ip": s.ip, "port": s.port})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await s.close()

asyncio.run(main())
"#;

type Report = Result<DaskInfo, (String, String)>;

/// The scheduler process, if one runs.
#[derive(Default)]
pub struct DaskShell {
    child: Option<Child>,
    report: Option<Receiver<Report>>,
}

impl DaskShell {
    pub fn act(&mut self, a: DaskAction) {
        match a {
            DaskAction::Start { scheduler_args } => {
                self.stop();
                let (tx, rx) = channel();
                match spawn(&scheduler_args.to_string()) {
                    Ok(mut child) => {
                        if let Some(out) = child.stdout.take() {
                            std::thread::spawn(move || {
                                let _ = tx.send(read_report(out));
                            });
                        }
                        self.child = Some(child);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(("RuntimeError".into(), e)));
                    }
                }
                self.report = Some(rx);
            }
            DaskAction::Stop => self.stop(),
        }
    }

    /// The start's outcome, once known.
    pub fn poll(&mut self) -> Option<Report> {
        let rx = self.report.as_ref()?;
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err((
                "RuntimeError".into(),
                "the dask scheduler process ended without saying why".into(),
            )),
        };
        self.report = None;
        if r.is_err() {
            self.stop();
        }
        Some(r)
    }

    /// Is a start under way (poll soon)?
    pub fn starting(&self) -> bool {
        self.report.is_some()
    }

    /// Close the scheduler's stdin (it closes itself) and reap it off this thread, killing it
    /// if it takes longer than a few seconds.
    fn stop(&mut self) {
        self.report = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        info!(pid = child.id(), "dask scheduler stopping");
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            warn!("dask scheduler did not stop in 5 s: killed");
            let _ = child.kill();
            let _ = child.wait();
        });
    }
}

impl Drop for DaskShell {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            // the controller is exiting: give the scheduler a moment, then make sure it is gone
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(args_json: &str) -> Result<Child, String> {
    let mut last = String::new();
    for py in rpar_core::config::python_candidates() {
        match Command::new(&py)
            .arg("-c")
            .arg(SCHEDULER)
            .arg(args_json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => {
                info!(python = %py, pid = c.id(), "dask scheduler process started");
                return Ok(c);
            }
            Err(e) => last = format!("{py}: {e}"),
        }
    }
    Err(format!(
        "no Python to run the dask scheduler with ({last}); fix: install python3 with the \
         'distributed' package, or set RPAR_PYTHON"
    ))
}

fn read_report(out: std::process::ChildStdout) -> Report {
    let mut line = String::new();
    if let Err(e) = BufReader::new(out).read_line(&mut line) {
        return Err(("RuntimeError".into(), format!("dask scheduler: {e}")));
    }
    parse_report(&line)
}

/// The scheduler's JSON line.
fn parse_report(line: &str) -> Report {
    let bad = || {
        (
            "RuntimeError".to_string(),
            format!("the dask scheduler process ended without its address: {line:?}"),
        )
    };
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|_| bad())?;
    if let Some(ename) = v.get("ename").and_then(|e| e.as_str()) {
        let evalue = v.get("evalue").and_then(|e| e.as_str()).unwrap_or_default();
        return Err((ename.to_string(), evalue.to_string()));
    }
    let address = v.get("address").and_then(|a| a.as_str()).ok_or_else(bad)?;
    let port = v
        .get("port")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(bad)?;
    Ok(DaskInfo {
        address: address.to_string(),
        ip: v
            .get("ip")
            .and_then(|a| a.as_str())
            .unwrap_or_default()
            .to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports() {
        let ok =
            parse_report(r#"{"address": "tcp://127.0.0.1:4000", "ip": "127.0.0.1", "port": 4000}"#);
        assert_eq!(ok.unwrap().port, 4000);
        let e =
            parse_report(r#"{"ename": "ImportError", "evalue": "no distributed"}"#).unwrap_err();
        assert_eq!(e.0, "ImportError");
        assert!(parse_report("").is_err());
        assert!(parse_report(r#"{"address": "x", "port": 70000}"#).is_err());
    }
}
