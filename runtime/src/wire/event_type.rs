//! The event type name stored next to every event.
//!
//! Users write plain serde enums for their events; the type name of an event is its variant name
//! (`Deposited` for `AccountEvent::Deposited(100)`), or the type name for a struct. It is read
//! through serde itself: a tiny serializer that stops at the first name it sees, so no extra
//! trait or derive is needed and the name always matches what serde writes.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// The type name of `value`: the enum variant name, the struct name, or `"event"` for values
/// with neither (numbers, strings, sequences).
pub fn event_type_name<T: Serialize + ?Sized>(value: &T) -> &'static str {
    match value.serialize(NameProbe) {
        Err(Found(name)) => name,
        Ok(()) => "event",
    }
}

struct NameProbe;

#[derive(Debug)]
struct Found(&'static str);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Found("event")
    }
}

macro_rules! plain {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _v: $ty) -> Result<(), Found> { Err(Found("event")) })*
    };
}

impl ser::Serializer for NameProbe {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Impossible<(), Found>;
    type SerializeTuple = Impossible<(), Found>;
    type SerializeTupleStruct = Impossible<(), Found>;
    type SerializeTupleVariant = Impossible<(), Found>;
    type SerializeMap = Impossible<(), Found>;
    type SerializeStruct = Impossible<(), Found>;
    type SerializeStructVariant = Impossible<(), Found>;

    plain!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
    );

    fn serialize_none(self) -> Result<(), Found> {
        Err(Found("event"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Found> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Found> {
        Err(Found("event"))
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), Found> {
        Err(Found(name))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<(), Found> {
        Err(Found(v))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: &T,
    ) -> Result<(), Found> {
        Err(Found(name))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: &T,
    ) -> Result<(), Found> {
        Err(Found(v))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Found> {
        Err(Found("event"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Found> {
        Err(Found("event"))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Found> {
        Err(Found(name))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Found> {
        Err(Found(v))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Found> {
        Err(Found("event"))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Found> {
        Err(Found(name))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Found> {
        Err(Found(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    enum Ev {
        Opened { owner: String },
        Deposited(u64),
        Closed,
        Pair(u8, u8),
    }

    #[derive(Serialize)]
    struct Renamed {
        x: u8,
    }

    #[test]
    fn names_come_from_variants_and_structs() {
        assert_eq!(event_type_name(&Ev::Opened { owner: "a".into() }), "Opened");
        assert_eq!(event_type_name(&Ev::Deposited(1)), "Deposited");
        assert_eq!(event_type_name(&Ev::Closed), "Closed");
        assert_eq!(event_type_name(&Ev::Pair(1, 2)), "Pair");
        assert_eq!(event_type_name(&Renamed { x: 1 }), "Renamed");
        assert_eq!(event_type_name(&5u32), "event");
    }
}
