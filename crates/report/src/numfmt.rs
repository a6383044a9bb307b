//! Readable number formatting shared by the Markdown and chart renderers.

/// An integer with `,` thousands separators: `1234567` → `"1,234,567"`.
pub fn count(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The thousands separator of chart labels: a narrow no-break space (SI style), which no
/// reader takes for a decimal point (a comma, rasterised small, looks like one).
pub const THIN: &str = "\u{202f}";

/// [`num`] with `sep` as the thousands separator: `8192.0, THIN` → `"8 192"`.
pub fn num_with(v: f64, sep: &str) -> String {
    num(v).replace(',', sep)
}

/// A measurement, readably: thousands separators from 1000 up (no decimals), three
/// significant digits below that, trailing zeros dropped; `"n/a"` if not finite.
///
/// `8192.0` → `"8,192"`, `812.4` → `"812"`, `81.24` → `"81.2"`, `1.0` → `"1"`,
/// `0.03127` → `"0.0313"`.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a.round() >= 1000.0 {
        // Saturating cast; report values are far below u64::MAX.
        return format!("{sign}{}", count(a.round() as u64));
    }
    let decimals = if a >= 99.95 {
        0
    } else {
        // Three significant digits, e.g. 5.2 → 2 decimals, 0.0312 → 4.
        let magnitude = a.log10().floor() as i32;
        (2 - magnitude).clamp(0, 12) as usize
    };
    format!("{sign}{}", strip_zeros(format!("{a:.decimals$}")))
}

/// A speedup factor: `2666.7` → `"2,667×"`, `2.5` → `"2.5×"`.
pub fn speedup(v: f64) -> String {
    format!("{}×", num(v))
}

/// A compact label with SI suffixes and three significant digits: `1500` → `"1.5k"`,
/// `2e6` → `"2M"`, `40_865_983` → `"40.9M"`, `0.01` → `"0.01"`.
pub fn si(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{suffix}", num(scaled))
}

/// Drops trailing zeros (and a then-trailing `.`) after a decimal point.
fn strip_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn numbers() {
        assert_eq!(num(8192.0), "8,192");
        assert_eq!(num(80_000_000.0), "80,000,000");
        assert_eq!(num(999.7), "1,000");
        assert_eq!(num(812.4), "812");
        assert_eq!(num(99.97), "100");
        assert_eq!(num(81.24), "81.2");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(5.25), "5.25");
        assert_eq!(num(0.03125), "0.0312");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(-12.5), "-12.5");
        assert_eq!(num(f64::NAN), "n/a");
        assert_eq!(speedup(2666.67), "2,667×");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2e6), "2M");
        assert_eq!(si(0.01), "0.01");
        assert_eq!(si(3080.0), "3.08k");
        assert_eq!(si(40_865_983.0), "40.9M");
        assert_eq!(num_with(526_347.0, THIN), "526\u{202f}347");
        assert_eq!(num_with(0.125, THIN), "0.125");
    }
}
