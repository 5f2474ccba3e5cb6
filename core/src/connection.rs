//! The controller's connection files, `ipcontroller[-<id>]-client.json` and `-engine.json`.
//!
//! Field names, types and meaning follow ipyparallel 9.x exactly (reference §1.3): the Python
//! client and Python engines read these files as they are. rpar may add fields (readers ignore
//! unknown keys). Files are written with mode 0600.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("cannot read connection file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("connection file {path} is not valid: {err}")]
    Parse { path: String, err: String },
    #[error("cannot write connection file {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// What a client reads (`ipcontroller-client.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub ssh: String,
    pub interface: String,
    pub registration: u16,
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub task_scheme: String,
    pub iopub: u16,
    pub notification: u16,
    pub broadcast: u16,
    pub key: String,
    #[serde(default)]
    pub curve_serverkey: Option<String>,
    #[serde(default)]
    pub location: String,
    #[serde(default = "json_str")]
    pub pack: String,
    #[serde(default = "json_str")]
    pub unpack: String,
    #[serde(default = "sha256_str")]
    pub signature_scheme: String,
}

/// What an engine reads (`ipcontroller-engine.json`, or `$IPP_CONNECTION_INFO`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    #[serde(default)]
    pub ssh: String,
    pub interface: String,
    pub registration: u16,
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub iopub: u16,
    pub hb_ping: u16,
    pub hb_pong: u16,
    pub broadcast: Vec<u16>,
    pub key: String,
    #[serde(default)]
    pub curve_serverkey: Option<String>,
    #[serde(default)]
    pub location: String,
    #[serde(default = "json_str")]
    pub pack: String,
    #[serde(default = "json_str")]
    pub unpack: String,
    #[serde(default = "sha256_str")]
    pub signature_scheme: String,
    /// rpar-controller's native engine transport (absent from ipyparallel's files; Python
    /// engines and clients ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpar_native: Option<NativeInfo>,
}

/// The `rpar_native` field of `ipcontroller-engine.json`: where rank 0 of an MPI job connects
/// its one job connection (see [`crate::native`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeInfo {
    /// The native protocol version the controller speaks.
    pub version: u16,
    /// The port of its native ROUTER (on `interface`).
    pub port: u16,
}

fn json_str() -> String {
    "json".to_string()
}
fn sha256_str() -> String {
    "hmac-sha256".to_string()
}

/// `interface` + port, as ipyparallel builds URLs (`tcp://ip:port`, `ipc://path-port`).
pub fn url(interface: &str, port: u16) -> String {
    if interface.starts_with("ipc://") {
        format!("{interface}-{port}")
    } else {
        format!("{interface}:{port}")
    }
}

/// Replace a wildcard interface (`*`, `0.0.0.0`) by something a peer can connect to: loopback
/// when `location` is this machine, else `location` itself.
pub fn disambiguate_interface(interface: &str, location: &str) -> String {
    let (scheme, ip) = match interface.split_once("://") {
        Some((s, ip)) => (s, ip),
        None => ("tcp", interface),
    };
    if ip != "*" && ip != "0.0.0.0" {
        return interface.to_string();
    }
    let local = location.is_empty() || is_local_name(location);
    let host = if local { "127.0.0.1" } else { location };
    format!("{scheme}://{host}")
}

fn is_local_name(name: &str) -> bool {
    if name == "localhost" || name.starts_with("127.") || name == "::1" {
        return true;
    }
    hostname().map(|h| h == name).unwrap_or(false)
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Read and parse a JSON connection file.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConnectionError> {
    let text = fs::read_to_string(path).map_err(|source| ConnectionError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|err| ConnectionError::Parse {
        path: path.display().to_string(),
        err,
    })
}

/// Parse connection JSON from text (e.g. `$IPP_CONNECTION_INFO`).
pub fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Write `value` as indented JSON with mode 0600 (created 0600, never briefly world-readable).
pub fn write_private<T: Serialize>(path: &Path, value: &T) -> Result<(), ConnectionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ConnectionError::Write {
        path: path.display().to_string(),
        source,
    };
    let text = serde_json::to_string_pretty(value).map_err(|e| err(io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().ok();
    crate::profile::set_mode(&tmp, 0o600).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = r#"{
  "ssh": "", "interface": "tcp://127.0.0.1", "registration": 36701, "control": 50481,
  "mux": 56721, "task": 42105, "task_scheme": "leastload", "iopub": 42577,
  "notification": 48523, "broadcast": 41663, "key": "d501ea55-53b9c3fafbeb72f1fa2fce0c",
  "curve_serverkey": null, "location": "vm", "pack": "json", "unpack": "json",
  "signature_scheme": "hmac-sha256"}"#;

    const ENGINE: &str = r#"{
  "ssh": "", "interface": "tcp://127.0.0.1", "registration": 36701, "control": 53991,
  "mux": 58681, "task": 34463, "iopub": 38255, "hb_ping": 48771, "hb_pong": 48129,
  "broadcast": [33309, 60705], "key": "d501ea55-53b9c3fafbeb72f1fa2fce0c",
  "curve_serverkey": null, "location": "vm", "pack": "json", "unpack": "json",
  "signature_scheme": "hmac-sha256"}"#;

    #[test]
    fn reads_real_ipyparallel_files() {
        let c: ClientInfo = parse(CLIENT).unwrap();
        assert_eq!(c.task_scheme, "leastload");
        assert_eq!(c.broadcast, 41663);
        let e: EngineInfo = parse(ENGINE).unwrap();
        assert_eq!(e.broadcast, vec![33309, 60705]);
        assert_eq!(url(&e.interface, e.hb_ping), "tcp://127.0.0.1:48771");
    }

    #[test]
    fn write_is_private_and_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ipcontroller-client.json");
        let c: ClientInfo = parse(CLIENT).unwrap();
        write_private(&p, &c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back: ClientInfo = read(&p).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn wildcard_interfaces() {
        assert_eq!(
            disambiguate_interface("tcp://*", "localhost"),
            "tcp://127.0.0.1"
        );
        assert_eq!(
            disambiguate_interface("tcp://0.0.0.0", "10.0.1.5"),
            "tcp://10.0.1.5"
        );
        assert_eq!(
            disambiguate_interface("tcp://10.1.1.1", "x"),
            "tcp://10.1.1.1"
        );
    }
}
