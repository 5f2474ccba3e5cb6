//! Job scripts: the built-in templates in `jobscripts/` and users' own templates.
//!
//! The files in `jobscripts/` are valid job scripts as they stand (`qsub jobscripts/pbs.engine`):
//! every template construct sits on a line that starts with `#` (a comment for the shell and not
//! a directive for the batch system), e.g. `#{% if n %}SBATCH --ntasks={{ n }}{% endif %}`
//! renders to `#SBATCH --ntasks=4`, and `#{% if engine %}{{ nl }}RPAR_ENGINE=...{% endif %}`
//! renders to a shell assignment that comes before the `${RPAR_ENGINE:=rpar-engine}` default.
//! Rendering with no values gives back the hand-usable behaviour (a test runs both).
//!
//! Users' templates (`batch_template` / `batch_template_file`) may use tera syntax (anything with
//! `{{` or `{%`) or ipyparallel's: `{n}`, `{n/4}`, `{n//4}`, `{queue}`, `{profile_dir}`,
//! `{cluster_id}`, `{program_and_args}` ..., with `{{`/`}}` for literal braces.
//!
//! Everything here is pure: text in, text out.

mod ipp_format;

pub use ipp_format::render_ipp;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A batch system (or plain mpiexec) that has templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum System {
    Pbs,
    Sge,
    Slurm,
    Lsf,
    HtCondor,
    Mpiexec,
}

impl System {
    pub const ALL: [System; 6] = [
        System::Pbs,
        System::Sge,
        System::Slurm,
        System::Lsf,
        System::HtCondor,
        System::Mpiexec,
    ];

    pub fn parse(s: &str) -> Option<System> {
        Some(match s.to_ascii_lowercase().as_str() {
            "pbs" | "torque" => System::Pbs,
            "sge" | "gridengine" => System::Sge,
            "slurm" => System::Slurm,
            "lsf" => System::Lsf,
            "htcondor" | "condor" => System::HtCondor,
            "mpiexec" | "mpi" => System::Mpiexec,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            System::Pbs => "pbs",
            System::Sge => "sge",
            System::Slurm => "slurm",
            System::Lsf => "lsf",
            System::HtCondor => "htcondor",
            System::Mpiexec => "mpiexec",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Engine,
    Controller,
    /// Controller and engines in one job (co-start).
    Cluster,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "engine" | "engines" => Role::Engine,
            "controller" => Role::Controller,
            "cluster" | "both" => Role::Cluster,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Engine => "engine",
            Role::Controller => "controller",
            Role::Cluster => "cluster",
        }
    }
}

macro_rules! builtin {
    ($($sys:ident $role:ident $file:literal),* $(,)?) => {
        /// The built-in template for a system and role (the text of `jobscripts/<system>.<role>`).
        pub fn builtin(system: System, role: Role) -> Option<&'static str> {
            match (system, role) {
                $((System::$sys, Role::$role) => Some(include_str!(concat!("../jobscripts/", $file))),)*
                _ => None,
            }
        }
    };
}

builtin! {
    Pbs Engine "pbs.engine", Pbs Controller "pbs.controller", Pbs Cluster "pbs.cluster",
    Sge Engine "sge.engine", Sge Controller "sge.controller", Sge Cluster "sge.cluster",
    Slurm Engine "slurm.engine", Slurm Controller "slurm.controller", Slurm Cluster "slurm.cluster",
    Lsf Engine "lsf.engine", Lsf Controller "lsf.controller", Lsf Cluster "lsf.cluster",
    HtCondor Engine "htcondor.engine", HtCondor Controller "htcondor.controller",
    Mpiexec Engine "mpiexec.engine", Mpiexec Controller "mpiexec.controller",
}

/// The file name of a built-in template, `pbs.engine`.
pub fn builtin_name(system: System, role: Role) -> String {
    format!("{}.{}", system.name(), role.name())
}

/// The values a job script is rendered with. Unset values leave the script's own defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptVars {
    pub n: Option<usize>,
    pub queue: String,
    pub profile_dir: String,
    pub cluster_id: String,
    /// The engine program (engine_cmd, shell-joined).
    pub engine: String,
    pub engine_args: String,
    pub controller: String,
    pub controller_args: String,
    /// The MPI launcher and its options, shell-joined (empty: the script's default).
    pub mpiexec: String,
    pub output_file: String,
    /// Slurm.
    pub account: String,
    pub qos: String,
    pub timelimit: String,
    /// PBS.
    pub walltime: String,
    /// SGE parallel environment.
    pub pe: String,
    /// Extra directive lines (without the `#SBATCH` prefix).
    pub options: Vec<String>,
    /// The role of the script (for ipyparallel's `{program}` variables).
    pub role: Option<Role>,
    /// Users' extra variables (`BatchSystemLauncher.namespace`).
    pub namespace: Map<String, Value>,
}

impl ScriptVars {
    /// All variables as a JSON object (what templates see).
    pub fn to_context(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let s = |v: &str| Value::String(v.to_string());
        m.insert(
            "n".into(),
            self.n.map(|n| Value::from(n as u64)).unwrap_or(Value::Null),
        );
        for (k, v) in [
            ("queue", &self.queue),
            ("profile_dir", &self.profile_dir),
            ("cluster_id", &self.cluster_id),
            ("engine", &self.engine),
            ("engine_args", &self.engine_args),
            ("controller", &self.controller),
            ("controller_args", &self.controller_args),
            ("mpiexec", &self.mpiexec),
            ("output_file", &self.output_file),
            ("account", &self.account),
            ("qos", &self.qos),
            ("timelimit", &self.timelimit),
            ("walltime", &self.walltime),
        ] {
            m.insert(k.into(), s(v));
        }
        m.insert(
            "pe".into(),
            s(if self.pe.is_empty() { "smp" } else { &self.pe }),
        );
        m.insert(
            "options".into(),
            Value::Array(self.options.iter().map(|o| s(o)).collect()),
        );
        m.insert("nl".into(), s("\n"));
        // ipyparallel's names
        let (program, args) = match self.role {
            Some(Role::Controller) => (&self.controller, &self.controller_args),
            _ => (&self.engine, &self.engine_args),
        };
        m.insert("program".into(), s(program));
        m.insert("program_args".into(), s(args));
        let pa = if args.is_empty() {
            program.clone()
        } else {
            format!("{program} {args}")
        };
        m.insert("program_and_args".into(), s(&pa));
        for (k, v) in &self.namespace {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

/// A template rendering error, naming the template.
#[derive(Debug, thiserror::Error)]
#[error("job script template {origin}: {message}")]
pub struct TemplateError {
    pub origin: String,
    pub message: String,
}

/// Does this template use tera syntax (else ipyparallel's `{n}` syntax)? Tera: any `{%`, or
/// `{{ ... }}` with no single-brace `{name}` field (ipyparallel writes literal braces as `{{`).
pub fn is_tera(text: &str) -> bool {
    text.contains("{%") || (text.contains("{{") && !has_ipp_field(text))
}

fn has_ipp_field(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'{'
            && (i == 0 || b[i - 1] != b'{')
            && b.get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_' || *c == b'(')
    })
}

/// Render a template (either syntax). `origin` names it in errors (a file name or config line).
pub fn render(text: &str, origin: &str, vars: &ScriptVars) -> Result<String, TemplateError> {
    if is_tera(text) {
        render_tera(text, origin, vars)
    } else {
        render_ipp(text, origin, vars)
    }
}

/// Quote for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Join words into a shell command line.
pub fn shell_join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shq_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(Value::String(shell_quote(&s)))
}

/// Render tera syntax.
pub fn render_tera(text: &str, origin: &str, vars: &ScriptVars) -> Result<String, TemplateError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.register_filter("shq", shq_filter);
    let err = |e: tera::Error| {
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        TemplateError {
            origin: origin.to_string(),
            message,
        }
    };
    tera.add_raw_template(origin, text).map_err(err)?;
    let ctx = tera::Context::from_value(Value::Object(vars.to_context())).map_err(err)?;
    tera.render(origin, &ctx).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(n: usize) -> ScriptVars {
        ScriptVars {
            n: Some(n),
            queue: "short".into(),
            profile_dir: "/home/u/.ipython/profile_pbs".into(),
            cluster_id: "c1".into(),
            engine: "rpar-engine".into(),
            role: Some(Role::Engine),
            ..Default::default()
        }
    }

    #[test]
    fn seed_pbs_template_in_ipyparallel_syntax() {
        let t = "#PBS -l nodes={n/4}:ppn=4\n#PBS -q {queue}\n/usr/local/bin/mpiexec -n {n} rpar-engine --profile_dir={profile_dir}\n";
        let out = render(t, "seed", &vars(128)).unwrap();
        assert_eq!(
            out,
            "#PBS -l nodes=32:ppn=4\n#PBS -q short\n/usr/local/bin/mpiexec -n 128 rpar-engine --profile_dir=/home/u/.ipython/profile_pbs\n"
        );
        assert_eq!(
            render("{n//4} {n/4} {n%3} {(n+1)*2} {cluster_id}", "x", &vars(10)).unwrap(),
            "2 2.5 1 22 c1"
        );
        assert_eq!(
            render("echo ${{HOME}} {n}", "x", &vars(2)).unwrap(),
            "echo ${HOME} 2"
        );
        let e = render("{nodes}", "my.template", &vars(2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my.template") && e.contains("unknown variable \"nodes\""),
            "{e}"
        );
    }

    #[test]
    fn tera_user_template() {
        let out = render(
            "#SBATCH -n {{ n }}\n{% if queue %}#SBATCH -p {{ queue }}{% endif %}\n",
            "t",
            &vars(3),
        )
        .unwrap();
        assert_eq!(out, "#SBATCH -n 3\n#SBATCH -p short\n");
        let e = render("{{ n ", "bad.tera", &vars(3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.tera"), "{e}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(
            shell_join(&["mpiexec", "-n", "4", "--x=a b"]),
            "mpiexec -n 4 '--x=a b'"
        );
    }

    #[test]
    fn every_builtin_renders_and_keeps_directives_valid() {
        for s in System::ALL {
            for r in [Role::Engine, Role::Controller, Role::Cluster] {
                let Some(t) = builtin(s, r) else { continue };
                let out = render(t, &builtin_name(s, r), &vars(4)).unwrap();
                assert!(!out.contains("{{") && !out.contains("{%"), "{s:?} {r:?}");
            }
        }
    }
}
