//! Loading of the shared vendor test vectors (`tests/data/vectors.json`).
use serde_json::Value;

pub struct Vector {
    pub name: String,
    pub protocol: String,
    pub direction: String,
    pub bytes: Vec<u8>,
    pub valid: bool,
    pub errors: Vec<String>,
    pub fields: Value,
}

pub fn all() -> Vec<Vector> {
    let text = include_str!("../data/vectors.json");
    let doc: Value = serde_json::from_str(text).expect("vectors.json parses");
    doc["vectors"]
        .as_array()
        .expect("vectors array")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            protocol: v["protocol"].as_str().unwrap_or_default().to_string(),
            direction: v["direction"].as_str().unwrap_or_default().to_string(),
            bytes: pile_protocol::parse_hex(v["hex"].as_str().unwrap_or_default())
                .expect("vector hex parses"),
            valid: v["valid"].as_bool().unwrap_or(false),
            errors: v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            fields: v["fields"].clone(),
        })
        .collect()
}

pub fn of(protocol: &str) -> Vec<Vector> {
    all()
        .into_iter()
        .filter(|v| v.protocol == protocol)
        .collect()
}

#[test]
fn every_vector_is_present_and_hex_parses() {
    let all = all();
    assert!(
        all.len() >= 20,
        "expected the full vendor vector set, got {}",
        all.len()
    );
    assert_eq!(all.iter().filter(|v| !v.valid).count(), 2);
}
