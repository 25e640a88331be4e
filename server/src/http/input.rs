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

/// A query string as one value per name: a name given twice is a 400 naming it (which of
/// the two was meant is anyone's guess). An empty value counts as absent, as the upstream
/// scripts send `?status=&device_id=`.
pub(super) fn single_params(
    pairs: Vec<(String, String)>,
) -> Result<HashMap<String, String>, ApiError> {
    let mut map = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if map.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad(&name, "is given more than once"));
        }
    }
    Ok(map)
}

/// An optional integer query parameter from 1 to `max`, `default` when absent or empty.
pub(super) fn query_num(
    q: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    match q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad(name, format!("must be an integer from 1 to {max}"))),
    }
}

pub(super) fn paging(q: &HashMap<String, String>) -> Result<(u32, u32), ApiError> {
    Ok((
        query_num(q, "page", 1, 1_000_000)?,
        query_num(q, "size", 50, 1000)?,
    ))
}

/// Most ports a device can have (BKV: 250 sockets × 2 holes).
pub(super) const MAX_PORTS: i64 = 500;

/// `port_no` against the device's port count; 1–500 while the device has not reported it.
pub(super) fn check_port(port_no: i64, port_count: i64) -> Result<(), ApiError> {
    if port_count > 0 {
        if !(1..=port_count).contains(&port_no) {
            return Err(ApiError::bad(
                "port_no",
                format!("must be between 1 and {port_count}"),
            ));
        }
    } else if !(1..=MAX_PORTS).contains(&port_no) {
        return Err(ApiError::bad(
            "port_no",
            format!(
                "must be between 1 and {MAX_PORTS} (the device has not reported its port count yet)"
            ),
        ));
    }
    Ok(())
}

/// What billing needs from a charge request, beyond the ranges of `domain::validate_charge`
/// (the rules are in the server README):
/// - `charge_mode` 4 (until full) is billed by energy at the given prices, so it needs
///   `price_per_kwh` or `service_fee`;
/// - without prices an order costs `amount` pro rata of its target, so `amount` is required
///   (an explicit 0 makes the order free);
/// - with prices `amount` caps the bill, and absent or 0 means no cap.
pub(super) fn billing_rules(
    mode: i64,
    amount: Option<i64>,
    price_per_kwh: i64,
    service_fee: i64,
) -> Result<(), ApiError> {
    let priced = price_per_kwh > 0 || service_fee > 0;
    if mode == 4 && !priced {
        return Err(ApiError::bad(
            "price_per_kwh",
            "charge_mode 4 (until full) is billed by energy: it needs price_per_kwh or service_fee",
        ));
    }
    if !priced && amount.is_none() {
        return Err(ApiError::bad(
            "amount",
            "is required without price_per_kwh or service_fee (the order costs `amount` pro rata \
             of its target; 0 makes it free)",
        ));
    }
    Ok(())
}
