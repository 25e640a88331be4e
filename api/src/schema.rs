//! Hand-built schema pieces for fields whose Rust type says less than the wire does
//! (an integer that is one of four modes, a string that is one of two protocols).

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

/// `charge_mode`: 1 by time, 2 by energy, 3 by amount, 4 until full.
pub fn charge_mode() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .enum_values(Some([1, 2, 3, 4]))
        .description(Some(
            "1 by time (`duration` seconds), 2 by energy (`energy_wh`), 3 by amount (until \
             `amount` is used up at the given prices), 4 until full (billed by energy at the \
             given prices)",
        ))
        .examples([1])
}

/// `protocol` of a device.
pub fn protocol() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .enum_values(Some(["bkv", "ap3000"]))
        .description(Some("The device's protocol family"))
}

/// A field that is always `null` (`data` of an error envelope).
pub fn null() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new().schema_type(SchemaType::new(Type::Null))
}
