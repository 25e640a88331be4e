//! `pile-sim decode`: the frame analyzer as a field engineer runs it.
use std::process::Command;

fn decode(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pile-sim"))
        .arg("decode")
        .args(args)
        .output()
        .expect("pile-sim runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bkv_heartbeat_with_spaces_prints_its_fields_as_json() {
    let (code, stdout, _) = decode(&[
        "fcfe002e 0000 00000000 01 82200520004869 3839383630343633313132303730333139343137 63562e3172343600 1f ca fcee",
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("pretty JSON");
    assert_eq!(json["family"], "bkv");
    assert_eq!(json["direction"], "up");
    assert_eq!(json["command"], "0x0000");
    assert_eq!(json["name"], "heartbeat");
    assert_eq!(json["device_id"], "82200520004869");
    let text = json["frame"].to_string();
    assert!(text.contains("89860463112070319417"), "{text}");
    assert!(text.contains("cV.1r46"), "{text}");
}

#[test]
fn an_ap3000_start_command_is_told_apart_from_its_reply() {
    // The vendor's 0x82 example, server → device.
    let (code, stdout, stderr) = decode(&["444e5926003b37ab040200820064010000010100"]);
    // That prefix alone is incomplete: a clear one-line refusal, not a panic.
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.starts_with("pile-sim decode: "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1);

    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../protocol/tests/data/vectors.json")).unwrap();
    let hex_of = |name: &str| {
        vectors["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hex"].as_str())
            .unwrap()
            .to_string()
    };
    let (code, stdout, _) = decode(&[&hex_of("ap3000.cmd_82.first")]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["family"], "ap3000");
    assert_eq!(json["direction"], "down");
    assert_eq!(json["command"], "0x82");
    assert_eq!(json["device_id"], "04AB373B");

    let (code, stdout, _) = decode(&[&hex_of("ap3000.cmd_82.second")]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["direction"], "up");
}

#[test]
fn bad_input_exits_non_zero_with_a_one_line_reason() {
    for (args, needle) in [
        (vec!["zz"], "invalid hex"),
        (vec!["fcfe00"], "incomplete"),
        (vec!["0102030405"], "unknown frame header"),
        // The vendor guide's control example whose checksum is wrong.
        (
            vec!["fcff001c0015001c9a5100860044594530050008070200010100f00000c8fcee"],
            "checksum",
        ),
    ] {
        let (code, stdout, stderr) = decode(&args);
        assert_ne!(code, 0, "{args:?} → {stdout}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.to_lowercase().contains(needle), "{args:?}: {stderr}");
    }
}
