//! The connection files (what they hold, `--reuse`) and the engine-state file (`--restore`).

use super::bind::Sockets;
use crate::hub::Sock;
use crate::settings::Settings;
use anyhow::{Context, Result};
use rpar_core::connection::{self, ClientInfo, EngineInfo};
use rpar_core::profile::ProfileDir;
use std::path::PathBuf;
use tracing::{error, info, warn};

/// Where the connection files go and what they hold.
pub struct Files {
    pub client: PathBuf,
    pub engine: PathBuf,
    pub state: PathBuf,
    keep: bool,
}

impl Files {
    /// The files of `cluster_id` in `profile`; `keep` leaves the connection files in place on
    /// exit (`--reuse`).
    pub(super) fn new(profile: &ProfileDir, cluster_id: &str, keep: bool) -> Files {
        Files {
            client: profile.connection_file(cluster_id, "client"),
            engine: profile.connection_file(cluster_id, "engine"),
            state: profile.log().join(format!("engines{cluster_id}.json")),
            keep,
        }
    }

    /// `--reuse`: key and ports from the existing files, when they load and agree.
    pub(super) fn reusable(&self) -> Option<(ClientInfo, EngineInfo)> {
        match (
            connection::read::<ClientInfo>(&self.client),
            connection::read::<EngineInfo>(&self.engine),
        ) {
            (Ok(c), Ok(e)) if c.key == e.key && c.registration == e.registration => Some((c, e)),
            (Ok(_), Ok(_)) => {
                error!(
                    "connection files disagree (key or registration port); starting with fresh ports"
                );
                None
            }
            (c, e) => {
                if let Err(err) = c.as_ref().map(|_| ()).and(e.as_ref().map(|_| ())) {
                    info!(error = %err, "no connection files to reuse; writing new ones");
                }
                None
            }
        }
    }

    /// Write both connection files (owner-only).
    pub(super) fn write(&self, client: &ClientInfo, engine: &EngineInfo) -> Result<()> {
        connection::write_private(&self.client, client)?;
        connection::write_private(&self.engine, engine)?;
        Ok(())
    }

    /// The saved engine state (`--restore`), if there is one that parses.
    pub(super) fn load_engines(&self) -> Option<serde_json::Value> {
        match std::fs::read_to_string(&self.state)
            .map(|t| serde_json::from_str::<serde_json::Value>(&t))
        {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                warn!(error = %e, "engine state file is not JSON; nothing restored");
                None
            }
            Err(e) => {
                warn!(error = %e, "no engine state file to restore");
                None
            }
        }
    }

    /// Rewrite `log/engines<cluster_id>.json`: written aside, then renamed, so a reader (or a
    /// crash) never sees a half-written file.
    pub(super) fn save_engines(&self, state: &serde_json::Value) {
        let tmp = self.state.with_extension("json.tmp");
        let res = std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &self.state));
        if let Err(err) = res {
            warn!(path = %self.state.display(), error = %err, "could not save engine state");
        }
    }

    pub(super) fn remove(&self) {
        if self.keep {
            return;
        }
        for p in [&self.client, &self.engine] {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), error = %e, "could not remove connection file");
                }
            }
        }
    }
}

/// The session key: from reused files, the settings, the key file, or a new one.
pub(super) fn session_key(
    settings: &Settings,
    reused: Option<&(ClientInfo, EngineInfo)>,
) -> Result<String> {
    Ok(match (reused, &settings.key, &settings.keyfile) {
        (Some((c, _)), _, _) => c.key.clone(),
        (None, Some(k), _) => k.clone(),
        (None, None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading Session.keyfile {f}"))?
            .trim()
            .to_string(),
        (None, None, None) => rpar_core::ids::new_id(),
    })
}

/// What the client and engine connection files hold for these bound sockets.
pub(super) fn connection_info(
    settings: &Settings,
    socks: &Sockets,
    key: &str,
) -> (ClientInfo, EngineInfo) {
    let location = if settings.location.is_empty() {
        connection::hostname().unwrap_or_else(|| "localhost".into())
    } else {
        settings.location.clone()
    };
    let tr = &settings.transport;
    let iface = |ip: &str| -> String {
        let ip = if ip == "*" { "0.0.0.0" } else { ip };
        format!("{tr}://{ip}")
    };
    let port = |s: Sock| socks.port(s);
    let engine_info = EngineInfo {
        ssh: settings.engine_ssh_server.clone(),
        interface: iface(&settings.engine_ip),
        registration: port(Sock::Registration),
        control: port(Sock::ControlEngine),
        mux: port(Sock::MuxEngine),
        task: port(Sock::TaskEngine),
        iopub: port(Sock::IopubEngine),
        hb_ping: port(Sock::HbPing),
        hb_pong: port(Sock::HbPong),
        broadcast: vec![port(Sock::BcastEngine)],
        key: key.to_string(),
        curve_serverkey: None,
        location: location.clone(),
        pack: "json".into(),
        unpack: "json".into(),
        signature_scheme: "hmac-sha256".into(),
        rpar_native: Some(connection::NativeInfo {
            version: rpar_core::native::VERSION,
            port: port(Sock::Native),
        }),
    };
    let client_info = ClientInfo {
        ssh: settings.ssh_server.clone(),
        interface: iface(&settings.client_ip),
        registration: port(Sock::Registration),
        control: port(Sock::ControlClient),
        mux: port(Sock::MuxClient),
        task: port(Sock::TaskClient),
        task_scheme: settings.scheme.clone(),
        iopub: port(Sock::IopubClient),
        notification: port(Sock::Notification),
        broadcast: port(Sock::BcastClient),
        key: key.to_string(),
        curve_serverkey: None,
        location,
        pack: "json".into(),
        unpack: "json".into(),
        signature_scheme: "hmac-sha256".into(),
    };
    (client_info, engine_info)
}
