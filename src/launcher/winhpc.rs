//! Windows HPC Server: a job description XML (pure renderer) submitted with
//! `job submit /jobfile:<file> [/scheduler:<host>]` when the `job` command exists; cancelled
//! with `job cancel <id>`.

use super::{
    write_log_file, Handle, LaunchError, LaunchSpec, Launcher, LauncherKind, Role, Runner,
};
use crate::jobscript::shell_join;

/// Windows HPC settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinHpcSettings {
    pub job_cmd: String,
    pub scheduler: String,
    pub job_file_name: Option<String>,
    pub job_id_regexp: String,
}

impl Default for WinHpcSettings {
    fn default() -> Self {
        WinHpcSettings {
            job_cmd: "job".into(),
            scheduler: String::new(),
            job_file_name: None,
            job_id_regexp: r"\d+".into(),
        }
    }
}

/// The Windows HPC launcher.
#[derive(Debug, Clone, Default)]
pub struct WinHpcLauncher {
    pub settings: WinHpcSettings,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl WinHpcLauncher {
    /// The job XML (pure). Engines: one task running `mpiexec -n N` over N cores.
    pub fn render(&self, spec: &LaunchSpec, role: Role) -> String {
        let (name, cores, cmd) = match role {
            Role::Controller => (
                "rpar-controller",
                1,
                shell_join(&[spec.controller_cmd.clone(), spec.controller_args.clone()].concat()),
            ),
            _ => (
                "rpar-engine",
                spec.n.max(1),
                format!(
                    "mpiexec -n {} {}",
                    spec.n,
                    shell_join(&[spec.engine_cmd.clone(), spec.engine_args.clone()].concat())
                ),
            ),
        };
        let mut env = String::new();
        for (k, v) in &spec.env {
            if k.starts_with("IPP_") {
                env.push_str(&format!(
                    "        <Variable><Name>{}</Name><Value>{}</Value></Variable>\n",
                    xml_escape(k),
                    xml_escape(v)
                ));
            }
        }
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Job xmlns="http://schemas.microsoft.com/HPCS2008/scheduler/" Version="3.000" Name="{name}" IsExclusive="false" MinCores="{cores}" MaxCores="{cores}" UnitType="Core" RunUntilCanceled="true">
  <Tasks>
    <Task Name="{name}" MinCores="{cores}" MaxCores="{cores}" CommandLine="{cmd}" WorkDirectory="{wd}" StdOutFilePath="{out}" StdErrFilePath="{out}">
      <EnvironmentVariables>
{env}      </EnvironmentVariables>
    </Task>
  </Tasks>
</Job>
"#,
            cmd = xml_escape(&cmd),
            wd = xml_escape(&spec.work_dir.display().to_string()),
            out = xml_escape(
                &spec
                    .log_dir()
                    .join(format!("{}.out", spec.stem(role)))
                    .display()
                    .to_string()
            ),
        )
    }
}

impl Launcher for WinHpcLauncher {
    fn kind(&self) -> LauncherKind {
        LauncherKind::WinHpc
    }

    fn render(&self, spec: &LaunchSpec, role: Role) -> Result<String, LaunchError> {
        Ok(WinHpcLauncher::render(self, spec, role))
    }

    fn start(
        &self,
        spec: &LaunchSpec,
        role: Role,
        runner: &dyn Runner,
    ) -> Result<Vec<Handle>, LaunchError> {
        let s = &self.settings;
        let file = spec.log_dir().join(
            s.job_file_name
                .clone()
                .unwrap_or_else(|| format!("{}.xml", spec.stem(role))),
        );
        write_log_file(spec, &file, &self.render(spec, role))?;
        if runner.which(&s.job_cmd).is_none() {
            return Err(LaunchError::Submit {
                system: LauncherKind::WinHpc,
                command: s.job_cmd.clone(),
                code: None,
                stderr: "the Windows HPC `job` command is not found on this machine; submit the job file yourself with `job submit /jobfile:FILE`".into(),
                script: Some(file),
            });
        }
        let mut argv = vec![
            s.job_cmd.clone(),
            "submit".into(),
            format!("/jobfile:{}", file.display()),
        ];
        if !s.scheduler.is_empty() {
            argv.push(format!("/scheduler:{}", s.scheduler));
        }
        let out = runner
            .run(&argv, None, &spec.env)
            .map_err(|e| LaunchError::Submit {
                system: LauncherKind::WinHpc,
                command: argv.join(" "),
                code: None,
                stderr: e.to_string(),
                script: Some(file.clone()),
            })?;
        let id = regex::Regex::new(&s.job_id_regexp)
            .ok()
            .and_then(|re| re.find(&out.stdout).map(|m| m.as_str().to_string()))
            .filter(|_| out.success())
            .ok_or_else(|| LaunchError::Submit {
                system: LauncherKind::WinHpc,
                command: argv.join(" "),
                code: out.code,
                stderr: format!("{} {}", out.stdout.trim(), out.stderr.trim()),
                script: Some(file.clone()),
            })?;
        let mut delete = vec![s.job_cmd.clone(), "cancel".into()];
        if !s.scheduler.is_empty() {
            delete.push(format!("/scheduler:{}", s.scheduler));
        }
        Ok(vec![Handle::Job {
            system: LauncherKind::WinHpc,
            job_id: id,
            output: spec.log_dir().join(format!("{}.out", spec.stem(role))),
            script: file,
            delete_command: delete,
            status_command: Vec::new(),
        }])
    }
}
