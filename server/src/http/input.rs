//! Reading request bodies and query strings field by field, so a 400 names the field.

use super::*;

pub(super) fn json_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad("body", e.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad("body", "a JSON object is required"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("body", "must be a JSON object")),
        Err(e) => Err(ApiError::bad("body", format!("invalid JSON: {e}"))),
    }
}

pub(super) fn int_field(
    map: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<i64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) if required => Err(ApiError::bad(field, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| ApiError::bad(field, "must be an integer")),
    }
}

pub(super) fn str_field(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(field, "must be a string")),
    }
}

pub(super) fn bool_field(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(field, "must be true or false")),
    }
}

pub(super) fn valid_order_no(no: &str) -> Result<(), ApiError> {
    if no.is_empty()
        || no.len() > 64
        || !no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ApiError::bad(
            "order_no",
            "1–64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

pub(super) fn valid_device_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad("device_id", "must be 1–64 letters or digits"));
    }
    Ok(())
}

pub(super) fn paging(q: &HashMap<String, String>) -> Result<(u32, u32), ApiError> {
    let num = |name: &str, default: u32, max: u32| -> Result<u32, ApiError> {
        match q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::bad(name, format!("must be an integer from 1 to {max}"))),
        }
    };
    Ok((num("page", 1, 1_000_000)?, num("size", 50, 1000)?))
}
