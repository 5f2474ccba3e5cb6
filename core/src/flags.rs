//! Command-line pieces all three programs share: the profile flags ([`ProfileFlags`]) and
//! traitlets' `--foo_bar` spelling of `--foo-bar` ([`normalize`]).

use crate::profile::ProfileOpts;
use std::path::PathBuf;

/// `--profile`, `--profile-dir`, `--ipython-dir`, `--cluster-id` (flattened into each program's
/// clap command line).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ProfileFlags {
    /// Profile name (directory $IPYTHONDIR/profile_<name>).
    #[arg(long)]
    pub profile: Option<String>,
    /// Profile directory (overrides --profile).
    #[arg(long)]
    pub profile_dir: Option<PathBuf>,
    /// IPython directory (default $IPYTHONDIR or ~/.ipython).
    #[arg(long)]
    pub ipython_dir: Option<PathBuf>,
    /// Cluster id: connection files ipcontroller-<id>-{client,engine}.json.
    #[arg(long)]
    pub cluster_id: Option<String>,
}

impl ProfileFlags {
    /// What they say about the profile, for [`crate::profile::ProfileDir::resolve`].
    pub fn opts(&self) -> ProfileOpts {
        ProfileOpts {
            profile: self.profile.clone(),
            profile_dir: self.profile_dir.clone(),
            ipython_dir: self.ipython_dir.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

/// `--foo_bar[=v]` → `--foo-bar[=v]` (traitlets accepts either spelling; the seed's manual
/// writes `--profile_dir=...`). Only the flag name changes, never its value; positional
/// arguments and `--Class.trait=value` settings are left alone.
pub fn normalize_flag(arg: String) -> String {
    let Some(body) = arg.strip_prefix("--") else {
        return arg;
    };
    let (name, val) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    if !name.contains('_') || name.contains('.') {
        return arg;
    }
    let name = name.replace('_', "-");
    match val {
        Some(v) => format!("--{name}={v}"),
        None => format!("--{name}"),
    }
}

/// [`normalize_flag`] on every argument before a `--` (what follows it is passed on as typed).
pub fn normalize<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut after = false;
    args.into_iter()
        .map(|a| {
            if after || a == "--" {
                after = true;
                a
            } else {
                normalize_flag(a)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_become_dashes_in_flag_names_only() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize(v(&[
                "rpar",
                "--profile_dir=/a_b",
                "--log_level",
                "x_y",
                "--Cluster.engine_timeout=1",
                "--",
                "--keep_me",
            ])),
            v(&[
                "rpar",
                "--profile-dir=/a_b",
                "--log-level",
                "x_y",
                "--Cluster.engine_timeout=1",
                "--",
                "--keep_me",
            ])
        );
    }

    #[test]
    fn profile_flags_parse_in_any_command() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            p: ProfileFlags,
        }
        let c = <Cmd as clap::Parser>::parse_from(["x", "--profile=mpi", "--cluster-id=c"]);
        assert_eq!(c.p.opts().profile.as_deref(), Some("mpi"));
        assert_eq!(c.p.cluster_id.as_deref(), Some("c"));
    }
}
