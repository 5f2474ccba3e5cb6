//! GPU binding per rank (`rpar-engine --gpus=auto`, `c.IPEngine.gpus = 'auto'`).
//!
//! Before its Python starts, each rank is given its share of the node's GPUs through the
//! vendor's visibility variable: `CUDA_VISIBLE_DEVICES` (NVIDIA), `ROCR_VISIBLE_DEVICES` (AMD; a
//! `HIP_VISIBLE_DEVICES` the batch system set is split in place instead), `ZE_AFFINITY_MASK`
//! (Intel). The node-local rank and the number of ranks on the node come from an
//! `MPI_COMM_TYPE_SHARED` split of the job (so every launcher works: mpiexec, srun, hydra).
//!
//! The policy ([`bind`]) is a pure function:
//! * the device list is the one the batch system already set (Slurm `--gpus-per-task` /
//!   `--gres` set `CUDA_VISIBLE_DEVICES`), else `0..G` with G from `RPAR_ENGINE_GPUS=vendor:G`
//!   (the documented override: `nvidia:2`, `amd:8`, `intel:1`; tests use it to pretend a node
//!   has G devices), else from the system (`/dev/nvidia[0-9]*`, `nvidia-smi -L`, the DRM render
//!   nodes' PCI vendor ids under `/sys/class/drm` for AMD and Intel);
//! * with D devices and L ranks on the node: D >= L gives each rank a contiguous block
//!   (D / L devices, the first D % L ranks one more), so 4 ranks and 4 devices get one each;
//!   D < L shares them round-robin, local rank r -> device r mod D.
//!
//! `--gpus=none` (the default) leaves the environment alone.

use std::path::Path;

/// GPU vendors and the variable that selects devices for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
}

impl Vendor {
    pub const ALL: [Vendor; 3] = [Vendor::Nvidia, Vendor::Amd, Vendor::Intel];

    pub fn name(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "amd",
            Vendor::Intel => "intel",
        }
    }

    /// The variables a batch system may have set for this vendor, the one to set first.
    pub fn vars(self) -> &'static [&'static str] {
        match self {
            Vendor::Nvidia => &["CUDA_VISIBLE_DEVICES"],
            Vendor::Amd => &["ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"],
            Vendor::Intel => &["ZE_AFFINITY_MASK"],
        }
    }

    fn parse(s: &str) -> Option<Vendor> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nvidia" | "cuda" => Some(Vendor::Nvidia),
            "amd" | "rocm" | "hip" => Some(Vendor::Amd),
            "intel" | "ze" | "level_zero" => Some(Vendor::Intel),
            _ => None,
        }
    }
}

/// `--gpus` / `IPEngine.gpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    #[default]
    None,
    Auto,
}

impl Mode {
    pub fn parse(s: &str, setting: &str) -> Result<Mode, String> {
        match s.trim().trim_matches('\'').to_ascii_lowercase().as_str() {
            "none" | "" | "off" | "false" => Ok(Mode::None),
            "auto" | "on" | "true" => Ok(Mode::Auto),
            other => Err(format!(
                "{setting}={other:?}: expected 'auto' (one share of the node's GPUs per rank) or \
                 'none'"
            )),
        }
    }
}

/// The override `RPAR_ENGINE_GPUS=vendor:count`.
pub const OVERRIDE_VAR: &str = "RPAR_ENGINE_GPUS";

/// Parse `nvidia:2` (an error names the variable and the expected form).
pub fn parse_override(s: &str) -> Result<(Vendor, u32), String> {
    let bad = || {
        format!(
            "{OVERRIDE_VAR}={s:?}: expected VENDOR:COUNT with VENDOR one of nvidia, amd, intel \
             (e.g. {OVERRIDE_VAR}=nvidia:2)"
        )
    };
    let (v, n) = s.split_once(':').ok_or_else(bad)?;
    let vendor = Vendor::parse(v).ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    Ok((vendor, n))
}

/// Where the device list came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A list the batch system (or the user) set in this variable.
    Preset(&'static str),
    /// `RPAR_ENGINE_GPUS`.
    Override,
    /// Found on the node (how).
    Detected(String),
}

/// What a rank knows when it binds.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub mode: Mode,
    pub local_rank: u32,
    pub local_size: u32,
    /// Values of the vendors' variables already in the environment (name, value).
    pub preset: Vec<(&'static str, String)>,
    /// `RPAR_ENGINE_GPUS`, parsed.
    pub forced: Option<(Vendor, u32)>,
    /// What the node has (vendor, count, how it was found), in order of preference.
    pub detected: Vec<(Vendor, u32, String)>,
}

/// One rank's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub vendor: Vendor,
    pub var: &'static str,
    pub devices: Vec<String>,
    pub source: Source,
    pub local_rank: u32,
    pub local_size: u32,
    /// How many devices the list had.
    pub of: usize,
}

impl Binding {
    pub fn value(&self) -> String {
        self.devices.join(",")
    }

    /// One line for the log and `--check`.
    pub fn describe(&self) -> String {
        let from = match &self.source {
            Source::Preset(v) => format!("the {v} list already set"),
            Source::Override => OVERRIDE_VAR.to_string(),
            Source::Detected(how) => how.clone(),
        };
        format!(
            "{}={} (local rank {} of {} on this node; {} {} device(s) from {from})",
            self.var,
            self.value(),
            self.local_rank,
            self.local_size,
            self.of,
            self.vendor.name(),
        )
    }
}

/// Why a rank got no binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoBinding {
    Disabled,
    NoDevices,
}

/// Devices for local rank `r` of `l` from a list of `d` (see the module docs).
pub fn share(devices: &[String], r: u32, l: u32) -> Vec<String> {
    let d = devices.len();
    let r = usize::try_from(r).unwrap_or(0);
    let l = usize::try_from(l).unwrap_or(1).max(1);
    if d == 0 {
        return Vec::new();
    }
    if d < l {
        return vec![devices[r % d].clone()];
    }
    let (k, extra) = (d / l, d % l);
    let r = r % l;
    let start = r * k + r.min(extra);
    let len = k + usize::from(r < extra);
    devices[start..start + len].to_vec()
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// The binding policy (pure).
pub fn bind(inp: &Inputs) -> Result<Binding, NoBinding> {
    if inp.mode == Mode::None {
        return Err(NoBinding::Disabled);
    }
    let preset = |vendor: Vendor| {
        vendor.vars().iter().find_map(|var| {
            inp.preset
                .iter()
                .find(|(k, v)| k == var && !split_list(v).is_empty())
                .map(|(_, v)| (*var, split_list(v)))
        })
    };
    let (vendor, var, devices, source) = if let Some((vendor, n)) = inp.forced {
        match preset(vendor) {
            Some((var, list)) => (vendor, var, list, Source::Preset(var)),
            None => (
                vendor,
                vendor.vars()[0],
                (0..n).map(|i| i.to_string()).collect(),
                Source::Override,
            ),
        }
    } else if let Some((vendor, (var, list))) =
        Vendor::ALL.iter().find_map(|v| preset(*v).map(|p| (*v, p)))
    {
        (vendor, var, list, Source::Preset(var))
    } else if let Some((vendor, n, how)) = inp.detected.iter().find(|(_, n, _)| *n > 0) {
        (
            *vendor,
            vendor.vars()[0],
            (0..*n).map(|i| i.to_string()).collect(),
            Source::Detected(how.clone()),
        )
    } else {
        return Err(NoBinding::NoDevices);
    };
    if devices.is_empty() {
        return Err(NoBinding::NoDevices);
    }
    Ok(Binding {
        vendor,
        var,
        of: devices.len(),
        devices: share(&devices, inp.local_rank, inp.local_size),
        source,
        local_rank: inp.local_rank,
        local_size: inp.local_size,
    })
}

/// The vendors' variables present in this process's environment.
pub fn preset_from_env() -> Vec<(&'static str, String)> {
    Vendor::ALL
        .iter()
        .flat_map(|v| v.vars().iter())
        .filter_map(|var| std::env::var(var).ok().map(|val| (*var, val)))
        .collect()
}

/// The binding of this process from its environment and node (detection only when neither
/// a list nor the override is set). `Err`: a bad `RPAR_ENGINE_GPUS`.
pub fn for_this_rank(
    mode: Mode,
    local_rank: u32,
    local_size: u32,
) -> Result<Result<Binding, NoBinding>, String> {
    if mode == Mode::None {
        return Ok(Err(NoBinding::Disabled));
    }
    let forced = match std::env::var(OVERRIDE_VAR) {
        Ok(s) if !s.trim().is_empty() => Some(parse_override(&s)?),
        _ => None,
    };
    let preset = preset_from_env();
    let detected = if forced.is_none() && preset.is_empty() {
        detect()
    } else {
        Vec::new()
    };
    Ok(bind(&Inputs {
        mode,
        local_rank,
        local_size,
        preset,
        forced,
        detected,
    }))
}

/// What the node has: NVIDIA device nodes (else `nvidia-smi -L`), AMD and Intel render nodes.
pub fn detect() -> Vec<(Vendor, u32, String)> {
    let mut out = Vec::new();
    let nv = count_dev_nvidia(Path::new("/dev"));
    if nv > 0 {
        out.push((Vendor::Nvidia, nv, "/dev/nvidia[0-9]*".to_string()));
    } else if let Some(n) = nvidia_smi_count() {
        out.push((Vendor::Nvidia, n, "nvidia-smi -L".to_string()));
    }
    let (amd, intel) = count_render_nodes(Path::new("/sys/class/drm"));
    if amd > 0 && Path::new("/dev/kfd").exists() {
        out.push((
            Vendor::Amd,
            amd,
            "/sys/class/drm render nodes (AMD)".to_string(),
        ));
    }
    if intel > 0 {
        out.push((
            Vendor::Intel,
            intel,
            "/sys/class/drm render nodes (Intel)".to_string(),
        ));
    }
    out
}

fn count_dev_nvidia(dev: &Path) -> u32 {
    let Ok(rd) = std::fs::read_dir(dev) else {
        return 0;
    };
    let n = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("nvidia"))
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn nvidia_smi_count() -> Option<u32> {
    let out = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("GPU "))
        .count();
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// (AMD, Intel) render nodes by their PCI vendor id.
fn count_render_nodes(drm: &Path) -> (u32, u32) {
    let Ok(rd) = std::fs::read_dir(drm) else {
        return (0, 0);
    };
    let (mut amd, mut intel) = (0u32, 0u32);
    for e in rd.filter_map(|e| e.ok()) {
        if !e.file_name().to_string_lossy().starts_with("renderD") {
            continue;
        }
        match std::fs::read_to_string(e.path().join("device/vendor"))
            .unwrap_or_default()
            .trim()
        {
            "0x1002" => amd = amd.saturating_add(1),
            "0x8086" => intel = intel.saturating_add(1),
            _ => {}
        }
    }
    (amd, intel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(r: u32, l: u32) -> Inputs {
        Inputs {
            mode: Mode::Auto,
            local_rank: r,
            local_size: l,
            ..Default::default()
        }
    }

    fn devs(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[test]
    fn fewer_devices_than_ranks_round_robin() {
        let got: Vec<Vec<String>> = (0..4).map(|r| share(&devs(2), r, 4)).collect();
        assert_eq!(got, [["0"], ["1"], ["0"], ["1"]]);
    }

    #[test]
    fn more_devices_than_ranks_contiguous_blocks() {
        let got: Vec<Vec<String>> = (0..3).map(|r| share(&devs(8), r, 3)).collect();
        assert_eq!(
            got,
            vec![
                devs(8)[0..3].to_vec(),
                devs(8)[3..6].to_vec(),
                devs(8)[6..8].to_vec()
            ]
        );
        assert_eq!(share(&devs(4), 2, 4), ["2"]);
        assert_eq!(share(&devs(0), 0, 4), Vec::<String>::new());
        // a local size of 0 (unknown) counts as 1
        assert_eq!(share(&devs(2), 0, 0), ["0", "1"]);
    }

    #[test]
    fn override_pretends_devices() {
        let mut i = inputs(3, 4);
        i.forced = Some((Vendor::Nvidia, 2));
        let b = bind(&i).unwrap();
        assert_eq!(
            (b.var, b.value(), b.of),
            ("CUDA_VISIBLE_DEVICES", "1".into(), 2)
        );
        assert_eq!(b.source, Source::Override);
        i.forced = Some((Vendor::Intel, 1));
        assert_eq!(bind(&i).unwrap().var, "ZE_AFFINITY_MASK");
    }

    #[test]
    fn preset_list_is_split_not_replaced() {
        let mut i = inputs(2, 4);
        i.preset = vec![("CUDA_VISIBLE_DEVICES", "4,5,6,7".into())];
        i.detected = vec![(Vendor::Nvidia, 8, "x".into())];
        let b = bind(&i).unwrap();
        assert_eq!(b.value(), "6");
        assert_eq!(b.source, Source::Preset("CUDA_VISIBLE_DEVICES"));
        // the override's count gives way to the batch system's list
        i.forced = Some((Vendor::Nvidia, 2));
        assert_eq!(bind(&i).unwrap().value(), "6");
        // AMD: a HIP list is split in HIP_VISIBLE_DEVICES, ROCR is preferred when both are set
        let mut a = inputs(1, 2);
        a.preset = vec![("HIP_VISIBLE_DEVICES", "0,1".into())];
        assert_eq!(
            (bind(&a).unwrap().var, bind(&a).unwrap().value()),
            ("HIP_VISIBLE_DEVICES", "1".into())
        );
        a.preset.push(("ROCR_VISIBLE_DEVICES", "2,3".into()));
        assert_eq!(bind(&a).unwrap().var, "ROCR_VISIBLE_DEVICES");
        assert_eq!(bind(&a).unwrap().value(), "3");
    }

    #[test]
    fn detected_devices_and_none() {
        let mut i = inputs(1, 2);
        assert_eq!(bind(&i), Err(NoBinding::NoDevices));
        i.detected = vec![
            (Vendor::Nvidia, 0, "a".into()),
            (Vendor::Amd, 4, "b".into()),
        ];
        let b = bind(&i).unwrap();
        assert_eq!((b.var, b.value()), ("ROCR_VISIBLE_DEVICES", "2,3".into()));
        // an empty preset list is no list
        i.preset = vec![("CUDA_VISIBLE_DEVICES", "".into())];
        assert_eq!(bind(&i).unwrap().vendor, Vendor::Amd);
        i.mode = Mode::None;
        assert_eq!(bind(&i), Err(NoBinding::Disabled));
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_override("nvidia:2"), Ok((Vendor::Nvidia, 2)));
        assert_eq!(parse_override("AMD:8"), Ok((Vendor::Amd, 8)));
        assert!(parse_override("nvidia")
            .unwrap_err()
            .contains("RPAR_ENGINE_GPUS"));
        assert!(parse_override("tpu:2").is_err());
        assert!(parse_override("nvidia:-1").is_err());
        assert_eq!(Mode::parse("auto", "--gpus"), Ok(Mode::Auto));
        assert_eq!(Mode::parse("'none'", "--gpus"), Ok(Mode::None));
        assert!(Mode::parse("all", "--gpus").unwrap_err().contains("--gpus"));
    }

    #[test]
    fn device_nodes_counted() {
        let t = tempfile::tempdir().unwrap();
        for n in [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
        ] {
            std::fs::write(t.path().join(n), "").unwrap();
        }
        assert_eq!(count_dev_nvidia(t.path()), 2);
        let drm = t.path().join("drm");
        for (node, vendor) in [
            ("renderD128", "0x1002"),
            ("renderD129", "0x8086"),
            ("card0", "0x1002"),
        ] {
            std::fs::create_dir_all(drm.join(node).join("device")).unwrap();
            std::fs::write(drm.join(node).join("device/vendor"), format!("{vendor}\n")).unwrap();
        }
        assert_eq!(count_render_nodes(&drm), (1, 1));
    }
}
