//! The start form: what a charge request needs, typed in by the operator.
//!
//! The form only turns text into numbers; whether the numbers make sense (a port the pile has,
//! a duration above 0, an amount not below 0 …) is the gateway's call, and its 400 answer names
//! the field, which the form then marks. So the dashboard never disagrees with the API.

use pile_api::{charge_mode, ChargeRequest, OrderView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Time,
    Energy,
    Amount,
    UntilFull,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Time, Mode::Energy, Mode::Amount, Mode::UntilFull];

    pub fn title(self) -> &'static str {
        match self {
            Mode::Time => "by time",
            Mode::Energy => "by energy",
            Mode::Amount => "by amount",
            Mode::UntilFull => "until full",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Mode::Time => charge_mode::BY_TIME,
            Mode::Energy => charge_mode::BY_ENERGY,
            Mode::Amount => charge_mode::BY_AMOUNT,
            Mode::UntilFull => charge_mode::UNTIL_FULL,
        }
    }

    pub fn from_code(c: u8) -> Mode {
        match c {
            charge_mode::BY_ENERGY => Mode::Energy,
            charge_mode::BY_AMOUNT => Mode::Amount,
            charge_mode::UNTIL_FULL => Mode::UntilFull,
            _ => Mode::Time,
        }
    }

    /// Whether the mode has a target besides the amount.
    pub fn has_target(self) -> bool {
        matches!(self, Mode::Time | Mode::Energy)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Port,
    Mode,
    Target,
    Amount,
    Price,
    ServiceFee,
    OrderNo,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Port,
        Field::Mode,
        Field::Target,
        Field::Amount,
        Field::Price,
        Field::ServiceFee,
        Field::OrderNo,
    ];

    /// The form field an API field name belongs to (`invalid field `duration`: …`).
    pub fn from_api(name: &str) -> Option<Field> {
        Some(match name {
            "port_no" => Field::Port,
            "charge_mode" => Field::Mode,
            "duration" | "energy_wh" => Field::Target,
            "amount" => Field::Amount,
            "price_per_kwh" => Field::Price,
            "service_fee" => Field::ServiceFee,
            "order_no" => Field::OrderNo,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    /// The field the message is about; `None` for the request as a whole.
    pub field: Option<Field>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartForm {
    pub device: String,
    pub focus: Field,
    pub port: String,
    pub mode: Mode,
    /// Time: `10m`, `90s`, `1h30m`, a bare number is minutes. Energy: Wh, or `1.5kWh`.
    pub target: String,
    /// Yuan, at most two decimals.
    pub amount: String,
    /// Yuan per kWh; empty is none.
    pub price: String,
    pub service_fee: String,
    pub order_no: String,
    pub error: Option<FormError>,
    /// The request is out; keys other than Esc wait for the answer.
    pub submitting: bool,
}

impl StartForm {
    /// A new form for `port` of `device`: ten minutes by time, at most 5.00 yuan.
    pub fn new(device: &str, port: u32) -> Self {
        StartForm {
            device: device.to_string(),
            focus: Field::Mode,
            port: port.to_string(),
            mode: Mode::Time,
            target: "10m".into(),
            amount: "5.00".into(),
            price: String::new(),
            service_fee: String::new(),
            order_no: String::new(),
            error: None,
            submitting: false,
        }
    }

    /// A form that asks again for what a failed order asked for (prices are not in the order
    /// view, so they start empty).
    pub fn retry(o: &OrderView) -> Self {
        let mut f = StartForm::new(&o.device_id, o.port_no);
        f.mode = Mode::from_code(o.charge_mode);
        if f.mode == Mode::Time && o.target_duration > 0 {
            f.target = format!("{}s", o.target_duration);
        }
        f.amount = fen_to_yuan(o.amount);
        f
    }

    /// The fields shown, in order (the target only for modes that have one).
    pub fn fields(&self) -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| *f != Field::Target || self.mode.has_target())
            .collect()
    }

    pub fn text_mut(&mut self, f: Field) -> Option<&mut String> {
        match f {
            Field::Port => Some(&mut self.port),
            Field::Target => Some(&mut self.target),
            Field::Amount => Some(&mut self.amount),
            Field::Price => Some(&mut self.price),
            Field::ServiceFee => Some(&mut self.service_fee),
            Field::OrderNo => Some(&mut self.order_no),
            Field::Mode => None,
        }
    }

    pub fn move_focus(&mut self, delta: i32) {
        let fields = self.fields();
        let i = fields.iter().position(|f| *f == self.focus).unwrap_or(0) as i32;
        let n = fields.len() as i32;
        self.focus = fields[((i + delta).rem_euclid(n)) as usize];
    }

    pub fn cycle_mode(&mut self, forward: bool) {
        let i = Mode::ALL.iter().position(|m| *m == self.mode).unwrap_or(0);
        let n = Mode::ALL.len();
        self.mode = Mode::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
        self.target = match self.mode {
            Mode::Time => "10m".into(),
            Mode::Energy => "1000".into(),
            _ => String::new(),
        };
    }

    /// The request the form describes, or what cannot be read.
    pub fn request(&self) -> Result<ChargeRequest, FormError> {
        let bad = |field: Field, message: &str| FormError {
            field: Some(field),
            message: message.to_string(),
        };
        let port_no = self
            .port
            .trim()
            .parse::<u32>()
            .map_err(|_| bad(Field::Port, "a port number, like 1"))?;
        let mut req = ChargeRequest {
            port_no,
            charge_mode: self.mode.code(),
            ..ChargeRequest::default()
        };
        match self.mode {
            Mode::Time => {
                req.duration = parse_duration(&self.target)
                    .ok_or_else(|| bad(Field::Target, "a duration, like 10m, 90s or 1h30m"))?
            }
            Mode::Energy => {
                req.energy_wh = parse_wh(&self.target)
                    .ok_or_else(|| bad(Field::Target, "energy in Wh, like 500, or 1.5kWh"))?
            }
            Mode::Amount | Mode::UntilFull => {}
        }
        req.amount = parse_yuan(&self.amount)
            .ok_or_else(|| bad(Field::Amount, "yuan with at most two decimals, like 5.00"))?;
        let price = |s: &str, f: Field| {
            if s.trim().is_empty() {
                Ok(0)
            } else {
                parse_yuan(s).ok_or_else(|| bad(f, "yuan per kWh, like 1.50, or empty"))
            }
        };
        req.price_per_kwh = price(&self.price, Field::Price)?;
        req.service_fee = price(&self.service_fee, Field::ServiceFee)?;
        let no = self.order_no.trim();
        req.order_no = (!no.is_empty()).then(|| no.to_string());
        Ok(req)
    }

    /// The gateway refused the request: mark the field its message names.
    pub fn refused(&mut self, status: Option<u16>, message: &str) {
        self.submitting = false;
        let field = api_field(message).and_then(Field::from_api).or_else(|| {
            // 409 `port is busy` is about the port.
            (status == Some(409) && message.contains("port")).then_some(Field::Port)
        });
        let prefix = status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
        self.error = Some(FormError {
            field,
            message: format!("{prefix}{message}"),
        });
        if let Some(f) = field {
            if self.fields().contains(&f) {
                self.focus = f;
            }
        }
    }
}

/// The field name in the gateway's 400 message: ``invalid field `duration`: …``.
pub fn api_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("field `")? + "field `".len()..];
    Some(&rest[..rest.find('`')?])
}

/// `10m`, `90s`, `1h30m`, `2h`; a bare number is minutes.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    if let Ok(min) = s.parse::<i64>() {
        return min.checked_mul(60);
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: i64 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        num.clear();
    }
    num.is_empty().then_some(total)
}

/// Wh as an integer, or kWh with a `kWh` suffix.
pub fn parse_wh(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(k) = s.strip_suffix("kwh") {
        // Three decimals of kWh are whole Wh.
        return parse_fixed(k.trim(), 3);
    }
    s.strip_suffix("wh").unwrap_or(&s).trim().parse().ok()
}

/// Yuan → fen, exactly: at most two decimals, a sign allowed (the gateway judges the value).
pub fn parse_yuan(s: &str) -> Option<i64> {
    parse_fixed(s.trim(), 2)
}

/// A decimal number with at most `decimals` decimals, scaled to an integer.
fn parse_fixed(s: &str, decimals: usize) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > decimals
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = 10i64.pow(decimals as u32);
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<decimals$}").parse().ok()?
    };
    let v = int.checked_mul(scale)?.checked_add(frac)?;
    Some(if neg { -v } else { v })
}

pub fn fen_to_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.abs() / 100, fen.abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_energies_and_yuan_parse_exactly() {
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("5"), Some(300));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1h30"), None);
        assert_eq!(parse_wh("500"), Some(500));
        assert_eq!(parse_wh("1.5kWh"), Some(1500));
        assert_eq!(parse_wh("250 Wh"), Some(250));
        assert_eq!(parse_yuan("5"), Some(500));
        assert_eq!(parse_yuan("5.5"), Some(550));
        assert_eq!(parse_yuan("0.07"), Some(7));
        assert_eq!(parse_yuan("-1"), Some(-100));
        assert_eq!(parse_yuan("5.555"), None);
        assert_eq!(parse_yuan("."), None);
        assert_eq!(parse_yuan("abc"), None);
        assert_eq!(fen_to_yuan(505), "5.05");
        assert_eq!(fen_to_yuan(-7), "-0.07");
    }

    #[test]
    fn the_field_named_in_a_400_is_found() {
        assert_eq!(
            api_field("invalid field `duration`: must be above 0 for mode 1"),
            Some("duration")
        );
        assert_eq!(api_field("port is busy"), None);
    }
}
