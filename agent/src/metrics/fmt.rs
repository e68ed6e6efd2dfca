//! Numbers as the stats documents write them: floats as C's `%0.15g` with `NaN`,
//! `Infinity`, `-Infinity` and `0.0` for the special values, as the reference's RRD library
//! does (so clients that parse its XML and JSON read ours the same way).

use std::fmt::Write;

/// A float in the stats documents' form.
pub fn float(f: f64) -> String {
    let mut s = String::new();
    push_float(f, &mut s);
    s
}

/// Appends a float in the stats documents' form.
pub fn push_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f == 0.0 {
        out.push_str("0.0");
    } else {
        push_g15(f, out);
    }
}

/// C's `%.15g`: 15 significant digits, scientific form when the exponent is below -4 or
/// at least 15, trailing zeros (and a trailing point) dropped, exponents of two digits or more.
fn push_g15(f: f64, out: &mut String) {
    const P: i32 = 15;
    let sci = format!("{:.*e}", (P - 1) as usize, f);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    if !(-4..P).contains(&exp) {
        out.push_str(strip_zeros(mantissa));
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else {
        let decimals = (P - 1 - exp).max(0) as usize;
        let fixed = format!("{f:.decimals$}");
        out.push_str(strip_zeros(&fixed));
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Parses a float as the reference's RRD reader accepts it (OCaml's `float_of_string`):
/// decimal forms, `nan`/`NaN`, `inf`/`Infinity` with a sign, and `_` between digits.
pub fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (neg, body) = match lower.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, lower.strip_prefix('+').unwrap_or(&lower)),
    };
    let special = match body {
        "nan" => Some(f64::NAN),
        "inf" | "infinity" => Some(f64::INFINITY),
        _ => None,
    };
    if let Some(v) = special {
        return Some(if neg { -v } else { v });
    }
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b"+-.eE_".contains(&b)) {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_printf_g15() {
        for (f, s) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (0.0, "0.0"),
            (-0.0, "0.0"),
            (123456789.0, "123456789"),
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.25, "-2.25"),
            (1.0 / 3.0, "0.333333333333333"),
            (f64::from(0.1f32), "0.100000001490116"),
            (123.456e200, "1.23456e+202"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (999999999999999.9, "1e+15"),
        ] {
            assert_eq!(float(f), s, "{f:e}");
        }
    }

    #[test]
    fn floats_read_back() {
        for f in [1.0, 0.5, 1.0 / 3.0, 1.5e-7, -2.25, 1e300, 5e-324] {
            let back = parse_float(&float(f)).unwrap();
            assert!((back - f).abs() <= f.abs() * 1e-14, "{f} -> {back}");
        }
        assert!(parse_float("NaN").unwrap().is_nan());
        assert_eq!(parse_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("Infinity"), Some(f64::INFINITY));
        assert_eq!(parse_float("0.0"), Some(0.0));
        assert_eq!(parse_float("1_000"), Some(1000.0));
        assert_eq!(parse_float("x"), None);
        assert_eq!(parse_float(""), None);
    }
}
