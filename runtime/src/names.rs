//! Names: namespaces, actor kinds and actor ids, validated once.
//!
//! Every name that reaches storage or the network passes through one of the types here, so a
//! bad name is rejected at the edge with a [`NameError`] and never travels further.
//!
//! | name | allowed | limit |
//! |---|---|---|
//! | [`Namespace`] | `A-Z a-z 0-9 _ -` | 1–64 characters ([`MAX_NAME_LEN`]) |
//! | [`Kind`] | `A-Z a-z 0-9 _ -` | 1–64 characters |
//! | [`ActorId`] | any UTF-8 | 1–256 bytes ([`MAX_ACTOR_ID_BYTES`]) |
//!
//! # Actor id encoding
//!
//! Actor ids are free text, but NATS subject tokens cannot hold `.`, `*`, `>` or whitespace and
//! JetStream KV keys allow only `A-Z a-z 0-9 _ - / = .`. [`ActorId::encoded`] turns an id into a
//! token that is valid in both places:
//!
//! - the bytes `A-Z a-z 0-9 _ -` are kept as they are;
//! - every other byte of the UTF-8 form (including `=` itself) becomes `=` followed by two
//!   upper-case hex digits.
//!
//! So `order.42` becomes `order=2E42` and `café` becomes `caf=C3=A9`. The encoding is injective
//! and reversed by [`ActorId::decode`]; an id made only of safe characters is its own token.
//!
//! # Keys
//!
//! An [`ActorKey`] is the full address of one actor — namespace, kind and id — and the key of its
//! event stream in every store.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest namespace or kind, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Longest actor id, in bytes of its UTF-8 form. Encoded, an id is at most three times longer.
pub const MAX_ACTOR_ID_BYTES: usize = 256;

/// What kind of name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameKind {
    /// A [`Namespace`].
    Namespace,
    /// An actor [`Kind`].
    Kind,
    /// An [`ActorId`].
    ActorId,
    /// An encoded actor id token (see [`ActorId::decode`]).
    EncodedActorId,
    /// A cluster node id (same rules as a namespace).
    NodeId,
    /// The name of a durable subscription or projection (same rules as a namespace).
    Subscription,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Namespace => "namespace",
            NameKind::Kind => "kind",
            NameKind::ActorId => "actor id",
            NameKind::EncodedActorId => "encoded actor id",
            NameKind::NodeId => "node id",
            NameKind::Subscription => "subscription name",
        })
    }
}

/// A name was rejected. The message says which name, shows (a prefix of) the value and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    /// Which name was rejected.
    pub what: NameKind,
    /// The rejected value, cut to 80 characters.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl NameError {
    fn new(what: NameKind, value: &str, reason: impl Into<String>) -> Self {
        let value = if value.chars().count() > 80 {
            let mut cut: String = value.chars().take(77).collect();
            cut.push_str("...");
            cut
        } else {
            value.to_owned()
        };
        NameError {
            what,
            value,
            reason: reason.into(),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks a namespace or kind: `[A-Za-z0-9_-]`, 1–64 characters.
pub(crate) fn validate_name(what: NameKind, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::new(what, value, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::new(
            what,
            value,
            format!("longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_name_char(*c)) {
        return Err(NameError::new(
            what,
            value,
            format!("character {bad:?} is not allowed (use A-Z, a-z, 0-9, '_' and '-')"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                // The text, as `eq` compares it (a pointer match implies equal text).
                self.0.hash(state);
            }
        }

        impl PartialEq for $name {
            /// Equal names; clones of one name compare by pointer, without reading the text.
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl AsRef<str>) -> Result<Self, NameError> {
                let value = value.as_ref();
                validate_name($what, value)?;
                Ok($name(Arc::from(value)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                $name::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A namespace: the isolation boundary for storage, the bus and queries.
    ///
    /// `[A-Za-z0-9_-]`, 1–64 characters. Validated on construction and on deserialization.
    Namespace,
    NameKind::Namespace
);

name_type!(
    /// An actor kind (`account`, `order`): the type of an actor within a namespace.
    ///
    /// Same rules as [`Namespace`]. Set once per actor type by `#[actor(kind = "...")]`.
    Kind,
    NameKind::Kind
);

/// An actor id: arbitrary UTF-8, 1–256 bytes. See the [module docs](self) for its encoding.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorId(Arc<str>);

impl ActorId {
    /// Validates `value` (non-empty, at most [`MAX_ACTOR_ID_BYTES`] bytes) and wraps it.
    pub fn new(value: impl AsRef<str>) -> Result<Self, NameError> {
        let value = value.as_ref();
        if value.is_empty() {
            return Err(NameError::new(
                NameKind::ActorId,
                value,
                "must not be empty",
            ));
        }
        if value.len() > MAX_ACTOR_ID_BYTES {
            return Err(NameError::new(
                NameKind::ActorId,
                value,
                format!(
                    "{} bytes is longer than the limit of {MAX_ACTOR_ID_BYTES}",
                    value.len()
                ),
            ));
        }
        Ok(ActorId(Arc::from(value)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject- and KV-safe token for this id (see the [module docs](self)).
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        encode_into(&self.0, &mut out);
        out
    }

    /// Reverses [`ActorId::encoded`]. Rejects tokens that no id encodes to.
    pub fn decode(token: &str) -> Result<ActorId, NameError> {
        let bad = |reason: &str| NameError::new(NameKind::EncodedActorId, token, reason);
        let bytes = token.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'=' {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| bad("'=' must be followed by two hex digits"))?;
                let value = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or_else(|| bad("'=' must be followed by two upper-case hex digits"))?;
                if is_safe_byte(value) {
                    return Err(bad(
                        "a safe character is escaped (not a canonical encoding)",
                    ));
                }
                out.push(value);
                i += 3;
            } else if is_safe_byte(b) {
                out.push(b);
                i += 1;
            } else {
                return Err(bad("contains a character that the encoding never produces"));
            }
        }
        let text = String::from_utf8(out).map_err(|_| bad("does not decode to UTF-8"))?;
        ActorId::new(text)
    }
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn hex_value(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

/// Appends the subject-safe form of `id` (see [`ActorId::encoded`]) to `out`.
pub(crate) fn encode_into(id: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in id.as_bytes() {
        if is_safe_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ActorId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ActorId {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, NameError> {
        ActorId::new(value)
    }
}

impl Serialize for ActorId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ActorId::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// The full address of one actor: namespace, kind and id. Also the key of its event stream.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorKey {
    /// The namespace the actor lives in.
    pub namespace: Namespace,
    /// The actor's kind.
    pub kind: Kind,
    /// The actor's id.
    pub id: ActorId,
}

impl ActorKey {
    /// Builds a key from validated parts.
    pub fn new(namespace: Namespace, kind: Kind, id: ActorId) -> Self {
        ActorKey {
            namespace,
            kind,
            id,
        }
    }

    /// A key for a record about to be decoded over: valid, shared (cloning it allocates
    /// nothing), and never the address of an actor.
    pub(crate) fn placeholder() -> ActorKey {
        static KEY: std::sync::LazyLock<ActorKey> = std::sync::LazyLock::new(|| ActorKey {
            namespace: Namespace(Arc::from("-")),
            kind: Kind(Arc::from("-")),
            id: ActorId(Arc::from("-")),
        });
        KEY.clone()
    }

    /// `<namespace>.<kind>.<encoded-id>`: one dot-separated, subject-safe name for the stream.
    pub(crate) fn stream_token(&self) -> String {
        self.stream_token_with_room(0)
    }

    /// [`ActorKey::stream_token`] with room for `extra` more bytes (an id that needs escaping
    /// may still grow it).
    pub(crate) fn stream_token_with_room(&self, extra: usize) -> String {
        let mut out = String::with_capacity(
            self.namespace.as_str().len()
                + self.kind.as_str().len()
                + self.id.as_str().len()
                + 2
                + extra,
        );
        out.push_str(self.namespace.as_str());
        out.push('.');
        out.push_str(self.kind.as_str());
        out.push('.');
        encode_into(self.id.as_str(), &mut out);
        out
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.id)
    }
}

impl fmt::Debug for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn namespace_rules() {
        assert!(Namespace::new("bank").is_ok());
        assert!(Namespace::new("tenant-a_1").is_ok());
        assert!(Namespace::new("a".repeat(64)).is_ok());
        let long = Namespace::new("a".repeat(65)).unwrap_err();
        assert!(long.to_string().contains("longer than 64"), "{long}");
        let empty = Namespace::new("").unwrap_err();
        assert_eq!(
            empty.to_string(),
            "invalid namespace \"\": must not be empty"
        );
        for bad in ["a.b", "a b", "a*", "a>", "ä", "a/b"] {
            let e = Namespace::new(bad).unwrap_err();
            assert_eq!(e.what, NameKind::Namespace);
            assert!(e.to_string().contains("is not allowed"), "{e}");
        }
    }

    #[test]
    fn kind_rules_match_namespace_rules() {
        assert!(Kind::new("account").is_ok());
        assert_eq!(Kind::new("bank account").unwrap_err().what, NameKind::Kind);
    }

    #[test]
    fn actor_id_limits() {
        assert!(ActorId::new("x").is_ok());
        assert!(ActorId::new("x".repeat(MAX_ACTOR_ID_BYTES)).is_ok());
        let e = ActorId::new("x".repeat(MAX_ACTOR_ID_BYTES + 1)).unwrap_err();
        assert!(
            e.to_string().contains("longer than the limit of 256"),
            "{e}"
        );
        assert!(e.value.ends_with("..."));
        assert!(ActorId::new("").is_err());
    }

    #[test]
    fn encoding_examples() {
        let enc = |s: &str| ActorId::new(s).unwrap().encoded();
        assert_eq!(enc("alice"), "alice");
        assert_eq!(enc("order.42"), "order=2E42");
        assert_eq!(enc("a b*c>d"), "a=20b=2Ac=3Ed");
        assert_eq!(enc("café"), "caf=C3=A9");
        assert_eq!(enc("x=y"), "x=3Dy");
    }

    #[test]
    fn decode_rejects_non_canonical_tokens() {
        assert!(ActorId::decode("a=41").is_err()); // 'A' must not be escaped
        assert!(ActorId::decode("a=2").is_err());
        assert!(ActorId::decode("a=2e").is_err()); // lower-case hex
        assert!(ActorId::decode("a.b").is_err());
        assert!(ActorId::decode("=FF").is_err()); // not UTF-8
        assert!(ActorId::decode("").is_err());
    }

    #[test]
    fn stream_token_has_three_parts() {
        let key = ActorKey::new(
            Namespace::new("bank").unwrap(),
            Kind::new("account").unwrap(),
            ActorId::new("a.b c").unwrap(),
        );
        assert_eq!(key.stream_token(), "bank.account.a=2Eb=20c");
        assert_eq!(key.to_string(), "bank/account/a.b c");
    }

    #[test]
    fn deserialize_validates() {
        let bytes = rmp_serde::to_vec("not valid").unwrap();
        assert!(rmp_serde::from_slice::<Namespace>(&bytes).is_err());
        let bytes = rmp_serde::to_vec("ok").unwrap();
        assert_eq!(
            rmp_serde::from_slice::<Namespace>(&bytes).unwrap().as_str(),
            "ok"
        );
    }

    proptest! {
        #[test]
        fn encoding_round_trips(id in "\\PC{1,80}") {
            let id = ActorId::new(&id).unwrap();
            let token = id.encoded();
            prop_assert!(token.bytes().all(|b| is_safe_byte(b) || b == b'='));
            prop_assert_eq!(ActorId::decode(&token).unwrap(), id);
        }

        #[test]
        fn encoding_is_injective(a in "[a-z.=* ]{1,8}", b in "[a-z.=* ]{1,8}") {
            let (ea, eb) = (ActorId::new(&a).unwrap().encoded(), ActorId::new(&b).unwrap().encoded());
            prop_assert_eq!(a == b, ea == eb);
        }

        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            if let Ok(text) = String::from_utf8(bytes) {
                let id = ActorId::new(&text).unwrap();
                prop_assert_eq!(ActorId::decode(&id.encoded()).unwrap(), id);
            }
        }
    }
}
