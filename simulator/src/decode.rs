//! `pile-sim decode`: the field engineer's frame analyzer.
//!
//! Takes one frame as hex text (spaces, `0x` and separators allowed), detects
//! the family from its first bytes and prints it as pretty JSON via
//! [`pile_protocol::analyze`]. Anything that is not exactly one valid frame is
//! refused with a one-line reason and a non-zero exit code.

use clap::{Args, ValueEnum};
use pile_protocol::{analyze, ap3000};

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The frame as hex; several arguments are joined (spaces are fine).
    #[arg(required = true, value_name = "HEX")]
    pub hex: Vec<String>,
    /// Who sent an AP3000 frame, when its bytes fit both directions
    /// (BKV frames carry their direction in the header).
    #[arg(long, value_enum)]
    pub direction: Option<Sender>,
}

/// Who sent the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sender {
    /// Device → server.
    Up,
    /// Server → device.
    Down,
}

/// Decodes hex text into the analyzer's pretty JSON, or a one-line reason.
pub fn decode_to_json(hex: &str, direction: Option<Sender>) -> Result<String, String> {
    let bytes = pile_protocol::parse_hex(hex).map_err(|e| e.to_string())?;
    let analysis = match (direction, bytes.first()) {
        (Some(sender), Some(b'D')) => {
            let dir = match sender {
                Sender::Up => ap3000::Direction::FromDevice,
                Sender::Down => ap3000::Direction::FromServer,
            };
            pile_protocol::analyze::analyze_ap3000(&bytes, Some(dir))
        }
        _ => analyze(&bytes),
    }
    .map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&analysis).map_err(|e| format!("cannot render JSON: {e}"))
}

/// Runs the subcommand: JSON on stdout and status 0, or a one-line reason on
/// stderr and status 1. Returns the process exit status.
pub fn run(args: &DecodeArgs) -> i32 {
    match decode_to_json(&args.hex.join(" "), args.direction) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(reason) => {
            eprintln!("pile-sim decode: {reason}");
            1
        }
    }
}
