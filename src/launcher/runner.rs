//! Running external commands (submit, status, cancel, scp, ssh, local processes): the [`Runner`]
//! trait, the real [`SystemRunner`], and `which`. Tests substitute a recording runner.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs external commands. The real one executes; tests substitute a recorder.
pub trait Runner {
    /// Run to completion.
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        env: &[(String, String)],
    ) -> io::Result<CmdOutput>;
    /// Start a long-running process in its own session, stdout and stderr to `output`, stdin
    /// from /dev/null. Returns its pid.
    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        output: &Path,
    ) -> io::Result<u32>;
    /// Is `program` found (a path, or on PATH)?
    fn which(&self, program: &str) -> Option<PathBuf> {
        which(program)
    }
}

/// Executes commands for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        env: &[(String, String)],
    ) -> io::Result<CmdOutput> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            w.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        output: &Path,
    ) -> io::Result<u32> {
        use std::os::unix::process::CommandExt;
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        // Reap it in the background so a finished child does not linger as a zombie while we run.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }
}

/// Find a program on PATH (or check a path).
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return ok(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| ok(p))
}
