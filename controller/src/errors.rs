//! Error contents the controller makes itself, in the shape of ipyparallel's `wrap_exception()`
//! (built by [`rpar_core::msg::error_content`]), with an empty `engine_info`: the client then does
//! not wait for engine output.

use serde_json::{json, Value};

/// The content of a controller-made error.
pub fn wrap(ename: &str, evalue: &str) -> Value {
    rpar_core::msg::error_content(ename, evalue, "rpar-controller", json!({}))
}
