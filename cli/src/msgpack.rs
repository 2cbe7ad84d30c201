//! Stored payloads (MessagePack with field names) as JSON, for people and scripts.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// `bytes` decoded from MessagePack into JSON. Raw bytes inside (MessagePack `bin`) become
/// `{"bytes": "<hex>"}`; a payload that is not MessagePack comes back as
/// `{"undecoded": "<hex>"}`: shown, never lost.
pub fn to_json(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Json>(bytes)
        .map(|j| j.0)
        .unwrap_or_else(|_| json!({ "undecoded": hex(bytes) }))
}

/// A snapshot's payload as JSON. From format 3 on, the state is stored as MessagePack bytes of
/// its own (so an older state version can be migrated); it is decoded in place, and the state
/// version shown beside it.
pub fn snapshot_to_json(payload: &[u8]) -> Value {
    let mut value = to_json(payload);
    if let Some(map) = value.as_object_mut()
        && map
            .get("format")
            .and_then(Value::as_u64)
            .is_some_and(|f| f >= 3)
        && let Some(Value::Object(state)) = map.get("state")
        && state.len() == 1
        && let Some(Value::String(h)) = state.get("bytes")
        && let Some(raw) = unhex(h)
    {
        let decoded = to_json(&raw);
        map.insert("state".into(), decoded);
    }
    value
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A JSON value read from any self-describing serde format, raw bytes included.
struct Json(Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any MessagePack value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(json!({ "bytes": hex(v) }))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Json::deserialize(d).map(|j| j.0)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Json::deserialize(d).map(|j| j.0)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Value, S::Error> {
        let mut items = Vec::new();
        while let Some(Json(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<M: MapAccess<'de>>(self, mut access: M) -> Result<Value, M::Error> {
        let mut map = Map::new();
        while let Some((Json(k), Json(v))) = access.next_entry()? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_messagepack_becomes_json_and_garbage_stays_visible() {
        #[derive(serde::Serialize)]
        struct Deposited {
            amount: u64,
            memo: String,
            #[serde(with = "serde_bytes")]
            raw: Vec<u8>,
        }
        let bytes = rmp_serde::to_vec_named(&Deposited {
            amount: 5,
            memo: "rent".into(),
            raw: vec![0xab, 0x01],
        })
        .unwrap();
        assert_eq!(
            to_json(&bytes),
            json!({"amount": 5, "memo": "rent", "raw": {"bytes": "ab01"}})
        );
        assert_eq!(to_json(&[0xc1]), json!({"undecoded": "c1"}));
    }

    #[test]
    fn a_snapshot_state_stored_as_bytes_is_decoded_in_place() {
        #[derive(serde::Serialize)]
        struct State {
            balance: u64,
        }
        #[derive(serde::Serialize)]
        struct Snapshot {
            format: u16,
            state_version: u32,
            #[serde(with = "serde_bytes")]
            state: Vec<u8>,
        }
        let state = rmp_serde::to_vec_named(&State { balance: 99 }).unwrap();
        let payload = rmp_serde::to_vec_named(&Snapshot {
            format: 3,
            state_version: 2,
            state,
        })
        .unwrap();
        assert_eq!(
            snapshot_to_json(&payload),
            json!({"format": 3, "state_version": 2, "state": {"balance": 99}})
        );
        // A format-2 state that happens to have a field named `bytes` stays as it is.
        #[derive(serde::Serialize)]
        struct Inline {
            format: u16,
            state: Bytesy,
        }
        #[derive(serde::Serialize)]
        struct Bytesy {
            bytes: String,
        }
        let inline = rmp_serde::to_vec_named(&Inline {
            format: 2,
            state: Bytesy {
                bytes: "abcd".into(),
            },
        })
        .unwrap();
        assert_eq!(
            snapshot_to_json(&inline),
            json!({"format": 2, "state": {"bytes": "abcd"}})
        );
    }
}
