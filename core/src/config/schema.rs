//! The settings each rpar program accepts: classes, their traits (with type, default and
//! meaning), class inheritance, and the table of old names (IPython.parallel ≤ 3.x,
//! ipyparallel ≤ 6) that still work.
//!
//! This table is the single list behind three things: validation in [`super::Config`] (an
//! unknown setting is an error that names its file and line), the commented default config
//! files that `rpar profile create --parallel` writes, and `get()`'s inheritance (a value set on
//! `PBSLauncher` applies to `PBSEngineSetLauncher`). Defaults are Python literals, as a user
//! would write them in `*_config.py`.

/// The three programs that read config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum App {
    /// `rpar-controller`, reads `ipcontroller_config.{py,json}`.
    Controller,
    /// `rpar-engine`, reads `ipengine_config.{py,json}`.
    Engine,
    /// `rpar cluster` / `rpar jobscript`, reads `ipcluster_config.{py,json}`.
    Cluster,
}

impl App {
    /// Accepts `ipcontroller`, `ipengine`, `ipcluster` and the rpar program names.
    pub fn parse(name: &str) -> Option<App> {
        match name {
            "ipcontroller" | "rpar-controller" | "controller" => Some(App::Controller),
            "ipengine" | "rpar-engine" | "engine" => Some(App::Engine),
            "ipcluster" | "rpar" | "cluster" => Some(App::Cluster),
            _ => None,
        }
    }
    /// The config file stem: `ipcontroller`, `ipengine` or `ipcluster`.
    pub fn name(self) -> &'static str {
        match self {
            App::Controller => "ipcontroller",
            App::Engine => "ipengine",
            App::Cluster => "ipcluster",
        }
    }
    /// `ipcontroller_config.py` etc.
    pub fn config_file(self) -> String {
        format!("{}_config.py", self.name())
    }
}

/// The type a trait's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A list (of strings, usually; a command line given as one string is split by the caller).
    List,
    Dict,
    /// Anything (checked by the program that uses it).
    Any,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "True or False",
            Kind::List => "a list",
            Kind::Dict => "a dict",
            Kind::Any => "a value",
        }
    }
    /// Does a JSON value fit this kind? `None` fits any kind (meaning "use the default").
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, v) {
            (_, V::Null) | (Kind::Any, _) => true,
            (Kind::Str, V::String(_)) => true,
            (Kind::Int, V::Number(n)) => n.is_i64() || n.is_u64(),
            (Kind::Float, V::Number(_)) => true,
            (Kind::Bool, V::Bool(_)) => true,
            (Kind::List, V::Array(_)) => true,
            (Kind::Dict, V::Object(_)) => true,
            _ => false,
        }
    }
}

/// Whether rpar acts on a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// rpar uses it.
    Used,
    /// Accepted for compatibility and ignored; the text says why (logged as a warning).
    Ignored(&'static str),
}

/// One configurable trait.
#[derive(Debug, Clone, Copy)]
pub struct TraitDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The default as a Python literal (`'127.0.0.1'`, `3000`, `[]`), or a description in `<...>`.
    pub default: &'static str,
    pub help: &'static str,
    pub status: Status,
}

/// One configurable class.
#[derive(Debug, Clone, Copy)]
pub struct ClassDef {
    pub name: &'static str,
    /// Parent classes, most specific first: settings on a parent apply unless the class sets its own.
    pub parents: &'static [&'static str],
    /// Programs that read this class (an empty list: every program).
    pub apps: &'static [App],
    pub help: &'static str,
    pub traits: &'static [TraitDef],
}

impl ClassDef {
    pub fn used_by(&self, app: App) -> bool {
        self.apps.is_empty() || self.apps.contains(&app)
    }
    pub fn own_trait(&self, name: &str) -> Option<&'static TraitDef> {
        self.traits.iter().find(|t| t.name == name)
    }
}

/// An old spelling. `old_trait`/`new_trait` `None`: every trait of the class is renamed as is.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    pub old_class: &'static str,
    pub old_trait: Option<&'static str>,
    pub new_class: &'static str,
    pub new_trait: Option<&'static str>,
}

const fn t(name: &'static str, kind: Kind, default: &'static str, help: &'static str) -> TraitDef {
    TraitDef {
        name,
        kind,
        default,
        help,
        status: Status::Used,
    }
}
const fn ign(name: &'static str, kind: Kind, default: &'static str, why: &'static str) -> TraitDef {
    TraitDef {
        name,
        kind,
        default,
        help: why,
        status: Status::Ignored(why),
    }
}

use App::*;
use Kind::*;

const CTRL: &[App] = &[Controller];
const ENG: &[App] = &[Engine];
const CLU: &[App] = &[Cluster];
const CTRL_ENG: &[App] = &[Controller, Engine];
const ALL: &[App] = &[];

/// Every class rpar knows, in the order the default config files list them.
pub static CLASSES: &[ClassDef] = &[
    // ---- common application settings -------------------------------------------------------
    ClassDef {
        name: "Application",
        parents: &[],
        apps: ALL,
        help: "Logging of every rpar program.",
        traits: &[
            t("log_level", Any, "'INFO'", "Log level: 'DEBUG', 'INFO', 'WARN', 'ERROR', 'CRITICAL' or 0-50."),
            ign("log_datefmt", Str, "'%Y-%m-%d %H:%M:%S'", "rpar's log format is fixed (tracing); ignored."),
            ign("log_format", Str, "'[%(name)s]%(highlevel)s %(message)s'", "rpar's log format is fixed (tracing); ignored."),
        ],
    },
    ClassDef {
        name: "BaseIPythonApplication",
        parents: &["Application"],
        apps: ALL,
        help: "Where profiles live.",
        traits: &[
            t("ipython_dir", Str, "'~/.ipython'", "The IPython directory holding profile_<name>/ (also $IPYTHONDIR)."),
            t("profile", Str, "'default'", "The profile name."),
            ign("overwrite", Bool, "False", "Only used by `ipython profile create`; ignored."),
            ign("copy_config_files", Bool, "False", "Only used by `ipython profile create`; ignored."),
            ign("auto_create", Bool, "False", "rpar programs always create the profile directory; ignored."),
            ign("extra_config_file", Str, "''", "Not supported by rpar; put the settings in this file; ignored."),
            ign("verbose_crash", Bool, "False", "Python crash handler option; ignored."),
        ],
    },
    ClassDef {
        name: "BaseParallelApplication",
        parents: &["BaseIPythonApplication"],
        apps: ALL,
        help: "Settings shared by the controller, the engines and the cluster launcher.",
        traits: &[
            t("cluster_id", Str, "''", "Cluster id: connection files are security/ipcontroller-<id>-{client,engine}.json (also $IPP_CLUSTER_ID)."),
            t("work_dir", Str, "<current directory>", "Directory the program changes into on start."),
            t("log_to_file", Bool, "False", "Also write the log to log/<program>-<cluster_id>-<pid>.log in the profile."),
            ign("log_url", Str, "''", "ZMQ log forwarding is not supported by rpar; ignored."),
            t("clean_logs", Bool, "False", "Delete old log files in the profile's log/ on start."),
        ],
    },
    ClassDef {
        name: "ProfileDir",
        parents: &[],
        apps: ALL,
        help: "The profile directory.",
        traits: &[t("location", Str, "<IPYTHONDIR/profile_NAME>", "Use this directory as the profile (like --profile-dir).")],
    },
    ClassDef {
        name: "Session",
        parents: &[],
        apps: CTRL_ENG,
        help: "Message signing and serialization (ipyparallel wire protocol).",
        traits: &[
            t("key", Str, "<random uuid>", "HMAC key used to sign messages (also $IPP_SESSION_KEY)."),
            t("keyfile", Str, "''", "Read the HMAC key from this file."),
            t("signature_scheme", Str, "'hmac-sha256'", "Signing scheme; rpar supports hmac-sha256."),
            t("session", Str, "<random uuid>", "The session id."),
            t("username", Str, "<$USER>", "User name put in message headers."),
            t("packer", Str, "'json'", "Packer for message bodies; rpar supports 'json'."),
            ign("unpacker", Str, "'json'", "Follows packer; ignored."),
            t("buffer_threshold", Int, "1024", "Objects larger than this many bytes are sent as separate buffers."),
            t("item_threshold", Int, "64", "Containers with more items than this are pickled whole."),
            t("digest_history_size", Int, "65536", "Number of signatures remembered to reject replayed messages."),
            ign("copy_threshold", Int, "65536", "zmq copy threshold; rpar decides itself; ignored."),
        ],
    },
    // ---- controller ------------------------------------------------------------------------
    ClassDef {
        name: "IPController",
        parents: &["BaseParallelApplication"],
        apps: CTRL,
        help: "The controller (rpar-controller): addresses, ports, task database.",
        traits: &[
            t("ip", Str, "'127.0.0.1'", "Interface to listen on for engines and clients ('*' = all). --ip"),
            t("engine_ip", Str, "<ip>", "Interface for engine connections."),
            t("client_ip", Str, "<ip>", "Interface for client connections."),
            t("monitor_ip", Str, "<ip>", "Interface for the internal monitor sockets."),
            t("location", Str, "<hostname>", "Address of this host as seen by engines and clients (when ip is '*' or loopback). --location"),
            t("ssh_server", Str, "''", "SSH server clients tunnel through (written to ipcontroller-client.json). --ssh"),
            t("engine_ssh_server", Str, "''", "SSH server engines tunnel through (written to ipcontroller-engine.json). --enginessh"),
            t("transport", Str, "'tcp'", "ZMQ transport for all connections ('tcp' or 'ipc'). --transport"),
            t("engine_transport", Str, "<transport>", "Transport for engine connections."),
            t("client_transport", Str, "<transport>", "Transport for client connections."),
            t("monitor_transport", Str, "<transport>", "Transport for the monitor sockets."),
            t("ports", Any, "[]", "Pool of ports to use, e.g. '10101-10120' or [10101, 10102]. --ports"),
            t("engine_ports", Any, "[]", "Ports for engine connections."),
            t("client_ports", Any, "[]", "Ports for client connections."),
            t("regport", Int, "0", "Registration port (deprecated: use ports)."),
            t("hb", Any, "<random>", "Heartbeat ports, a pair (deprecated: use ports)."),
            t("mux", Any, "<random>", "Direct (MUX) queue ports, a pair (deprecated: use ports)."),
            t("task", Any, "<random>", "Task queue ports, a pair (deprecated: use ports)."),
            t("control", Any, "<random>", "Control queue ports, a pair (deprecated: use ports)."),
            t("iopub", Any, "<random>", "IOPub ports, a pair (deprecated: use ports)."),
            t("mon_port", Int, "<random>", "Monitor port (deprecated: use ports)."),
            t("notifier_port", Int, "<random>", "Notification port (deprecated: use ports)."),
            t("db_class", Str, "'DictDB'", "Task database: 'DictDB' (memory), 'SQLiteDB', 'MongoDB', 'NoDB' (full dotted names work). --dictdb --sqlitedb --mongodb --nodb"),
            t("registration_timeout", Int, "0", "Seconds an engine may take to complete registration (0: 5 heartbeats)."),
            t("reuse_files", Bool, "False", "Reuse existing connection files (same ports and key). --reuse"),
            t("restore_engines", Bool, "False", "Reload engine state from log/engines<cluster_id>.json. --restore"),
            t("engine_json_file", Str, "'ipcontroller-engine.json'", "Name of the engine connection file in security/."),
            t("client_json_file", Str, "'ipcontroller-client.json'", "Name of the client connection file in security/."),
            t("broadcast_scheduler_depth", Int, "1", "Depth of the broadcast scheduler tree."),
            t("max_message_size", Int, "536870912", "Largest message frame, in bytes, any engine or client may send (512 MiB; -1: no limit). A larger frame drops the sender's connection before it is read, so it costs no memory, signed or not; raise it to move bigger single arrays."),
            t("metrics", Str, "''", "rpar: serve the status page, /api/status and Prometheus /metrics at this host:port, e.g. '127.0.0.1:0' (any port); off when empty. A token is required (see security/rpar-status*.json, `rpar cluster status`). --metrics"),
            ign("use_threads", Bool, "False", "rpar-controller always runs its schedulers in threads; ignored."),
            t("enable_curve", Bool, "False", "CurveZMQ encryption and authentication on every connection (the HMAC key is then empty unless Session.key is set). Default: True when $IPP_ENABLE_CURVE is '1'."),
            t("curve_publickey", Str, "''", "The controller's CurveZMQ public key, written to the connection files as curve_serverkey (default: $IPP_CURVE_PUBLICKEY, else a new pair)."),
            t("curve_secretkey", Str, "''", "The controller's CurveZMQ secret key (default: $IPP_CURVE_SECRETKEY, else a new pair)."),
        ],
    },
    ClassDef {
        name: "HeartMonitor",
        parents: &[],
        apps: CTRL,
        help: "Engine heartbeats.",
        traits: &[
            t("period", Int, "3000", "Milliseconds between heartbeats. --ping"),
            t("max_heartmonitor_misses", Int, "10", "Missed heartbeats before an engine is declared dead."),
            t("debug", Bool, "False", "Log every heartbeat."),
        ],
    },
    ClassDef {
        name: "TaskScheduler",
        parents: &[],
        apps: CTRL,
        help: "The load-balanced task scheduler.",
        traits: &[
            t("scheme_name", Str, "'leastload'", "Scheme: 'leastload', 'pure', 'lru', 'plainrandom', 'weighted', 'twobin'. --scheme"),
            t("hwm", Int, "1", "Maximum outstanding tasks per engine (0: no limit). --hwm"),
        ],
    },
    ClassDef {
        name: "DictDB",
        parents: &[],
        apps: CTRL,
        help: "The in-memory task database.",
        traits: &[
            t("record_limit", Int, "1024", "Maximum number of task records kept."),
            t("size_limit", Int, "201326592", "Maximum total size of buffers kept, in bytes (192 MiB; ipyparallel: 1 GiB)."),
            t("cull_fraction", Float, "0.1", "Fraction of records removed when a limit is reached."),
        ],
    },
    ClassDef {
        name: "SQLiteDB",
        parents: &[],
        apps: CTRL,
        help: "The SQLite task database.",
        traits: &[
            t("filename", Str, "'tasks.db'", "SQLite file name."),
            t("location", Str, "<profile dir>", "Directory of the SQLite file."),
            t("table", Str, "<session id>", "Table name; set it (e.g. 'tasks') to keep task history between runs."),
        ],
    },
    ClassDef {
        name: "MongoDB",
        parents: &[],
        apps: CTRL,
        help: "The MongoDB task database.",
        traits: &[
            t("connection_args", List, "[]", "Positional connection arguments: [url] or [host, port]."),
            t("connection_kwargs", Dict, "{}", "Keyword connection arguments (host, port, ...)."),
            t("database", Str, "<session id>", "Database name; set it (e.g. 'tasks') to keep task history between runs."),
        ],
    },
    // ---- engine ----------------------------------------------------------------------------
    ClassDef {
        name: "IPEngine",
        parents: &["BaseParallelApplication"],
        apps: ENG,
        help: "The engines (rpar-engine; every MPI rank is one engine).",
        traits: &[
            t("url_file", Str, "''", "The engine connection file (ipcontroller-engine.json). --file"),
            t("url_file_name", Str, "'ipcontroller-engine.json'", "Name of the connection file looked for in the profile's security/."),
            t("wait_for_url_file", Float, "10", "Seconds to wait for the connection file to appear."),
            t("registration_url", Str, "''", "Registration URL, overriding the connection file. --url"),
            t("location", Str, "''", "Controller address, overriding the connection file. --location"),
            t("sshserver", Str, "''", "SSH server to tunnel through to the controller. --ssh"),
            t("sshkey", Str, "''", "SSH key for the tunnel. --sshkey"),
            t("ssh_cmd", List, "['ssh']", "The ssh program (and options) rank 0 tunnels with (rpar)."),
            ign("paramiko", Bool, "False", "rpar tunnels with the ssh command; ignored."),
            t("timeout", Float, "5.0", "Seconds to wait for the registration reply. --timeout"),
            t("max_heartbeat_misses", Int, "50", "Missed heartbeats before an engine considers its controller gone (0: never)."),
            t("transport", Str, "'auto'", "rpar-engine: how rank 0 talks to the controller: 'native' (one connection per MPI job, rpar-controller only), 'compat' (per-engine sockets, any controller), or 'auto' (native when offered). --transport"),
            t("id", Int, "None", "Requested engine id."),
            t("use_mpi", Bool, "False", "Ask for engine ids equal to MPI ranks (rpar-engine is always an MPI program). --mpi"),
            t("init_mpi", Str, "<mpi4py import>", "Python code run at start when use_mpi is set (MPI is already initialized by rpar)."),
            t("mpi_registration_delay", Float, "0.02", "Seconds between registrations of consecutive ranks."),
            t("startup_script", Str, "''", "Python file run in the user namespace at start. -s"),
            t("startup_command", Str, "''", "Python code run in the user namespace at start. -c"),
            t("enable_nanny", Bool, "True", "Watch the engine process from a separate process/thread."),
            t("gpus", Str, "'none'", "GPUs per rank: 'auto' gives each rank its share of the node's GPUs (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK) by node-local rank, splitting a list the batch system set; RPAR_ENGINE_GPUS=nvidia:G overrides the device count. --gpus"),
            ign("out_stream_factory", Any, "<OutStream>", "Python class; rpar captures output itself; ignored."),
            ign("display_hook_factory", Any, "<DisplayHook>", "Python class; ignored."),
            t("curve_serverkey", Str, "''", "The controller's CurveZMQ public key, when the connection file has no curve_serverkey (default: $IPP_CURVE_SERVERKEY)."),
            t("curve_secretkey", Str, "''", "The engines' CurveZMQ secret key (default: $IPP_CURVE_SECRETKEY, else a new pair at start)."),
            t("curve_publickey", Str, "''", "The engines' CurveZMQ public key (default: $IPP_CURVE_PUBLICKEY, else a new pair at start)."),
        ],
    },
    ClassDef {
        name: "IPKernelApp",
        parents: &[],
        apps: ENG,
        help: "Start-up code run on each engine.",
        traits: &[
            t("exec_lines", List, "[]", "Lines of Python run at start."),
            t("exec_files", List, "[]", "Python files run at start."),
        ],
    },
    ClassDef {
        name: "MPI",
        parents: &[],
        apps: ENG,
        help: "IPython.parallel's MPI section (no longer exists in ipyparallel 9).",
        traits: &[
            ign("use", Str, "''", "rpar-engine initializes MPI itself (mpi4py works in engine code); ignored."),
            ign("init_script", Str, "''", "rpar-engine initializes MPI itself; use IPEngine.init_mpi for extra code; ignored."),
        ],
    },
    // ---- cluster ---------------------------------------------------------------------------
    ClassDef {
        name: "Cluster",
        parents: &["BaseParallelApplication"],
        apps: CLU,
        help: "rpar cluster: which launchers start the controller and the engines, and how many engines.",
        traits: &[
            t("n", Any, "None", "Number of engines (None: the number of CPUs). --n"),
            t("engine_launcher_class", Str, "'local'", "Engine launcher: 'local', 'mpi', 'ssh', 'pbs', 'sge', 'slurm', 'lsf', 'htcondor', 'winhpc', or an ipyparallel class name. --engines"),
            t("controller_launcher_class", Str, "'local'", "Controller launcher: same names as engine_launcher_class. --controller"),
            t("controller_ip", Str, "''", "--ip passed to the controller. --ip"),
            t("controller_location", Str, "''", "--location passed to the controller. --location"),
            t("controller_args", List, "[]", "Extra controller arguments (also: rpar cluster start -- ARGS)."),
            t("delay", Float, "1.0", "Seconds between starting the controller and the engines. --delay"),
            t("engine_timeout", Int, "60", "Seconds `rpar cluster start` waits for the engines to register (0: do not wait)."),
            t("send_engines_connection_env", Bool, "True", "Give engines the connection info in $IPP_CONNECTION_INFO."),
            t("daemonize", Bool, "False", "Return once the cluster is up and leave it running. --daemonize"),
            ign("early_shutdown", Int, "30", "rpar stops a foreground cluster when its controller stops, not on early engine exits; ignored."),
            ign("cluster_file", Str, "<security/cluster-<cluster_id>.json>", "rpar always writes security/cluster-<cluster_id>.json (stop and list look there); ignored."),
            ign("shutdown_atexit", Bool, "True", "Python Cluster API option; `rpar cluster start` without --daemonize stops on exit; ignored."),
            ign("load_profile", Bool, "True", "Python Cluster API option; ignored."),
        ],
    },
    ClassDef {
        name: "IPClusterStop",
        parents: &[],
        apps: CLU,
        help: "rpar cluster stop.",
        traits: &[ign("signal", Int, "2", "Unused since ipyparallel 7: stop sends SIGTERM, then SIGKILL; ignored.")],
    },
    ClassDef {
        name: "BaseLauncher",
        parents: &[],
        apps: CLU,
        help: "Every launcher.",
        traits: &[
            t("work_dir", Str, "'.'", "Working directory of launched processes and jobs."),
            t("environment", Dict, "{}", "Extra environment variables for launched processes and jobs."),
            ign("stop_timeout", Int, "60", "rpar stops processes with SIGTERM, then SIGKILL after stop_seconds_until_kill; ignored."),
        ],
    },
    ClassDef {
        name: "ControllerLauncher",
        parents: &["BaseLauncher"],
        apps: CLU,
        help: "Every controller launcher.",
        traits: &[
            t("controller_cmd", List, "['rpar-controller']", "The controller program (and leading arguments)."),
            t("controller_args", List, "['--log-level=20']", "Arguments for the controller."),
            t("connection_info_timeout", Float, "60", "Seconds to wait for the controller's connection files."),
        ],
    },
    ClassDef {
        name: "EngineLauncher",
        parents: &["BaseLauncher"],
        apps: CLU,
        help: "Every engine launcher.",
        traits: &[
            t("engine_cmd", List, "['rpar-engine']", "The engine program (and leading arguments)."),
            t("engine_args", List, "['--log-level=20']", "Arguments for every engine."),
        ],
    },
    ClassDef {
        name: "LocalProcessLauncher",
        parents: &["BaseLauncher"],
        apps: CLU,
        help: "Processes on this host.",
        traits: &[
            t("stop_seconds_until_kill", Int, "5", "Seconds between SIGTERM and SIGKILL when stopping."),
            ign("poll_seconds", Int, "30", "rpar checks its processes every half second; ignored."),
        ],
    },
    ClassDef { name: "LocalControllerLauncher", parents: &["LocalProcessLauncher", "ControllerLauncher"], apps: CLU, help: "The controller as a process on this host.", traits: &[] },
    ClassDef { name: "LocalEngineLauncher", parents: &["LocalProcessLauncher", "EngineLauncher"], apps: CLU, help: "One engine on this host.", traits: &[] },
    ClassDef {
        name: "LocalEngineSetLauncher",
        parents: &["LocalEngineLauncher"],
        apps: CLU,
        help: "Engines on this host (one MPI job of n ranks when mpiexec is found).",
        traits: &[t("delay", Float, "0.1", "Seconds between starting engines (without MPI).")],
    },
    ClassDef {
        name: "MPILauncher",
        parents: &["LocalProcessLauncher"],
        apps: CLU,
        help: "Programs started with mpiexec.",
        traits: &[
            t("mpi_cmd", List, "['mpiexec']", "The MPI launcher command."),
            t("mpi_args", List, "[]", "Extra arguments for mpiexec (before the program)."),
        ],
    },
    ClassDef { name: "MPIControllerLauncher", parents: &["MPILauncher", "ControllerLauncher"], apps: CLU, help: "The controller started with mpiexec -n 1.", traits: &[] },
    ClassDef { name: "MPIEngineSetLauncher", parents: &["MPILauncher", "EngineLauncher"], apps: CLU, help: "The engines as one MPI job: mpiexec -n N rpar-engine.", traits: &[] },
    ClassDef {
        name: "SSHLauncher",
        parents: &["LocalProcessLauncher"],
        apps: CLU,
        help: "Programs started on other hosts with ssh.",
        traits: &[
            t("ssh_cmd", List, "['ssh']", "The ssh command."),
            t("ssh_args", List, "[]", "Extra ssh arguments."),
            t("scp_cmd", List, "['scp']", "The scp command used to copy connection files."),
            t("scp_args", List, "[]", "Extra scp arguments."),
            t("hostname", Str, "''", "Host to run on."),
            t("user", Str, "''", "User name for ssh (default: the ssh default)."),
            ign("location", Str, "''", "rpar reaches remote hosts by hostname; use --location for the controller; ignored."),
            t("remote_profile_dir", Str, "<local profile dir>", "The profile directory on the remote host."),
            t("remote_python", Str, "'python3'", "Unused by rpar's programs; kept for Python engines."),
            ign("to_send", List, "<connection files>", "rpar copies the engine connection file itself; ignored."),
            ign("to_fetch", List, "<connection files>", "rpar fetches the controller's connection files itself; ignored."),
            t("program", List, "<controller or engine command>", "Remote program (default: controller_cmd / engine_cmd)."),
            t("program_args", List, "<controller or engine args>", "Arguments for the remote program."),
        ],
    },
    ClassDef {
        name: "SSHControllerLauncher",
        parents: &["SSHLauncher", "ControllerLauncher"],
        apps: CLU,
        help: "The controller on another host over ssh; its connection files are fetched with scp.",
        traits: &[t("reuse_files", Bool, "True", "Start the remote controller with --reuse.")],
    },
    ClassDef { name: "SSHEngineLauncher", parents: &["SSHLauncher", "EngineLauncher"], apps: CLU, help: "One engine on another host over ssh.", traits: &[] },
    ClassDef {
        name: "SSHEngineSetLauncher",
        parents: &["LocalEngineSetLauncher", "SSHLauncher"],
        apps: CLU,
        help: "Engines on other hosts over ssh; the engine connection file is copied with scp.",
        traits: &[t(
            "engines",
            Dict,
            "{}",
            "Hosts and engine counts: {'host1': 2, 'host3': (1, ['--profile-dir=/other/location'])}.",
        )],
    },
    ClassDef {
        name: "SSHProxyEngineSetLauncher",
        parents: &["SSHLauncher", "EngineLauncher"],
        apps: CLU,
        help: "Engines started by `rpar cluster engines` on another host over ssh.",
        traits: &[
            ign("ipcluster_cmd", List, "['rpar', 'cluster']", "The sshproxy launcher is not supported by rpar (use ssh); ignored."),
            ign("ipcluster_args", List, "[]", "The sshproxy launcher is not supported by rpar (use ssh); ignored."),
        ],
    },
    ClassDef {
        name: "BatchSystemLauncher",
        parents: &["BaseLauncher"],
        apps: CLU,
        help: "Jobs submitted to a batch system from a job script template.",
        traits: &[
            t("queue", Str, "''", "The batch queue / partition ({queue} in templates)."),
            t("batch_template", Str, "''", "The job script template as a string ({n}, {n//4}, {queue}, {profile_dir}, {cluster_id}, or tera syntax)."),
            t("batch_template_file", Str, "''", "File holding the job script template (relative to the profile or working directory)."),
            t("batch_file_name", Str, "<kind>_<controller|engines>", "Name of the rendered job script (written to the profile's log/)."),
            t("submit_command", List, "<qsub, sbatch, bsub, ...>", "The submit command."),
            t("delete_command", List, "<qdel, scancel, bkill, ...>", "The cancel command."),
            ign("signal_command", List, "<qsig -s, scancel -s, ...>", "rpar does not signal batch jobs (stop cancels them); ignored."),
            t("status_command", List, "<qstat, squeue -h -o %T -j, ...>", "rpar: the job status command (the job id is appended, except for SGE's qstat table)."),
            t("job_id_regexp", Str, "'\\\\d+'", "Regular expression finding the job id in the submit command's output."),
            t("job_id_regexp_group", Int, "0", "Group of job_id_regexp holding the id."),
            t("output_file", Str, "<log/<kind>-<cluster_id>.out>", "The job's output file."),
            t("namespace", Dict, "{}", "Extra template variables."),
            t("co_start", Bool, "False", "rpar: run controller and engines in ONE job (engine launcher setting)."),
        ],
    },
    ClassDef { name: "BatchControllerLauncher", parents: &["BatchSystemLauncher", "ControllerLauncher"], apps: CLU, help: "A controller job from a custom template.", traits: &[] },
    ClassDef { name: "BatchEngineSetLauncher", parents: &["BatchSystemLauncher", "EngineLauncher"], apps: CLU, help: "An engine job from a custom template.", traits: &[] },
    ClassDef { name: "PBSLauncher", parents: &["BatchSystemLauncher"], apps: CLU, help: "PBS / Torque (qsub, qdel).", traits: &[] },
    ClassDef { name: "PBSControllerLauncher", parents: &["PBSLauncher", "BatchControllerLauncher"], apps: CLU, help: "The controller as a PBS job.", traits: &[] },
    ClassDef { name: "PBSEngineSetLauncher", parents: &["PBSLauncher", "BatchEngineSetLauncher"], apps: CLU, help: "The engines as one PBS job.", traits: &[] },
    ClassDef { name: "SGELauncher", parents: &["PBSLauncher"], apps: CLU, help: "Sun/Son of Grid Engine (qsub, qdel).", traits: &[t("pe", Str, "'smp'", "rpar: the parallel environment for engine jobs (#$ -pe <pe> <n>).")] },
    ClassDef { name: "SGEControllerLauncher", parents: &["SGELauncher", "BatchControllerLauncher"], apps: CLU, help: "The controller as an SGE job.", traits: &[] },
    ClassDef { name: "SGEEngineSetLauncher", parents: &["SGELauncher", "BatchEngineSetLauncher"], apps: CLU, help: "The engines as one SGE job.", traits: &[] },
    ClassDef {
        name: "SlurmLauncher",
        parents: &["BatchSystemLauncher"],
        apps: CLU,
        help: "Slurm (sbatch, scancel).",
        traits: &[
            t("account", Str, "''", "Slurm account (--account)."),
            t("qos", Str, "''", "Slurm QoS (--qos)."),
            t("timelimit", Any, "''", "Slurm time limit (--time)."),
            t("options", Str, "''", "Extra #SBATCH options, one per line."),
        ],
    },
    ClassDef { name: "SlurmControllerLauncher", parents: &["SlurmLauncher", "BatchControllerLauncher"], apps: CLU, help: "The controller as a Slurm job.", traits: &[] },
    ClassDef { name: "SlurmEngineSetLauncher", parents: &["SlurmLauncher", "BatchEngineSetLauncher"], apps: CLU, help: "The engines as one Slurm job.", traits: &[] },
    ClassDef { name: "LSFLauncher", parents: &["BatchSystemLauncher"], apps: CLU, help: "LSF (bsub, bkill).", traits: &[] },
    ClassDef { name: "LSFControllerLauncher", parents: &["LSFLauncher", "BatchControllerLauncher"], apps: CLU, help: "The controller as an LSF job.", traits: &[] },
    ClassDef { name: "LSFEngineSetLauncher", parents: &["LSFLauncher", "BatchEngineSetLauncher"], apps: CLU, help: "The engines as one LSF job.", traits: &[] },
    ClassDef { name: "HTCondorLauncher", parents: &["BatchSystemLauncher"], apps: CLU, help: "HTCondor (condor_submit, condor_rm).", traits: &[] },
    ClassDef { name: "HTCondorControllerLauncher", parents: &["HTCondorLauncher", "BatchControllerLauncher"], apps: CLU, help: "The controller as an HTCondor job.", traits: &[] },
    ClassDef { name: "HTCondorEngineSetLauncher", parents: &["HTCondorLauncher", "BatchEngineSetLauncher"], apps: CLU, help: "The engines as an HTCondor job.", traits: &[] },
    ClassDef {
        name: "WindowsHPCLauncher",
        parents: &["BaseLauncher"],
        apps: CLU,
        help: "Windows HPC Server (job submit).",
        traits: &[
            t("job_id_regexp", Str, "'\\\\d+'", "Regular expression finding the job id."),
            t("job_file_name", Str, "'ipython_job.xml'", "Name of the job XML file."),
            t("scheduler", Str, "''", "The HPC scheduler host (/scheduler:)."),
            t("job_cmd", Str, "'job'", "The job command."),
        ],
    },
    ClassDef { name: "WindowsHPCControllerLauncher", parents: &["WindowsHPCLauncher", "ControllerLauncher"], apps: CLU, help: "The controller as a Windows HPC job.", traits: &[] },
    ClassDef { name: "WindowsHPCEngineSetLauncher", parents: &["WindowsHPCLauncher", "EngineLauncher"], apps: CLU, help: "The engines as a Windows HPC job.", traits: &[] },
];

/// Old names that still work. Trait-specific entries come before class-wide ones.
pub static ALIASES: &[Alias] = &[
    Alias {
        old_class: "IPClusterEngines",
        old_trait: Some("engine_launcher"),
        new_class: "Cluster",
        new_trait: Some("engine_launcher_class"),
    },
    Alias {
        old_class: "IPClusterStart",
        old_trait: Some("engine_launcher"),
        new_class: "Cluster",
        new_trait: Some("engine_launcher_class"),
    },
    Alias {
        old_class: "IPClusterStart",
        old_trait: Some("controller_launcher"),
        new_class: "Cluster",
        new_trait: Some("controller_launcher_class"),
    },
    Alias {
        old_class: "Cluster",
        old_trait: Some("engine_launcher"),
        new_class: "Cluster",
        new_trait: Some("engine_launcher_class"),
    },
    Alias {
        old_class: "Cluster",
        old_trait: Some("controller_launcher"),
        new_class: "Cluster",
        new_trait: Some("controller_launcher_class"),
    },
    Alias {
        old_class: "HubFactory",
        old_trait: None,
        new_class: "IPController",
        new_trait: None,
    },
    Alias {
        old_class: "IPControllerApp",
        old_trait: None,
        new_class: "IPController",
        new_trait: None,
    },
    Alias {
        old_class: "IPEngineApp",
        old_trait: None,
        new_class: "IPEngine",
        new_trait: None,
    },
    Alias {
        old_class: "EngineFactory",
        old_trait: None,
        new_class: "IPEngine",
        new_trait: None,
    },
    Alias {
        old_class: "IPClusterEngines",
        old_trait: None,
        new_class: "Cluster",
        new_trait: None,
    },
    Alias {
        old_class: "IPClusterStart",
        old_trait: None,
        new_class: "Cluster",
        new_trait: None,
    },
    Alias {
        old_class: "IPClusterApp",
        old_trait: None,
        new_class: "Cluster",
        new_trait: None,
    },
    Alias {
        old_class: "MPIExecLauncher",
        old_trait: None,
        new_class: "MPILauncher",
        new_trait: None,
    },
    Alias {
        old_class: "MPIExecControllerLauncher",
        old_trait: None,
        new_class: "MPIControllerLauncher",
        new_trait: None,
    },
    Alias {
        old_class: "MPIExecEngineSetLauncher",
        old_trait: None,
        new_class: "MPIEngineSetLauncher",
        new_trait: None,
    },
    Alias {
        old_class: "LocalLauncher",
        old_trait: None,
        new_class: "LocalProcessLauncher",
        new_trait: None,
    },
];

/// The class named `name` (new names only; see [`canonical`]).
pub fn class(name: &str) -> Option<&'static ClassDef> {
    CLASSES.iter().find(|c| c.name == name)
}

/// The new (class, trait) for a possibly old spelling.
pub fn canonical<'a>(class: &'a str, trait_: &'a str) -> (&'a str, &'a str) {
    for a in ALIASES {
        if a.old_class != class {
            continue;
        }
        match (a.old_trait, a.new_trait) {
            (Some(ot), Some(nt)) if ot == trait_ => return (a.new_class, nt),
            (None, _) => return (a.new_class, trait_),
            _ => {}
        }
    }
    (class, trait_)
}

/// The new name of an old class, if it is one.
pub fn renamed_class(old: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|a| a.old_class == old && a.old_trait.is_none())
        .map(|a| a.new_class)
}

/// `class` and its ancestors, most specific first (depth-first, each once, like Python's MRO
/// for these simple hierarchies).
pub fn lineage(class_name: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    fn walk(name: &str, out: &mut Vec<&'static str>) {
        if let Some(c) = class(name) {
            if !out.contains(&c.name) {
                out.push(c.name);
            }
            for p in c.parents {
                walk(p, out);
            }
        }
    }
    walk(class_name, &mut out);
    out
}

/// The trait definition for `trait_` on `class_name` or one of its ancestors.
pub fn find_trait(
    class_name: &str,
    trait_: &str,
) -> Option<(&'static ClassDef, &'static TraitDef)> {
    lineage(class_name)
        .into_iter()
        .filter_map(class)
        .find_map(|c| c.own_trait(trait_).map(|t| (c, t)))
}

/// Every trait settable on a class (its own and inherited), for messages.
pub fn all_traits(class_name: &str) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for c in lineage(class_name).into_iter().filter_map(class) {
        for t in c.traits {
            if !v.contains(&t.name) {
                v.push(t.name);
            }
        }
    }
    v
}

/// The classes a program reads, in table order.
pub fn classes_for(app: App) -> impl Iterator<Item = &'static ClassDef> {
    CLASSES.iter().filter(move |c| c.used_by(app))
}

/// The closest of `candidates` to `word` (edit distance ≤ a third of its length), for "did you mean".
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
