//! `rpar profile create|list|locate`: IPython profile directories with the three parallel
//! config files, every setting listed (commented out) with its default and meaning.

use rpar_core::config::schema::{self, App, Status};
use rpar_core::profile::ProfileDir;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// The commented default config file of a program: every class it reads, every trait with
/// its default and help. All lines are comments except `c = get_config()`, so loading it needs
/// no Python.
pub fn default_config_text(app: App) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Configuration file for {} (rpar).", program_name(app));
    let _ = writeln!(s, "#");
    let _ = writeln!(s, "# Uncomment and edit the settings you need. This is Python: `c` collects the settings, and");
    let _ = writeln!(s, "# any Python (os.environ.get(...), socket calls, ...) may compute them. The old names of the");
    let _ = writeln!(
        s,
        "# IPython.parallel documentation work too (HubFactory -> IPController, IPEngineApp ->"
    );
    let _ = writeln!(s, "# IPEngine, IPClusterEngines/IPClusterStart -> Cluster, MPIExec* -> MPI*). Any setting can");
    let _ = writeln!(
        s,
        "# also be given on the command line as --Class.trait=value. A {}_config.json next to",
        app.name()
    );
    let _ = writeln!(
        s,
        "# this file ({{\"Class\": {{\"trait\": value}}}}) is read after it and wins."
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "c = get_config()  # noqa");
    for class in schema::classes_for(app) {
        if class.traits.is_empty() {
            continue;
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "#{}", "-".repeat(78));
        let _ = writeln!(s, "# {}: {}", class.name, class.help);
        if !class.parents.is_empty() {
            let _ = writeln!(
                s,
                "# (also applies settings made on {})",
                class.parents.join(", ")
            );
        }
        let _ = writeln!(s, "#{}", "-".repeat(78));
        for t in class.traits {
            let _ = writeln!(s);
            let note = match t.status {
                Status::Ignored(_) => " [accepted for compatibility, ignored]",
                Status::Used => "",
            };
            for line in wrap(&format!("{}{note}", t.help), 76) {
                let _ = writeln!(s, "#  {line}");
            }
            let default = if t.default.starts_with('<') {
                format!("None  # default: {}", t.default.trim_matches(['<', '>']))
            } else {
                t.default.to_string()
            };
            let _ = writeln!(s, "# c.{}.{} = {}", class.name, t.name, default);
        }
    }
    s
}

fn program_name(app: App) -> &'static str {
    match app {
        App::Controller => "rpar-controller (ipcontroller)",
        App::Engine => "rpar-engine (ipengine)",
        App::Cluster => "rpar cluster (ipcluster)",
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + w.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Create (or complete) a profile. Existing config files are kept unless `reset`.
/// Returns the files written.
pub fn create(profile: &ProfileDir, parallel: bool, reset: bool) -> io::Result<Vec<PathBuf>> {
    profile.ensure()?;
    let mut written = Vec::new();
    let readme = profile.startup().join("README");
    if !readme.exists() {
        std::fs::write(
            &readme,
            "This is the IPython startup directory\n\n.py and .ipy files in this directory will be run *prior* to any code or files specified\nvia the exec_lines or exec_files configurables whenever you load this profile.\n",
        )?;
    }
    if parallel {
        for app in [App::Controller, App::Engine, App::Cluster] {
            let path = profile.path.join(app.config_file());
            if path.exists() && !reset {
                continue;
            }
            std::fs::write(&path, default_config_text(app))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Profiles under an IPython directory: (name, path).
pub fn list(ipython_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(ipython_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_str()?
                .strip_prefix("profile_")?
                .to_string();
            Some((name, e.path()))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::config::Config;

    #[test]
    fn default_files_list_every_setting_and_load_cleanly() {
        for app in [App::Controller, App::Engine, App::Cluster] {
            let text = default_config_text(app);
            for class in schema::classes_for(app) {
                for t in class.traits {
                    assert!(
                        text.contains(&format!("# c.{}.{} = ", class.name, t.name)),
                        "{}.{}",
                        class.name,
                        t.name
                    );
                }
            }
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join(app.config_file()), &text).unwrap();
            let cfg = Config::load(d.path(), app.name(), &[]).unwrap();
            assert!(cfg.settings().is_empty());
        }
        let c = default_config_text(App::Controller);
        assert!(c.contains("# c.IPController.ip = '127.0.0.1'"));
        assert!(c.contains("# c.HeartMonitor.period = 3000"));
    }

    #[test]
    fn uncommented_defaults_are_valid_settings() {
        // Every default that is a literal must load when uncommented (keeps the table honest).
        for app in [App::Controller, App::Engine, App::Cluster] {
            let text: String = default_config_text(app)
                .lines()
                .filter(|l| l.starts_with("# c.") && !l.contains("None  # default"))
                .map(|l| format!("{}\n", &l[2..]))
                .collect();
            let d = tempfile::tempdir().unwrap();
            std::fs::write(
                d.path().join(app.config_file()),
                format!("c = get_config()\n{text}"),
            )
            .unwrap();
            if let Err(e) = Config::load(d.path(), app.name(), &[]) {
                panic!("{}: {e}", app.name());
            }
        }
    }
}
