//! The platform's 1-based port numbering on top of each family's wire numbering.
//!
//! * AP3000 ports are 0-based on the wire: `port_no = wire + 1`; `0xFF` means
//!   "let the device choose" and has no platform number.
//! * BKV addresses a socket (1–250) and a hole (A = 0, B = 1):
//!   `port_no = (socket − 1) × 2 + hole + 1`.

/// AP3000 wire port → platform port number. `None` for `0xFF` ("any port").
pub fn ap3000_port_no(wire: u8) -> Option<u16> {
    (wire != 0xFF).then_some(u16::from(wire) + 1)
}

/// Platform port number → AP3000 wire port. `None` if out of the wire's range.
pub fn ap3000_wire_port(port_no: u16) -> Option<u8> {
    match port_no {
        1..=255 => u8::try_from(port_no - 1).ok().filter(|p| *p != 0xFF),
        _ => None,
    }
}

/// BKV socket (1–250) and hole (0 or 1) → platform port number.
pub fn bkv_port_no(socket: u8, hole: u8) -> Option<u16> {
    if !(1..=250).contains(&socket) || hole > 1 {
        return None;
    }
    Some((u16::from(socket) - 1) * 2 + u16::from(hole) + 1)
}

/// Platform port number → BKV (socket, hole).
pub fn bkv_socket_hole(port_no: u16) -> Option<(u8, u8)> {
    if !(1..=500).contains(&port_no) {
        return None;
    }
    let index = port_no - 1;
    let socket = u8::try_from(index / 2 + 1).ok()?;
    let hole = u8::try_from(index % 2).ok()?;
    Some((socket, hole))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bkv_numbering_follows_socket_then_hole() {
        assert_eq!(bkv_port_no(1, 0), Some(1));
        assert_eq!(bkv_port_no(1, 1), Some(2));
        assert_eq!(bkv_port_no(2, 0), Some(3));
        assert_eq!(bkv_port_no(250, 1), Some(500));
        assert_eq!(bkv_port_no(0, 0), None);
        assert_eq!(bkv_port_no(1, 2), None);
        for port in 1..=500 {
            let (s, h) = bkv_socket_hole(port).unwrap();
            assert_eq!(bkv_port_no(s, h), Some(port));
        }
        assert_eq!(bkv_socket_hole(0), None);
        assert_eq!(bkv_socket_hole(501), None);
    }

    #[test]
    fn ap3000_numbering_is_wire_plus_one() {
        assert_eq!(ap3000_port_no(0), Some(1));
        assert_eq!(ap3000_port_no(0xFF), None);
        assert_eq!(ap3000_wire_port(1), Some(0));
        assert_eq!(ap3000_wire_port(0), None);
        assert_eq!(ap3000_wire_port(256), None);
        for wire in 0..=0xFEu8 {
            assert_eq!(ap3000_wire_port(ap3000_port_no(wire).unwrap()), Some(wire));
        }
    }
}
