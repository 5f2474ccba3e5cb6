//! CurveZMQ on rank 0's sockets, as ipengine sets it up (ipyparallel >= 7.1).
//!
//! The controller's public key is the connection file's `curve_serverkey` (first), else
//! `IPEngine.curve_serverkey`, else `$IPP_CURVE_SERVERKEY`. With a server key every socket rank 0
//! opens (the compat sockets, made by [`crate::net::Contexts`]; the native job connection,
//! [`crate::native::JobConn::connect`]; the nanny's) connects as a CURVE client with the job's
//! key pair: `IPEngine.curve_publickey` / `curve_secretkey`, else
//! `$IPP_CURVE_PUBLICKEY` / `$IPP_CURVE_SECRETKEY`, else a new pair made at start. Without a
//! server key nothing changes.

use anyhow::{bail, Result};
use rpar_core::curve::{self, CurveKey, CurveKeyPair};
use serde::{Deserialize, Serialize};

/// The keys rank 0's sockets connect with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientCurve {
    /// The controller's public key.
    pub server: CurveKey,
    /// This job's own pair.
    pub keys: CurveKeyPair,
}

/// The engine's CURVE settings from its config (each empty when not set).
#[derive(Debug, Clone, Default)]
pub struct CurveSettings {
    pub serverkey: Option<String>,
    pub publickey: Option<String>,
    pub secretkey: Option<String>,
}

/// Resolve the engine's CURVE keys; `None`: no CURVE (no server key anywhere).
pub fn resolve(conn_serverkey: Option<&str>, cfg: &CurveSettings) -> Result<Option<ClientCurve>> {
    resolve_with(conn_serverkey, cfg, |var| std::env::var(var).ok())
}

/// [`resolve`], with the environment variables read by `env`.
fn resolve_with(
    conn_serverkey: Option<&str>,
    cfg: &CurveSettings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ClientCurve>> {
    let from_env = |var: &str| curve::optional(&format!("${var}"), env(var).as_deref());
    let server = match curve::optional("the connection file's curve_serverkey", conn_serverkey)? {
        Some(k) => Some(k),
        None => match curve::optional("IPEngine.curve_serverkey", cfg.serverkey.as_deref())? {
            Some(k) => Some(k),
            None => from_env(curve::SERVERKEY_VAR)?,
        },
    };
    let Some(server) = server else {
        return Ok(None);
    };
    if !curve::available() {
        bail!(
            "the controller uses CurveZMQ (curve_serverkey is set) but this rpar-engine's libzmq \
             has no CURVE: build rpar against a libzmq with libsodium (the README's build requirements: \
             apt-get install libzmq3-dev, then cargo build)"
        );
    }
    let public = match curve::optional("IPEngine.curve_publickey", cfg.publickey.as_deref())? {
        Some(k) => Some(k),
        None => from_env(curve::PUBLICKEY_VAR)?,
    };
    let secret = match curve::optional("IPEngine.curve_secretkey", cfg.secretkey.as_deref())? {
        Some(k) => Some(k),
        None => from_env(curve::SECRETKEY_VAR)?,
    };
    let keys = match curve::pair(
        public,
        secret,
        ("IPEngine.curve_publickey", "IPEngine.curve_secretkey"),
    )? {
        Some(k) => k,
        None => curve::generate()?,
    };
    Ok(Some(ClientCurve { server, keys }))
}

impl ClientCurve {
    /// Make `s` a CURVE client of the controller (before it connects).
    pub fn apply(&self, s: &zmq::Socket) -> zmq::Result<()> {
        curve::set_client(s, &self.server, &self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_server_key_no_curve() {
        let unset = |_: &str| None;
        let cfg = CurveSettings::default();
        assert_eq!(resolve_with(None, &cfg, unset).unwrap(), None);
        assert_eq!(resolve_with(Some(""), &cfg, unset).unwrap(), None);
    }

    #[test]
    fn the_environment_comes_last() {
        let server = curve::generate().unwrap().public;
        let mine = curve::generate().unwrap();
        let env = |var: &str| match var {
            curve::SERVERKEY_VAR => Some(server.as_str().to_string()),
            curve::PUBLICKEY_VAR => Some(mine.public.as_str().to_string()),
            curve::SECRETKEY_VAR => Some(mine.secret.as_str().to_string()),
            _ => None,
        };
        let c = resolve_with(None, &CurveSettings::default(), env)
            .unwrap()
            .unwrap();
        assert_eq!((c.server, c.keys), (server.clone(), mine));
        let bad = |var: &str| (var == curve::SERVERKEY_VAR).then(|| "short".to_string());
        let e = resolve_with(None, &CurveSettings::default(), bad).unwrap_err();
        assert!(e.to_string().contains("$IPP_CURVE_SERVERKEY"), "{e}");
    }

    #[test]
    fn the_connection_file_key_comes_first_and_a_pair_is_made() {
        let server = curve::generate().unwrap().public;
        let other = curve::generate().unwrap().public;
        let cfg = CurveSettings {
            serverkey: Some(other.as_str().into()),
            ..Default::default()
        };
        let c = resolve(Some(server.as_str()), &cfg).unwrap().unwrap();
        assert_eq!(c.server, server);
        assert_ne!(c.keys.public, c.keys.secret);
        // config alone
        let c = resolve(None, &cfg).unwrap().unwrap();
        assert_eq!(c.server, other);
    }

    #[test]
    fn configured_pair_and_bad_keys() {
        let server = curve::generate().unwrap().public;
        let mine = curve::generate().unwrap();
        let cfg = CurveSettings {
            serverkey: None,
            publickey: Some(mine.public.as_str().into()),
            secretkey: Some(mine.secret.as_str().into()),
        };
        let c = resolve(Some(server.as_str()), &cfg).unwrap().unwrap();
        assert_eq!(c.keys, mine);
        let half = CurveSettings {
            secretkey: None,
            ..cfg.clone()
        };
        let e = resolve(Some(server.as_str()), &half)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPEngine.curve_publickey is set"), "{e}");
        let e = resolve(Some("not a key"), &cfg).unwrap_err().to_string();
        assert!(e.contains("curve_serverkey"), "{e}");
    }
}
