//! `rpar cluster start`'s check of the engines' environment before batch jobs are submitted.
//!
//! A batch job whose engines' Python lacks ipyparallel fails only after its queue wait. So
//! before the controller starts and any job is submitted, the engine program runs
//! `rpar-engine --check` here, with the engine arguments and the environment the job inherits
//! (`--export=ALL`, `-V`): a broken environment fails `rpar cluster start` in seconds, with the
//! check's own words. Only `rpar-engine` is checked (another `engine_cmd`, e.g. Python's
//! `ipengine`, is left alone); an engine program that cannot be run here (it may exist on the
//! compute nodes only) is a warning. `RPAR_SKIP_ENGINE_CHECK=1` skips the check.

use std::path::Path;
use std::process::{Command, Stdio};

/// The variable that turns the check off.
pub const SKIP_VAR: &str = "RPAR_SKIP_ENGINE_CHECK";

/// Why `rpar cluster start` stops: the check's verdict and output.
#[derive(Debug, thiserror::Error)]
#[error(
    "the engines' environment is broken, so no batch job was submitted: `{command}` says:\n{output}\n\
     (fix the environment above; {SKIP_VAR}=1 submits anyway)"
)]
pub struct EngineCheckFailed {
    pub command: String,
    pub output: String,
}

/// What the check did when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Passed,
    /// Not checked, and why (for a warning or the log).
    Skipped(String),
}

/// Run `engine_cmd engine_args --check` with `env` added (see the module docs).
pub fn check_engines(
    engine_cmd: &[String],
    engine_args: &[String],
    env: &[(String, String)],
) -> Result<Checked, EngineCheckFailed> {
    if std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0") {
        return Ok(Checked::Skipped(format!("{SKIP_VAR} is set")));
    }
    let Some(program) = engine_cmd.first() else {
        return Ok(Checked::Skipped("no engine command".into()));
    };
    if Path::new(program).file_name().and_then(|n| n.to_str()) != Some("rpar-engine") {
        return Ok(Checked::Skipped(format!(
            "the engine program {program} is not rpar-engine"
        )));
    }
    let mut cmd = Command::new(program);
    cmd.args(&engine_cmd[1..])
        .args(engine_args)
        .arg("--check")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    let shown = crate::jobscript::shell_join(
        &engine_cmd
            .iter()
            .chain(engine_args)
            .map(String::as_str)
            .chain(["--check"])
            .collect::<Vec<_>>(),
    );
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            return Ok(Checked::Skipped(format!(
                "`{shown}` cannot be run here ({e}); the compute nodes may still have it"
            )))
        }
    };
    if out.status.success() {
        return Ok(Checked::Passed);
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(EngineCheckFailed {
        command: shown,
        output: output.trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stub(dir: &Path, body: &str) -> String {
        let p = dir.join("rpar-engine");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn verdicts() {
        let t = tempfile::tempdir().unwrap();
        let ok = stub(
            t.path(),
            r#"[ "$1 $2" = "--timeout=3 --check" ] && [ "$X" = y ]"#,
        );
        let env = [("X".to_string(), "y".to_string())];
        assert_eq!(
            check_engines(std::slice::from_ref(&ok), &["--timeout=3".into()], &env).unwrap(),
            Checked::Passed
        );
        let bad = stub(t.path(), "echo 'ERROR: no ipyparallel'; exit 1");
        let e = check_engines(&[bad], &[], &[]).unwrap_err();
        assert!(e.output.contains("ERROR: no ipyparallel"), "{e}");
        assert!(e.to_string().contains("no batch job was submitted"), "{e}");
        assert!(matches!(
            check_engines(&["ipengine".into()], &[], &[]).unwrap(),
            Checked::Skipped(_)
        ));
        let missing = t.path().join("nowhere/rpar-engine").display().to_string();
        assert!(matches!(
            check_engines(&[missing], &[], &[]).unwrap(),
            Checked::Skipped(_)
        ));
    }
}
