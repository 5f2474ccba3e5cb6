//! A [`Runner`] that runs nothing: it records every command and answers with scripted outputs,
//! so the launchers' submit, poll and cancel logic is tested without a batch system.

use super::{CmdOutput, Runner};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub argv: Vec<String>,
    /// What was written to its stdin (`run` only).
    pub stdin: Option<String>,
    pub env: Vec<(String, String)>,
    /// Started with `spawn` (a long-running process) rather than run to completion.
    pub spawned: bool,
}

/// Records commands; answers `run` with the outputs scripted per program, in order (a
/// command with nothing scripted succeeds with empty output), `spawn` with made-up pids, and
/// `which` with the programs declared found.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<Call>>,
    replies: Mutex<Vec<(String, VecDeque<CmdOutput>)>>,
    found: Vec<String>,
}

impl RecordingRunner {
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// `which(program)` finds it (at `/usr/bin/<program>`).
    pub fn with_program(mut self, program: &str) -> RecordingRunner {
        self.found.push(program.to_string());
        self
    }

    /// The next `run` of `program` (argv\[0\], or its file name) exits with `code` and prints
    /// `stdout`.
    pub fn reply(&self, program: &str, code: i32, stdout: &str) -> &RecordingRunner {
        let out = CmdOutput {
            code: Some(code),
            stdout: stdout.to_string(),
            stderr: if code == 0 {
                String::new()
            } else {
                format!("{program}: error {code}")
            },
        };
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        match replies.iter_mut().find(|(p, _)| p == program) {
            Some((_, q)) => q.push_back(out),
            None => replies.push((program.to_string(), VecDeque::from([out]))),
        }
        self
    }

    /// Everything run or spawned so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The command lines run or spawned so far, in order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.calls().into_iter().map(|c| c.argv).collect()
    }

    fn record(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

/// Whether `argv0` is `program`, by full text or file name.
fn is_program(argv0: &str, program: &str) -> bool {
    argv0 == program || Path::new(argv0).file_name().is_some_and(|n| n == program)
}

impl Runner for RecordingRunner {
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        env: &[(String, String)],
    ) -> io::Result<CmdOutput> {
        self.record(Call {
            argv: argv.to_vec(),
            stdin: stdin.map(str::to_string),
            env: env.to_vec(),
            spawned: false,
        });
        let argv0 = argv.first().map_or("", String::as_str);
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        let scripted = replies
            .iter_mut()
            .find(|(p, q)| is_program(argv0, p) && !q.is_empty())
            .and_then(|(_, q)| q.pop_front());
        Ok(scripted.unwrap_or(CmdOutput {
            code: Some(0),
            ..Default::default()
        }))
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        _cwd: &Path,
        _output: &Path,
    ) -> io::Result<u32> {
        let n = u32::try_from(self.calls().len()).unwrap_or(u32::MAX);
        self.record(Call {
            argv: argv.to_vec(),
            stdin: None,
            env: env.to_vec(),
            spawned: true,
        });
        // far above any real pid (pid_max is at most 2^22)
        Ok((1 << 30) | n)
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        self.found
            .iter()
            .any(|p| is_program(program, p))
            .then(|| PathBuf::from("/usr/bin").join(program))
    }
}
