//! The launchers' submit, poll and cancel logic against a [`RecordingRunner`]: the commands
//! they run, in order, and what they make of the batch system's answers.

use super::batch::{BatchLauncher, BatchSettings};
use super::local::{LocalLauncher, MpiCommand};
use super::{Handle, LaunchError, LaunchSpec, Launcher, LauncherKind, Liveness, RecordingRunner};
use crate::jobscript::Role;
use std::time::Duration;

fn spec(dir: &std::path::Path) -> LaunchSpec {
    LaunchSpec {
        n: 4,
        profile_dir: dir.to_path_buf(),
        cluster_id: "c1".into(),
        controller_cmd: vec!["rpar-controller".into()],
        engine_cmd: vec!["rpar-engine".into()],
        env: vec![("IPP_CLUSTER_ID".into(), "c1".into())],
        work_dir: dir.to_path_buf(),
        set_id: "7".into(),
        ..Default::default()
    }
}

fn batch(kind: LauncherKind) -> BatchLauncher {
    BatchLauncher::new(BatchSettings::for_kind(kind).unwrap())
}

fn job_of(handles: &[Handle]) -> (LauncherKind, String) {
    match handles {
        [Handle::Job { system, job_id, .. }] => (*system, job_id.clone()),
        other => panic!("not one job: {other:?}"),
    }
}

#[test]
fn slurm_submits_the_written_script_and_keeps_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new();
    runner.reply("sbatch", 0, "Submitted batch job 4242\n");
    let handles = batch(LauncherKind::Slurm)
        .start(&spec(dir.path()), Role::Engine, &runner)
        .unwrap();
    assert_eq!(job_of(&handles), (LauncherKind::Slurm, "4242".into()));
    let calls = runner.calls();
    assert_eq!(calls.len(), 1);
    let script = dir.path().join("log/ipengine-c1-7.slurm");
    assert_eq!(calls[0].argv, ["sbatch", &script.display().to_string()]);
    assert_eq!(calls[0].env, spec(dir.path()).env);
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("rpar-engine"), "{text}");
}

#[test]
fn pbs_names_the_output_on_the_command_line_and_lsf_submits_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new();
    runner.reply("qsub", 0, "17.head\n");
    runner.reply("bsub", 0, "Job <5150> is submitted to queue <normal>.\n");
    let sp = spec(dir.path());
    let pbs = batch(LauncherKind::Pbs)
        .start(&sp, Role::Controller, &runner)
        .unwrap();
    assert_eq!(job_of(&pbs).1, "17");
    let lsf = batch(LauncherKind::Lsf)
        .start(&sp, Role::Engine, &runner)
        .unwrap();
    assert_eq!(job_of(&lsf).1, "5150");
    let calls = runner.calls();
    let out = dir.path().join("log/ipcontroller-c1.out");
    assert_eq!(
        calls[0].argv[..4],
        ["qsub", "-j", "oe", "-o"].map(String::from)
    );
    assert_eq!(calls[0].argv[4], out.display().to_string());
    assert_eq!(calls[0].stdin, None);
    assert_eq!(calls[1].argv, ["bsub"]);
    let script = std::fs::read_to_string(dir.path().join("log/ipengine-c1-7.lsf")).unwrap();
    assert_eq!(calls[1].stdin.as_deref(), Some(script.as_str()));
}

#[test]
fn a_refused_submission_names_the_command_and_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new();
    runner.reply("sbatch", 1, "");
    let err = batch(LauncherKind::Slurm)
        .start(&spec(dir.path()), Role::Engine, &runner)
        .unwrap_err();
    assert!(matches!(
        err,
        LaunchError::Submit {
            system: LauncherKind::Slurm,
            code: Some(1),
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("sbatch") && text.contains("ipengine-c1-7.slurm"),
        "{text}"
    );
}

#[test]
fn output_without_a_job_id_is_an_error_naming_the_regexp() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new();
    runner.reply("condor_submit", 0, "Submitting job(s).\n");
    let err = batch(LauncherKind::HtCondor)
        .start(&spec(dir.path()), Role::Engine, &runner)
        .unwrap_err();
    assert!(matches!(err, LaunchError::NoJobId { .. }), "{err}");
    assert!(err.to_string().contains("cluster (\\\\d+)"), "{err}");
}

#[test]
fn a_job_is_polled_with_its_status_command() {
    let dir = tempfile::tempdir().unwrap();
    let runner = RecordingRunner::new();
    runner.reply("sbatch", 0, "Submitted batch job 9\n");
    let handles = batch(LauncherKind::Slurm)
        .start(&spec(dir.path()), Role::Engine, &runner)
        .unwrap();
    runner.reply("squeue", 0, "PENDING\n");
    runner.reply("squeue", 0, "RUNNING\n");
    runner.reply("squeue", 0, "");
    let h = &handles[0];
    assert!(matches!(h.liveness(&runner), Liveness::Pending(w) if w == "PENDING"));
    assert_eq!(h.liveness(&runner), Liveness::Running);
    assert_eq!(h.liveness(&runner), Liveness::Finished);
    let polls = &runner.commands()[1..];
    assert!(polls
        .iter()
        .all(|c| c[..] == ["squeue", "-h", "-o", "%T", "-j", "9"].map(String::from)));
}

#[test]
fn sge_is_polled_without_a_job_id_and_found_in_the_table() {
    let runner = RecordingRunner::new();
    let table = "job-ID prior name user state submit/start at queue slots\n\
                 ----------------------------------------------------------\n\
                 12 0.55500 rpar-engin root r 11/24/2026 08:00:00 all.q 4\n";
    runner.reply("qstat", 0, table);
    let h = Handle::Job {
        system: LauncherKind::Sge,
        job_id: "12".into(),
        script: "s".into(),
        output: "o".into(),
        delete_command: vec!["qdel".into()],
        status_command: vec!["qstat".into(), "-u".into(), "*".into()],
    };
    assert_eq!(h.liveness(&runner), Liveness::Running);
    assert_eq!(runner.commands(), [["qstat", "-u", "*"].map(String::from)]);
}

#[test]
fn cancel_runs_the_delete_command_and_fails_only_while_the_job_lives() {
    let runner = RecordingRunner::new();
    let h = Handle::Job {
        system: LauncherKind::Slurm,
        job_id: "31".into(),
        script: "s".into(),
        output: "o".into(),
        delete_command: vec!["scancel".into()],
        status_command: vec!["squeue".into(), "-j".into()],
    };
    h.stop(&runner, Duration::ZERO).unwrap();
    assert_eq!(runner.commands(), [["scancel", "31"].map(String::from)]);
    // refused, but the job is gone anyway: fine
    runner.reply("scancel", 1, "");
    runner.reply("squeue", 0, "");
    h.stop(&runner, Duration::ZERO).unwrap();
    // refused while the job still runs: an error naming the job
    runner.reply("scancel", 1, "");
    runner.reply("squeue", 0, "RUNNING\n");
    let err = h.stop(&runner, Duration::ZERO).unwrap_err();
    assert!(
        matches!(err, LaunchError::Cancel { ref job_id, .. } if job_id == "31"),
        "{err}"
    );
}

#[test]
fn mpi_launcher_needs_mpiexec_and_local_falls_back_to_single_processes() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spec(dir.path());
    let none = RecordingRunner::new();
    let err = LocalLauncher::mpi(MpiCommand::default())
        .start(&sp, Role::Engine, &none)
        .unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { ref program, .. } if program == "mpiexec"));
    assert!(none.calls().is_empty(), "nothing started without mpiexec");
    let handles = LocalLauncher::local(MpiCommand::default(), 0.0)
        .start(&sp, Role::Engine, &none)
        .unwrap();
    assert_eq!(handles.len(), 4);
    assert!(none
        .calls()
        .iter()
        .all(|c| c.spawned && c.argv == ["rpar-engine"]));
    let with = RecordingRunner::new().with_program("mpiexec");
    let handles = LocalLauncher::local(MpiCommand::default(), 0.0)
        .start(&sp, Role::Engine, &with)
        .unwrap();
    assert_eq!(handles.len(), 1);
    assert_eq!(
        with.commands(),
        [["mpiexec", "-n", "4", "rpar-engine"].map(String::from)]
    );
}

#[test]
fn render_is_the_dry_run_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spec(dir.path());
    let launchers: Vec<Box<dyn Launcher>> = vec![
        Box::new(batch(LauncherKind::Slurm)),
        Box::new(LocalLauncher::mpi(MpiCommand::default())),
    ];
    for l in &launchers {
        let text = l.render(&sp, Role::Engine).unwrap();
        assert!(text.contains("rpar-engine"), "{}: {text}", l.kind());
    }
    assert!(!dir.path().join("log").exists(), "render writes nothing");
    let err = batch(LauncherKind::Batch)
        .render(&sp, Role::Engine)
        .unwrap_err();
    assert!(matches!(
        err,
        LaunchError::NeedsTemplate {
            kind: LauncherKind::Batch
        }
    ));
}
