//! CurveZMQ keys, as ipyparallel (>= 7.1) spells them: 40-character Z85 text in the connection
//! files' `curve_serverkey`, in `IPController.curve_publickey` / `curve_secretkey`, the engines'
//! and clients' key pairs, and the `IPP_CURVE_*` environment variables. Keys are checked here,
//! before any socket sees them, so a mistyped key is an error naming where it came from (libzmq
//! would only say "Invalid argument"). New pairs come from libzmq; sockets are set up by the
//! programs that own them.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Length of a Z85-encoded 32-byte Curve25519 key.
pub const Z85_KEY_LEN: usize = 40;

/// `IPP_ENABLE_CURVE=1` turns CURVE on in the controller (the default of `enable_curve`).
pub const ENABLE_VAR: &str = "IPP_ENABLE_CURVE";
/// The controller's public key for engines and clients whose connection file has none.
pub const SERVERKEY_VAR: &str = "IPP_CURVE_SERVERKEY";
/// A program's own public key (controller: the server key it publishes; engine: its client key).
pub const PUBLICKEY_VAR: &str = "IPP_CURVE_PUBLICKEY";
/// A program's own secret key.
pub const SECRETKEY_VAR: &str = "IPP_CURVE_SECRETKEY";

const Z85: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// A key that does not parse.
#[derive(Debug, Error, PartialEq)]
pub enum CurveError {
    #[error("{what}: a CurveZMQ key is {Z85_KEY_LEN} Z85 characters, this one has {len} (make one with `python -c 'import zmq; print(zmq.curve_keypair())'`)")]
    Length { what: String, len: usize },
    #[error("{what}: {ch:?} is not a Z85 character, so this is not a CurveZMQ key")]
    Char { what: String, ch: char },
    #[error("{what} is set but {missing} is not: give both keys of the pair, or neither (a new pair is made)")]
    HalfPair { what: String, missing: String },
    #[error("cannot make a CurveZMQ key pair: {0}")]
    Generate(String),
}

/// A Z85-encoded CURVE key (public or secret). `Debug` never shows the key itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CurveKey(String);

impl CurveKey {
    /// Check `text` (surrounding white space is dropped); `what` names where it came from.
    pub fn parse(what: &str, text: &str) -> Result<CurveKey, CurveError> {
        let t = text.trim();
        if t.len() != Z85_KEY_LEN {
            return Err(CurveError::Length {
                what: what.to_string(),
                len: t.chars().count(),
            });
        }
        if let Some(ch) = t
            .chars()
            .find(|c| !c.is_ascii() || !Z85.contains(&(*c as u8)))
        {
            return Err(CurveError::Char {
                what: what.to_string(),
                ch,
            });
        }
        Ok(CurveKey(t.to_string()))
    }

    /// The Z85 text (what `zmq_setsockopt(ZMQ_CURVE_*KEY)` and the connection files take).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CurveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurveKey(..)")
    }
}

impl TryFrom<String> for CurveKey {
    type Error = CurveError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        CurveKey::parse("CURVE key", &s)
    }
}

impl From<CurveKey> for String {
    fn from(k: CurveKey) -> String {
        k.0
    }
}

/// A program's own key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurveKeyPair {
    pub public: CurveKey,
    pub secret: CurveKey,
}

/// A new key pair from libzmq (`zmq_curve_keypair`).
pub fn generate() -> Result<CurveKeyPair, CurveError> {
    let pair = zmq::CurveKeyPair::new().map_err(|e| CurveError::Generate(e.to_string()))?;
    let z85 = |b: &[u8]| -> Result<CurveKey, CurveError> {
        let text = zmq::z85_encode(b).map_err(|e| CurveError::Generate(format!("{e:?}")))?;
        CurveKey::parse("new key", &text)
    };
    Ok(CurveKeyPair {
        public: z85(&pair.public_key)?,
        secret: z85(&pair.secret_key)?,
    })
}

/// Whether the linked libzmq can do CURVE (it needs libsodium; see the README).
pub fn available() -> bool {
    zmq::has("curve") == Some(true)
}

/// Make `s` a CURVE client of the server whose public key is `server`, with `keys` (before it
/// connects).
pub fn set_client(s: &zmq::Socket, server: &CurveKey, keys: &CurveKeyPair) -> zmq::Result<()> {
    s.set_curve_serverkey(server.as_str().as_bytes())?;
    s.set_curve_publickey(keys.public.as_str().as_bytes())?;
    s.set_curve_secretkey(keys.secret.as_str().as_bytes())
}

/// `value` if it is non-empty, parsed; `what` names its source for the error.
pub fn optional(what: &str, value: Option<&str>) -> Result<Option<CurveKey>, CurveError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => CurveKey::parse(what, v).map(Some),
        None => Ok(None),
    }
}

/// A key from environment variable `var` (unset or empty: `None`).
pub fn from_env(var: &str) -> Result<Option<CurveKey>, CurveError> {
    optional(&format!("${var}"), std::env::var(var).ok().as_deref())
}

/// Whether `IPP_ENABLE_CURVE` asks for CURVE (ipyparallel: exactly `"1"`).
pub fn enabled_by_env() -> bool {
    std::env::var(ENABLE_VAR).as_deref() == Ok("1")
}

/// A configured pair: both halves or neither (`Ok(None)`: make a new pair). `names` are the
/// settings the halves came from, for the error.
pub fn pair(
    public: Option<CurveKey>,
    secret: Option<CurveKey>,
    names: (&str, &str),
) -> Result<Option<CurveKeyPair>, CurveError> {
    match (public, secret) {
        (Some(public), Some(secret)) => Ok(Some(CurveKeyPair { public, secret })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(CurveError::HalfPair {
            what: names.0.to_string(),
            missing: names.1.to_string(),
        }),
        (None, Some(_)) => Err(CurveError::HalfPair {
            what: names.1.to_string(),
            missing: names.0.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // a key pair made by pyzmq's zmq.curve_keypair()
    const PUBLIC: &str = "NO^4fNG{dG)*JchJ@n*{3Zk3[[UTFL5OiJa:47I&";
    const SECRET: &str = "F*gL1O-E@s.SO2JSYA$>g<s.H:(<PEFYk4k!@v-5";

    #[test]
    fn parses_z85_keys() {
        let k = CurveKey::parse("x", &format!("  {PUBLIC}\n")).unwrap();
        assert_eq!(k.as_str(), PUBLIC);
        assert_eq!(format!("{k:?}"), "CurveKey(..)");
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("{PUBLIC:?}"));
        let back: CurveKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k);
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        assert_eq!(
            CurveKey::parse("$IPP_CURVE_SERVERKEY", "abc"),
            Err(CurveError::Length {
                what: "$IPP_CURVE_SERVERKEY".into(),
                len: 3
            })
        );
        let bad = format!("{}~", &PUBLIC[..39]);
        assert_eq!(
            CurveKey::parse("file", &bad),
            Err(CurveError::Char {
                what: "file".into(),
                ch: '~'
            })
        );
        let e = CurveKey::parse("k", &"é".repeat(40)).unwrap_err();
        assert!(matches!(e, CurveError::Length { len: 40, .. }), "{e}");
        assert!(serde_json::from_str::<CurveKey>("\"short\"").is_err());
    }

    #[test]
    fn optional_and_pairs() {
        assert_eq!(optional("x", None), Ok(None));
        assert_eq!(optional("x", Some("  ")), Ok(None));
        let p = optional("p", Some(PUBLIC)).unwrap();
        let s = optional("s", Some(SECRET)).unwrap();
        let both = pair(p.clone(), s.clone(), ("pub", "sec")).unwrap().unwrap();
        assert_eq!(both.public.as_str(), PUBLIC);
        assert_eq!(both.secret.as_str(), SECRET);
        assert_eq!(pair(None, None, ("pub", "sec")), Ok(None));
        let e = pair(
            p,
            None,
            (
                "IPController.curve_publickey",
                "IPController.curve_secretkey",
            ),
        )
        .unwrap_err();
        assert!(e.to_string().contains("curve_secretkey is not"), "{e}");
        assert!(pair(None, s, ("a", "b")).is_err());
    }

    #[test]
    fn generated_pairs_are_keys() {
        assert!(available(), "this build's libzmq has no CURVE");
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.public, a.secret);
        assert_ne!(a, b);
    }
}
