//! Tests of config loading; one test per config example of the seed manual.

use super::*;
use serde_json::json;
use std::fs;

fn profile(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        fs::write(d.path().join(name), text).expect("write");
    }
    d
}

fn load(app: &str, file: &str, text: &str) -> Result<Config, ConfigError> {
    let d = profile(&[(file, text)]);
    Config::load(d.path(), app, &[])
}

fn val(cfg: &Config, class: &str, trait_: &str) -> Value {
    cfg.get(class, trait_)
        .map(|s| s.value.clone())
        .unwrap_or(Value::Null)
}

#[test]
fn seed_hubfactory_ip_star() {
    let cfg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "c = get_config()\nc.HubFactory.ip = '*'\n",
    )
    .unwrap();
    assert_eq!(cfg.str("IPController", "ip").unwrap().as_deref(), Some("*"));
    let s = cfg.get("HubFactory", "ip").unwrap();
    assert_eq!(s.written, "HubFactory.ip");
    match &s.source {
        Source::File { path, line } => {
            assert!(path.ends_with("ipcontroller_config.py"));
            assert_eq!(*line, 2);
        }
        other => panic!("source {other:?}"),
    }
}

#[test]
fn seed_location_ssh_server_and_socket_expression() {
    let text = "\
# allow connections on all interfaces from engines
c.HubFactory.ip = '*'
c.HubFactory.location = '10.0.1.5'
# or to get an automatic value, try this:
import socket
ex_ip = socket.gethostbyname_ex(socket.gethostname())[-1][0]
c.HubFactory.location = ex_ip
c.HubFactory.ssh_server = 'login.mycluster.net'
";
    let cfg = load("ipcontroller", "ipcontroller_config.py", text).unwrap();
    let loc = cfg.str("IPController", "location").unwrap().unwrap();
    // the later assignment (line 7) wins, and it is an address of this host
    assert_ne!(loc, "10.0.1.5");
    assert!(loc.parse::<std::net::IpAddr>().is_ok(), "{loc}");
    assert!(matches!(
        cfg.get("IPController", "location").unwrap().source,
        Source::File { line: 7, .. }
    ));
    assert_eq!(
        val(&cfg, "IPController", "ssh_server"),
        json!("login.mycluster.net")
    );
}

#[test]
fn seed_db_class_and_db_settings() {
    let text = "\
c.HubFactory.db_class = 'IPython.parallel.controller.dictdb.DictDB'
c.HubFactory.db_class = 'IPython.parallel.controller.mongodb.MongoDB'
c.HubFactory.db_class = 'IPython.parallel.controller.sqlitedb.SQLiteDB'
c.MongoDB.database = 'tasks'
c.SQLiteDB.table = 'tasks'
c.MongoDB.connection_args = []
c.MongoDB.connection_kwargs = {}
";
    let cfg = load("ipcontroller", "ipcontroller_config.py", text).unwrap();
    assert_eq!(
        val(&cfg, "IPController", "db_class"),
        json!("IPython.parallel.controller.sqlitedb.SQLiteDB")
    );
    assert_eq!(val(&cfg, "MongoDB", "database"), json!("tasks"));
    assert_eq!(val(&cfg, "SQLiteDB", "table"), json!("tasks"));
    assert_eq!(val(&cfg, "MongoDB", "connection_args"), json!([]));
    assert_eq!(val(&cfg, "MongoDB", "connection_kwargs"), json!({}));
}

#[test]
fn seed_mpi_use_is_accepted_and_ignored() {
    let cfg = load("ipengine", "ipengine_config.py", "c.MPI.use = 'mpi4py'\n").unwrap();
    assert_eq!(cfg.warnings().len(), 1);
    assert!(
        cfg.warnings()[0].contains("ipengine_config.py:1"),
        "{:?}",
        cfg.warnings()
    );
    assert!(cfg.warnings()[0].contains("MPI.use"));
}

#[test]
fn seed_engine_startup_and_work_dir() {
    let text = "\
c.IPEngineApp.startup_script = u'/path/to/my/startup.py'
c.IPEngineApp.startup_command = 'import numpy, scipy, mpi4py'
c.IPEngineApp.work_dir = u'/path/to/scratch/'
";
    let cfg = load("ipengine", "ipengine_config.py", text).unwrap();
    assert_eq!(
        cfg.str("IPEngine", "startup_script").unwrap().as_deref(),
        Some("/path/to/my/startup.py")
    );
    assert_eq!(
        cfg.str("IPEngine", "startup_command").unwrap().as_deref(),
        Some("import numpy, scipy, mpi4py")
    );
    assert_eq!(
        cfg.str("IPEngine", "work_dir").unwrap().as_deref(),
        Some("/path/to/scratch/")
    );
}

#[test]
fn seed_mpiexec_launchers() {
    let text = "\
c.IPClusterEngines.engine_launcher = 'IPython.parallel.apps.launcher.MPIExecEngineSetLauncher'
c.IPClusterStart.controller_launcher = 'IPython.parallel.apps.launcher.MPIExecControllerLauncher'
c.MPIExecLauncher.mpi_args = ['--bind-to', 'none']
";
    let cfg = load("ipcluster", "ipcluster_config.py", text).unwrap();
    assert_eq!(
        cfg.str("Cluster", "engine_launcher_class")
            .unwrap()
            .as_deref(),
        Some("IPython.parallel.apps.launcher.MPIExecEngineSetLauncher")
    );
    assert_eq!(
        cfg.str("Cluster", "controller_launcher_class")
            .unwrap()
            .as_deref(),
        Some("IPython.parallel.apps.launcher.MPIExecControllerLauncher")
    );
    // set on the old base class, read through the new engine-set class
    assert_eq!(
        cfg.str_list("MPIEngineSetLauncher", "mpi_args").unwrap(),
        Some(vec!["--bind-to".to_string(), "none".to_string()])
    );
}

#[test]
fn seed_pbs_launchers_with_line_continuations_templates_and_queue() {
    let text = "\
c.IPClusterStart.controller_launcher = \\
    'IPython.parallel.apps.launcher.PBSControllerLauncher'
c.IPClusterEngines.engine_launcher = \\
    'IPython.parallel.apps.launcher.PBSEngineSetLauncher'
c.PBSEngineSetLauncher.batch_template_file = \"pbs.engine.template\"

c.PBSControllerLauncher.batch_template_file = \"pbs.controller.template\"
c.PBSLauncher.queue = 'veryshort.q'
c.IPClusterEngines.n = 64
";
    let cfg = load("ipcluster", "ipcluster_config.py", text).unwrap();
    assert_eq!(
        cfg.str("Cluster", "engine_launcher_class")
            .unwrap()
            .as_deref(),
        Some("IPython.parallel.apps.launcher.PBSEngineSetLauncher")
    );
    assert!(matches!(
        cfg.get("Cluster", "engine_launcher_class").unwrap().source,
        Source::File { line: 3, .. }
    ));
    assert_eq!(
        cfg.str("PBSEngineSetLauncher", "batch_template_file")
            .unwrap()
            .as_deref(),
        Some("pbs.engine.template")
    );
    assert_eq!(
        cfg.str("PBSControllerLauncher", "batch_template_file")
            .unwrap()
            .as_deref(),
        Some("pbs.controller.template")
    );
    // PBSLauncher.queue applies to both PBS launchers (and SGE, which derives from PBS)
    assert_eq!(
        cfg.str("PBSEngineSetLauncher", "queue").unwrap().as_deref(),
        Some("veryshort.q")
    );
    assert_eq!(
        cfg.str("PBSControllerLauncher", "queue")
            .unwrap()
            .as_deref(),
        Some("veryshort.q")
    );
    assert_eq!(cfg.str("SlurmEngineSetLauncher", "queue").unwrap(), None);
    assert_eq!(cfg.i64("Cluster", "n").unwrap(), Some(64));
}

#[test]
fn seed_inline_batch_template_string() {
    let text = "c.PBSEngineSetLauncher.batch_template = '''#PBS -N ipython
#PBS -l nodes={n/4}:ppn=4
#PBS -q {queue}
mpiexec -n {n} ipengine --profile_dir={profile_dir}
'''
";
    let cfg = load("ipcluster", "ipcluster_config.py", text).unwrap();
    let t = cfg
        .str("PBSEngineSetLauncher", "batch_template")
        .unwrap()
        .unwrap();
    assert!(t.contains("nodes={n/4}:ppn=4\n#PBS -q {queue}"), "{t}");
}

#[test]
fn seed_ssh_launchers() {
    let text = "\
import os
c.IPClusterEngines.engine_launcher = \\
    'IPython.parallel.apps.launcher.SSHEngineSetLauncher'
c.IPClusterStart.controller_launcher = \\
    'IPython.parallel.apps.launcher.SSHControllerLauncher'
c.SSHControllerLauncher.hostname = 'controller.example.com'
c.SSHControllerLauncher.user = os.environ.get('USER','username')
c.SSHControllerLauncher.program_args = ['--reuse', '--ip=*', '--profile_dir=/path/to/cd']
c.SSHEngineSetLauncher.engines = { 'host1.example.com' : 2,
            'host2.example.com' : 5,
            'host3.example.com' : (1, ['--profile_dir=/home/different/location']),
            'host4.example.com' : 8 }
c.SSHEngineSetLauncher.engine_args = ['--profile_dir=/path/to/profile_ssh']
";
    let cfg = load("ipcluster", "ipcluster_config.py", text).unwrap();
    let user = std::env::var("USER").unwrap_or_else(|_| "username".into());
    assert_eq!(
        cfg.str("SSHControllerLauncher", "user").unwrap(),
        Some(user)
    );
    assert_eq!(
        cfg.str("SSHControllerLauncher", "hostname")
            .unwrap()
            .as_deref(),
        Some("controller.example.com")
    );
    assert_eq!(
        val(&cfg, "SSHEngineSetLauncher", "engines"),
        json!({"host1.example.com": 2, "host2.example.com": 5,
               "host3.example.com": [1, ["--profile_dir=/home/different/location"]],
               "host4.example.com": 8})
    );
    assert!(matches!(
        cfg.get("SSHEngineSetLauncher", "engines").unwrap().source,
        Source::File { line: 9, .. }
    ));
    assert_eq!(
        cfg.str_list("SSHEngineSetLauncher", "engine_args").unwrap(),
        Some(vec!["--profile_dir=/path/to/profile_ssh".to_string()])
    );
}

#[test]
fn nine_x_names() {
    let text = "c.Cluster.engine_launcher_class = 'mpi'\nc.Cluster.n = 4\nc.EngineLauncher.engine_cmd = ['/opt/rpar-engine']\n";
    let cfg = load("ipcluster", "ipcluster_config.py", text).unwrap();
    assert_eq!(
        cfg.str("IPClusterEngines", "engine_launcher")
            .unwrap()
            .as_deref(),
        Some("mpi")
    );
    assert_eq!(
        cfg.str_list("MPIEngineSetLauncher", "engine_cmd").unwrap(),
        Some(vec!["/opt/rpar-engine".to_string()])
    );
}

#[test]
fn json_file_and_precedence() {
    let d = profile(&[
        ("ipcontroller_config.py", "c.IPController.ip = '10.0.0.1'\nc.HeartMonitor.period = 1000\nc.IPController.location = 'py'\n"),
        ("ipcontroller_config.json", "{\n  \"IPController\": {\n    \"ip\": \"10.0.0.2\",\n    \"location\": \"json\"\n  }\n}\n"),
    ]);
    let cli = vec![
        "--HubFactory.ip=*".to_string(),
        "--TaskScheduler.hwm=0".to_string(),
    ];
    let cfg = Config::load(d.path(), "ipcontroller", &cli).unwrap();
    assert_eq!(cfg.str("IPController", "ip").unwrap().as_deref(), Some("*"));
    assert!(matches!(
        cfg.get("IPController", "ip").unwrap().source,
        Source::CommandLine { .. }
    ));
    assert_eq!(
        cfg.str("IPController", "location").unwrap().as_deref(),
        Some("json")
    );
    match &cfg.get("IPController", "location").unwrap().source {
        Source::File { path, line } => {
            assert!(path.ends_with("ipcontroller_config.json"));
            assert_eq!(*line, 4);
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(cfg.i64("HeartMonitor", "period").unwrap(), Some(1000));
    assert_eq!(cfg.i64("TaskScheduler", "hwm").unwrap(), Some(0));
    assert_eq!(cfg.files().len(), 2);
}

#[test]
fn specific_class_beats_parent_across_levels() {
    let d = profile(&[(
        "ipcluster_config.py",
        "c.SlurmEngineSetLauncher.queue = 'debug'\n",
    )]);
    let cfg = Config::load(
        d.path(),
        "ipcluster",
        &["--BatchSystemLauncher.queue=batch".to_string()],
    )
    .unwrap();
    assert_eq!(
        cfg.str("SlurmEngineSetLauncher", "queue")
            .unwrap()
            .as_deref(),
        Some("debug")
    );
    assert_eq!(
        cfg.str("SlurmControllerLauncher", "queue")
            .unwrap()
            .as_deref(),
        Some("batch")
    );
}

#[test]
fn cli_values() {
    let d = tempfile::tempdir().unwrap();
    let cli: Vec<String> = [
        "--Cluster.n=8",
        "--Cluster.delay=0.5",
        "--Cluster.daemonize=True",
        "--Cluster.controller_ip=*",
        "--Cluster.controller_args=['--ping=100', '--hwm=2']",
        "--EngineLauncher.engine_cmd=rpar-engine",
        "--SSHEngineSetLauncher.engines={'h1': 2, 'h2': (1, ['--x'])}",
        "--Cluster.controller_location='10.0.1.5'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cfg = Config::load(d.path(), "ipcluster", &cli).unwrap();
    assert_eq!(cfg.i64("Cluster", "n").unwrap(), Some(8));
    assert_eq!(cfg.f64("Cluster", "delay").unwrap(), Some(0.5));
    assert_eq!(cfg.bool("Cluster", "daemonize").unwrap(), Some(true));
    assert_eq!(
        cfg.str("Cluster", "controller_ip").unwrap().as_deref(),
        Some("*")
    );
    assert_eq!(
        cfg.str("Cluster", "controller_location")
            .unwrap()
            .as_deref(),
        Some("10.0.1.5")
    );
    assert_eq!(
        cfg.str_list("Cluster", "controller_args").unwrap(),
        Some(vec!["--ping=100".to_string(), "--hwm=2".to_string()])
    );
    assert_eq!(
        cfg.str_list("EngineLauncher", "engine_cmd").unwrap(),
        Some(vec!["rpar-engine".to_string()])
    );
    assert_eq!(
        val(&cfg, "SSHEngineSetLauncher", "engines"),
        json!({"h1": 2, "h2": [1, ["--x"]]})
    );
    cfg.set_cli("Cluster", "n", json!(3)).unwrap();
    assert_eq!(cfg.i64("Cluster", "n").unwrap(), Some(3));
}

#[test]
fn split_cli_args() {
    let (cfg, rest) = split_cli([
        "--n=4",
        "--IPController.ip=*",
        "--profile=mpi",
        "-Cluster.n=2",
        "--ip=x.y",
    ]);
    assert_eq!(cfg, vec!["--IPController.ip=*", "-Cluster.n=2"]);
    assert_eq!(rest, vec!["--n=4", "--profile=mpi", "--ip=x.y"]);
}

#[test]
fn unknown_trait_names_file_line_and_fix() {
    let err = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "c = get_config()\n\nc.HubFactory.ipp = '*'\n",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ipcontroller_config.py:3"), "{msg}");
    assert!(
        msg.contains("HubFactory is the old name of IPController"),
        "{msg}"
    );
    assert!(msg.contains("did you mean HubFactory.ip?"), "{msg}");
}

#[test]
fn unknown_class_is_an_error() {
    let msg = load(
        "ipengine",
        "ipengine_config.py",
        "c.IPEngineAp.work_dir = '/tmp'\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("ipengine_config.py:1"), "{msg}");
    assert!(msg.contains("did you mean IPEngineApp"), "{msg}");
}

#[test]
fn setting_for_another_program_says_where_it_belongs() {
    let msg = load(
        "ipengine",
        "ipengine_config.py",
        "c.IPClusterEngines.n = 4\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("ipengine_config.py:1"), "{msg}");
    assert!(
        msg.contains("move the line to ipcluster_config.py"),
        "{msg}"
    );
}

#[test]
fn wrong_type_is_an_error() {
    let msg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "c.HeartMonitor.period = 'fast'\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains(":1:"), "{msg}");
    assert!(
        msg.contains("HeartMonitor.period must be an integer"),
        "{msg}"
    );
    let d = tempfile::tempdir().unwrap();
    let msg = Config::load(
        d.path(),
        "ipcontroller",
        &["--HeartMonitor.period=soon".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("command line (--HeartMonitor.period=soon)"),
        "{msg}"
    );
}

#[test]
fn python_errors_carry_file_and_line() {
    let err = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "c.HubFactory.ip = '*'\nx = 1 +\n",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ipcontroller_config.py:2: SyntaxError"),
        "{msg}"
    );
    let msg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "import os\nc.HubFactory.ip = os.environ['RPAR_SURELY_UNSET_VAR']\n",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("ipcontroller_config.py:2: KeyError"), "{msg}");
    let msg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "\nc.HubFactory.ip = object()\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains(":2:") && msg.contains("cannot be stored"),
        "{msg}"
    );
    let msg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "c.HubFactory.ports.append(1)\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains(":1:") && msg.contains("read before anything assigned it"),
        "{msg}"
    );
}

#[test]
fn config_file_output_does_not_break_loading() {
    let cfg = load(
        "ipcontroller",
        "ipcontroller_config.py",
        "print('hello from config')\nimport os\nos.system('echo from a child')\nc.HubFactory.ip = '*'\n",
    )
    .unwrap();
    assert_eq!(cfg.str("IPController", "ip").unwrap().as_deref(), Some("*"));
}

#[test]
fn load_subconfig_reads_a_sibling_file() {
    let d = profile(&[
        (
            "ipcontroller_config.py",
            "load_subconfig('common_config.py')\nc.HubFactory.location = 'here'\n",
        ),
        ("common_config.py", "c.HubFactory.ip = '*'\n"),
    ]);
    let cfg = Config::load(d.path(), "ipcontroller", &[]).unwrap();
    assert_eq!(cfg.str("IPController", "ip").unwrap().as_deref(), Some("*"));
    match &cfg.get("IPController", "ip").unwrap().source {
        Source::File { path, line } => {
            assert!(path.ends_with("common_config.py"));
            assert_eq!(*line, 1);
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn comment_only_file_needs_no_python() {
    let d = profile(&[(
        "ipengine_config.py",
        "# c.IPEngine.timeout = 5.0\nc = get_config()  # noqa\n\n",
    )]);
    let mut cfg = Config::empty("ipengine").unwrap();
    cfg.python = vec!["/nonexistent/python3".into()];
    cfg.load_py(&d.path().join("ipengine_config.py")).unwrap();
    assert!(cfg.get("IPEngine", "timeout").is_none());
}

#[test]
fn no_python_is_a_clear_error() {
    let d = profile(&[("ipengine_config.py", "c.IPEngine.timeout = 5.0\n")]);
    let mut cfg = Config::empty("ipengine").unwrap();
    cfg.python = vec!["/nonexistent/python3".into()];
    let err = cfg
        .load_py(&d.path().join("ipengine_config.py"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no Python interpreter"), "{msg}");
    assert!(msg.contains("RPAR_PYTHON"), "{msg}");
    assert!(msg.contains("ipengine_config.json"), "{msg}");
}

#[test]
fn extra_settings_for_a_program() {
    let d = profile(&[("ipengine_config.py", "c.IPEngine.rpar_relay_depth = 4\n")]);
    assert!(Config::load(d.path(), "ipengine", &[]).is_err());
    let cfg = Config::load_with(
        d.path(),
        "ipengine",
        &[("IPEngine", "rpar_relay_depth", Kind::Int)],
        &[],
    )
    .unwrap();
    assert_eq!(cfg.i64("IPEngine", "rpar_relay_depth").unwrap(), Some(4));
}

#[test]
fn inherited_common_settings() {
    let d = profile(&[(
        "ipcontroller_config.py",
        "c.Application.log_level = 'DEBUG'\nc.BaseParallelApplication.cluster_id = 'x'\n",
    )]);
    let cfg = Config::load(d.path(), "ipcontroller", &[]).unwrap();
    assert_eq!(
        cfg.str("IPController", "log_level").unwrap().as_deref(),
        Some("DEBUG")
    );
    assert_eq!(
        cfg.str("IPController", "cluster_id").unwrap().as_deref(),
        Some("x")
    );
}

#[test]
fn words() {
    assert_eq!(
        split_words("mpiexec -n 4 'a b' \"c\\\"d\""),
        vec!["mpiexec", "-n", "4", "a b", "c\"d"]
    );
    assert_eq!(split_words("x ''"), vec!["x", ""]);
}

#[test]
fn every_schema_default_is_documented_and_unique() {
    for c in schema::CLASSES {
        assert!(schema::class(c.name).is_some());
        let mut seen = std::collections::HashSet::new();
        for t in c.traits {
            assert!(seen.insert(t.name), "{}.{} twice", c.name, t.name);
            assert!(
                !t.help.is_empty() && !t.default.is_empty(),
                "{}.{}",
                c.name,
                t.name
            );
        }
        for p in c.parents {
            assert!(
                schema::class(p).is_some(),
                "{} has unknown parent {p}",
                c.name
            );
        }
    }
    for a in schema::ALIASES {
        assert!(schema::class(a.new_class).is_some(), "{}", a.new_class);
    }
}

#[test]
fn ipython_classes_on_the_engine() {
    let d = profile(&[(
        "ipengine_config.py",
        "c.InteractiveShell.xmode = 'Plain'\nc.Session.debug = False\nc.IPKernelApp.exec_lines = ['a = 1']\n",
    )]);
    let cli = vec![
        "--InteractiveShell.colors=nocolor".to_string(),
        "--HistoryManager.enabled=True".to_string(),
    ];
    let cfg = Config::load(d.path(), "ipengine", &cli).unwrap();
    assert_eq!(
        cfg.ipython_config(),
        json!({
            "InteractiveShell": {"xmode": "Plain", "colors": "nocolor"},
            "IPKernelApp": {"exec_lines": ["a = 1"]},
            "HistoryManager": {"enabled": true},
        })
    );
    // Session.debug is IPython's, accepted and noted, not passed to the shell
    assert!(cfg
        .notes()
        .iter()
        .any(|n| n.contains("ipengine_config.py:2") && n.contains("Session.debug")));
    // rpar's own classes stay strict, on the engine too
    let e = Config::load(
        d.path(),
        "ipengine",
        &["--IPEngine.startup_comand=x".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean IPEngine.startup_command"), "{e}");
    let e = load("ipengine", "ipengine_config.py", "c.MPI.usee = 'mpi4py'\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipengine_config.py:1") && e.contains("MPI has no setting usee"),
        "{e}"
    );
    // a known IPython trait keeps its type
    let e = load(
        "ipengine",
        "ipengine_config.py",
        "c.IPKernelApp.exec_lines = 3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("must be a list"), "{e}");
    // the controller does not read IPython's shell classes
    let e = Config::load(
        d.path(),
        "ipcontroller",
        &["--InteractiveShell.colors=nocolor".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no configurable class InteractiveShell"), "{e}");
}
