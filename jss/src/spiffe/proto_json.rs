//! JSON claims as a `google.protobuf.Struct` (ValidateJWTSVIDResponse.claims).

use prost_types::value::Kind;
use serde_json::{Map, Value};

/// `claims` as a Struct; numbers become doubles, as the Struct type has no integers.
pub fn to_struct(claims: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
