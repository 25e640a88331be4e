//! The two wire families, built only from the protocol crate's typed
//! messages, encoders and streaming decoders.

pub mod ap3000;
pub mod bkv;

use pile_protocol::Family;

use crate::pile::Codec;

/// The codec of a family.
pub fn codec_for(family: Family) -> Box<dyn Codec> {
    match family {
        Family::Bkv => Box::new(bkv::BkvCodec::default()),
        Family::Ap3000 => Box::new(ap3000::Ap3000Codec::default()),
    }
}

/// Saturating conversion of a physical quantity into a wire field.
pub(crate) fn sat_u16(v: f64) -> u16 {
    if v.is_finite() && v > 0.0 {
        v.round().min(f64::from(u16::MAX)) as u16
    } else {
        0
    }
}
