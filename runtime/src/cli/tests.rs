use super::*;

#[test]
fn flags_and_config_args() {
    let argv: Vec<String> = [
        "rpar-engine",
        "--profile=mpi",
        "--mpi",
        "--IPEngine.startup_command=a=1",
        "--timeout=7",
        "--file",
        "/x/e.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = parse(&argv).unwrap();
    assert_eq!(o.args.p.profile.as_deref(), Some("mpi"));
    assert_eq!(o.args.mpi.as_deref(), Some("mpi4py"));
    assert_eq!(o.args.timeout, Some(7.0));
    assert_eq!(o.args.file, Some(PathBuf::from("/x/e.json")));
    assert_eq!(
        o.config_args,
        vec!["--IPEngine.startup_command=a=1".to_string()]
    );
    assert!(o.nanny);
}

#[test]
fn underscore_flag_spellings() {
    let argv: Vec<String> = [
        "rpar-engine",
        "--profile_dir=/p/profile_ssh",
        "--cluster_id",
        "my_cluster",
        "--log_level=DEBUG",
        "--wait_for_url_file=3",
        "--IPEngine.startup_command=a_b=1",
        "--no_nanny",
        "--python_venv",
        "/v/my_env",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = parse(&argv).unwrap();
    assert_eq!(o.args.p.profile_dir, Some(PathBuf::from("/p/profile_ssh")));
    assert_eq!(o.args.p.cluster_id.as_deref(), Some("my_cluster"));
    assert_eq!(o.args.log_level.as_deref(), Some("DEBUG"));
    assert_eq!(o.args.wait_for_url_file, Some(3.0));
    assert_eq!(o.args.python_venv, Some(PathBuf::from("/v/my_env")));
    assert!(!o.nanny);
    assert_eq!(
        o.config_args,
        vec!["--IPEngine.startup_command=a_b=1".to_string()]
    );
    assert_eq!(normalize_flag("--a_b=c_d".into()), "--a-b=c_d");
    assert_eq!(normalize_flag("x_y".into()), "x_y");
    assert_eq!(normalize_flag("--IPEngine.x_y".into()), "--IPEngine.x_y");
}

#[test]
fn settings_from_profile_json_and_old_names() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("ipengine_config.json"),
        r#"{"IPEngineApp": {"startup_command": "x = 5", "work_dir": "/tmp"},
            "IPEngine": {"startup_script": "/s.py"}}"#,
    )
    .unwrap();
    let s = load_settings(t.path(), &["--IPEngine.timeout=9".to_string()]).unwrap();
    assert_eq!(s.startup_command.as_deref(), Some("x = 5"));
    assert_eq!(s.startup_script.as_deref(), Some("/s.py"));
    assert_eq!(s.work_dir.as_deref(), Some("/tmp"));
    assert_eq!(s.timeout, Some(9.0));
    // IPython's classes: accepted, handed to the shell
    let s = load_settings(
        t.path(),
        &[
            "--InteractiveShell.colors=nocolor".to_string(),
            "--Session.debug=True".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(
        s.ipython_config,
        serde_json::json!({"InteractiveShell": {"colors": "nocolor"}})
    );
    assert_eq!(s.notes.len(), 2);
    // rpar's own classes stay strict
    let e = load_settings(t.path(), &["--IPEngine.startup_scrip=x".to_string()]).unwrap_err();
    assert!(e.to_string().contains("startup_script"), "{e}");
}

#[test]
fn log_levels() {
    assert_eq!(level("10"), tracing::Level::DEBUG);
    assert_eq!(level("warning"), tracing::Level::WARN);
    assert_eq!(level("INFO"), tracing::Level::INFO);
}
