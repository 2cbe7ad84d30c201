//! Stored payloads (MessagePack with field names) as JSON, for people and scripts.

/// `bytes` decoded from MessagePack into JSON. A payload that is not MessagePack, or holds
/// what JSON cannot (raw bytes), comes back as `{"undecoded": "<hex>"}`: shown, never lost.
pub fn to_json(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice::<serde_json::Value>(bytes).unwrap_or_else(|_| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({ "undecoded": hex })
    })
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
        }
        let bytes = rmp_serde::to_vec_named(&Deposited {
            amount: 5,
            memo: "rent".into(),
        })
        .unwrap();
        assert_eq!(
            to_json(&bytes),
            serde_json::json!({"amount": 5, "memo": "rent"})
        );
        assert_eq!(to_json(&[0xc1]), serde_json::json!({"undecoded": "c1"}));
    }
}
