//! The cluster file, `security/cluster-<cluster_id>.json`: what a cluster started (the
//! launchers' handles), so `stop` and `list` work from another shell.

use crate::launcher::{Handle, Liveness, Runner};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cluster file, `security/cluster-<cluster_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterFile {
    pub cluster: ClusterInfo,
    pub controller: Part,
    pub engines: EngineParts,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub profile_dir: PathBuf,
    pub n: usize,
    pub controller_ip: String,
    pub controller_location: String,
    pub controller_args: Vec<String>,
    pub delay: f64,
    /// `rpar` (distinguishes rpar's cluster files from ipyparallel's).
    pub class: String,
    /// The foreground `rpar cluster start` process, if any.
    pub rpar_pid: Option<u32>,
    pub rpar_start_time: Option<u64>,
    pub co_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Part {
    pub class: String,
    pub handles: Vec<Handle>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EngineParts {
    pub class: String,
    pub sets: BTreeMap<String, EngineSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EngineSet {
    pub class: String,
    pub n: usize,
    pub handles: Vec<Handle>,
}

impl ClusterFile {
    pub fn path(profile_dir: &Path, cluster_id: &str) -> PathBuf {
        profile_dir
            .join("security")
            .join(format!("cluster-{cluster_id}.json"))
    }
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parse {} (not an rpar cluster file?)", path.display()))
    }
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.cluster.profile_dir, &self.cluster.cluster_id);
        Ok(rpar_core::connection::write_private(&path, self)?)
    }
    pub fn remove(&self) {
        let _ = std::fs::remove_file(Self::path(
            &self.cluster.profile_dir,
            &self.cluster.cluster_id,
        ));
    }
    pub(crate) fn all_engine_handles(&self) -> impl Iterator<Item = &Handle> {
        self.engines.sets.values().flat_map(|s| s.handles.iter())
    }
    /// Is anything of this cluster still running (controller first)?
    pub fn running(&self, runner: &dyn Runner) -> bool {
        self.controller
            .handles
            .iter()
            .chain(self.all_engine_handles())
            .any(|h| !matches!(h.liveness(runner), Liveness::Finished))
    }
    pub fn engine_count(&self) -> usize {
        self.engines.sets.values().map(|s| s.n).sum()
    }
}

/// The cluster files of a profile, sorted.
pub fn cluster_files(profile_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(profile_dir.join("security"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cluster-") && n.ends_with(".json"))
        })
        .collect();
    v.sort();
    v
}
