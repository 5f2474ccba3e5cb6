//! IPython profile directories, where every rpar and ipyparallel program meets.
//!
//! `$IPYTHONDIR/profile_<name>/` (IPYTHONDIR defaults to `~/.ipython`) with `security/` (0700,
//! connection and cluster files), `log/`, `pid/` and `startup/`. The Python client looks for
//! `security/ipcontroller[-<cluster_id>]-client.json` there, so `Client(profile="mpi")` finds an
//! rpar controller with no other argument.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What the user said about the profile, before resolution.
#[derive(Debug, Clone, Default)]
pub struct ProfileOpts {
    pub profile: Option<String>,
    pub profile_dir: Option<PathBuf>,
    pub ipython_dir: Option<PathBuf>,
    pub cluster_id: Option<String>,
}

/// `--ipython-dir`, else `$IPYTHONDIR`, else `~/.ipython`.
pub fn ipython_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return expand_tilde(p);
    }
    if let Some(d) = std::env::var_os("IPYTHONDIR").filter(|d| !d.is_empty()) {
        return expand_tilde(Path::new(&d));
    }
    home_dir().join(".ipython")
}

/// The user's home directory (`$HOME`, else the password database).
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_dir.is_null() {
            let c = std::ffi::CStr::from_ptr((*pw).pw_dir);
            return PathBuf::from(c.to_string_lossy().into_owned());
        }
    }
    PathBuf::from("/")
}

/// Expand a leading `~/`.
pub fn expand_tilde(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => p.to_path_buf(),
    }
}

/// A resolved profile directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileDir {
    pub path: PathBuf,
}

impl ProfileDir {
    /// `--profile-dir`, else `--profile` under the IPython dir, else `$IPP_PROFILE_DIR`,
    /// else `profile_default`.
    pub fn resolve(opts: &ProfileOpts) -> ProfileDir {
        if let Some(d) = &opts.profile_dir {
            return ProfileDir {
                path: absolute(&expand_tilde(d)),
            };
        }
        if let Some(name) = &opts.profile {
            return ProfileDir {
                path: absolute(
                    &ipython_dir(opts.ipython_dir.as_deref()).join(format!("profile_{name}")),
                ),
            };
        }
        if let Some(d) = std::env::var_os("IPP_PROFILE_DIR").filter(|d| !d.is_empty()) {
            return ProfileDir {
                path: absolute(&expand_tilde(Path::new(&d))),
            };
        }
        ProfileDir {
            path: absolute(&ipython_dir(opts.ipython_dir.as_deref()).join("profile_default")),
        }
    }

    /// Create the directory and its `security/` (0700), `log/`, `pid/`, `startup/`.
    pub fn ensure(&self) -> io::Result<()> {
        for sub in ["", "log", "pid", "startup"] {
            fs::create_dir_all(self.path.join(sub))?;
        }
        let sec = self.security();
        fs::create_dir_all(&sec)?;
        set_mode(&sec, 0o700)?;
        Ok(())
    }

    pub fn security(&self) -> PathBuf {
        self.path.join("security")
    }
    pub fn log(&self) -> PathBuf {
        self.path.join("log")
    }
    pub fn pid(&self) -> PathBuf {
        self.path.join("pid")
    }
    pub fn startup(&self) -> PathBuf {
        self.path.join("startup")
    }

    /// `security/ipcontroller[-<cluster_id>]-<kind>.json`, kind = `client` or `engine`.
    pub fn connection_file(&self, cluster_id: &str, kind: &str) -> PathBuf {
        self.security().join(connection_file_name(cluster_id, kind))
    }

    /// The profile's name, if the directory is called `profile_<name>`.
    pub fn name(&self) -> Option<String> {
        self.path
            .file_name()?
            .to_str()?
            .strip_prefix("profile_")
            .map(str::to_string)
    }
}

/// `ipcontroller[-<cluster_id>]-<kind>.json`.
pub fn connection_file_name(cluster_id: &str, kind: &str) -> String {
    if cluster_id.is_empty() {
        format!("ipcontroller-{kind}.json")
    } else {
        format!("ipcontroller-{cluster_id}-{kind}.json")
    }
}

/// The cluster id: explicit, else `$IPP_CLUSTER_ID`, else empty.
pub fn cluster_id(explicit: Option<&str>) -> String {
    if let Some(c) = explicit {
        return c.to_string();
    }
    std::env::var("IPP_CLUSTER_ID").unwrap_or_default()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// chmod.
pub fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dirs_win() {
        let o = ProfileOpts {
            profile: Some("mpi".into()),
            ipython_dir: Some("/tmp/ipy".into()),
            ..Default::default()
        };
        assert_eq!(
            ProfileDir::resolve(&o).path,
            PathBuf::from("/tmp/ipy/profile_mpi")
        );
        let o = ProfileOpts {
            profile: Some("mpi".into()),
            profile_dir: Some("/x/y".into()),
            ..Default::default()
        };
        assert_eq!(ProfileDir::resolve(&o).path, PathBuf::from("/x/y"));
    }

    #[test]
    fn file_names() {
        assert_eq!(
            connection_file_name("", "client"),
            "ipcontroller-client.json"
        );
        assert_eq!(
            connection_file_name("abc", "engine"),
            "ipcontroller-abc-engine.json"
        );
    }

    #[test]
    fn ensure_creates_layout() {
        let t = tempfile::tempdir().unwrap();
        let p = ProfileDir {
            path: t.path().join("profile_x"),
        };
        p.ensure().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let m = fs::metadata(p.security()).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o700);
        assert!(p.log().is_dir() && p.pid().is_dir() && p.startup().is_dir());
        assert_eq!(p.name().as_deref(), Some("x"));
    }
}
