//! Error contents the controller makes itself, in the shape of ipyparallel's `wrap_exception()`:
//! `{"status": "error", "ename", "evalue", "traceback": [lines], "engine_info": {}}`.
//! An empty `engine_info` tells the client not to wait for engine output.

use serde_json::{json, Value};

/// The content of a controller-made error.
pub fn wrap(ename: &str, evalue: &str) -> Value {
    json!({
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [
            "Traceback (most recent call last):",
            "  raised by rpar-controller",
            format!("{ename}: {evalue}"),
        ],
        "engine_info": {},
    })
}
