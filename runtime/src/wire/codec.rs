//! The codec: MessagePack with field names (`rmp_serde::to_vec_named`).
//!
//! Named encoding writes structs as maps keyed by field name. A reader built from an older or
//! newer version of a type still finds the fields it knows, which is what makes adding a field
//! and rolling upgrades safe. Positional encoding would silently shift fields instead.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value could not be encoded or decoded. The message names what and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CodecError {
    /// What was being encoded or decoded (`"event payload"`, `"commit record"`, ...).
    pub what: &'static str,
    /// The decoder's or encoder's own message.
    pub reason: String,
}

/// Encodes `value` as named MessagePack.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|e| CodecError {
        what,
        reason: format!("cannot encode: {e}"),
    })
}

/// Encodes `value` as named MessagePack at the end of `out` (which is left as it was on an
/// error).
pub fn encode_into<T: Serialize + ?Sized>(
    what: &'static str,
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), CodecError> {
    let mark = out.len();
    rmp_serde::encode::write_named(out, value).map_err(|e| {
        out.truncate(mark);
        CodecError {
            what,
            reason: format!("cannot encode: {e}"),
        }
    })
}

/// Decodes named (or positional) MessagePack into `T`.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError {
        what,
        reason: format!("cannot decode: {e}"),
    })
}
