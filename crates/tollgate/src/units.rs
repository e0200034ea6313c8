//! Parsing of the human units used in config and provider headers: durations and byte sizes.
//!
//! Durations accept Go's format as OpenAI sends it in `x-ratelimit-reset-*` (`6m0s`, `2m59.56s`,
//! `20ms`, `1.5s`, `1h2m`) and the config's plain `250ms` / `10m` / `30s`.

use std::time::Duration;

/// Parses a duration such as `250ms`, `1.5s`, `6m0s` or `1h`. A bare number is seconds.
/// Returns `None` for empty, negative or malformed input.
pub fn parse_duration(input: &str) -> Option<Duration> {
    let s = input.trim();
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" | "min" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Parses a byte size: `1048576`, `512KiB`, `32MiB`, `1GiB`, `10MB`, `64kb`.
pub fn parse_size(input: &str) -> Option<u64> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let value: u64 = s[..split].parse().ok()?;
    let scale: u64 = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(scale)
}

/// `n` in decimal as a header value, in one allocation (`HeaderValue::from(u64)` takes two: a
/// growable buffer, then its frozen copy's count) or none for a single digit. Headers the
/// gateway writes on every answer (rate limits, attempts) are numbers.
pub fn integer_header(n: u64) -> http::HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    if let Some(digit) = DIGITS.get(n as usize).filter(|_| n < 10) {
        return http::HeaderValue::from_static(digit);
    }
    let mut buf = itoa::Buffer::new();
    match http::HeaderValue::from_str(buf.format(n)) {
        Ok(value) => value,
        // Digits are always a valid value.
        Err(_) => http::HeaderValue::from(n),
    }
}

/// [`format_go_duration`] as a header value; the common short forms (`250ms`, `12s`) are
/// written without the formatting machinery (this runs on every answer).
pub fn go_duration_header(d: Duration) -> Option<http::HeaderValue> {
    let ms = d.as_millis();
    let (n, unit): (u128, &[u8]) = match ms {
        // A bucket with room resets at once: most answers say so, with no copy.
        0 => return Some(http::HeaderValue::from_static("0ms")),
        1..1000 => (ms, b"ms"),
        _ if ms.is_multiple_of(1000) && ms < 60_000 => (ms / 1000, b"s"),
        _ => return http::HeaderValue::try_from(format_go_duration(d)).ok(),
    };
    // At most three digits, then the unit.
    let mut buf = [0u8; 5];
    let digits = match n {
        0..10 => 1,
        10..100 => 2,
        _ => 3,
    };
    let mut rest = n;
    for slot in buf[..digits].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf[digits..digits + unit.len()].copy_from_slice(unit);
    http::HeaderValue::from_bytes(&buf[..digits + unit.len()]).ok()
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do (`1s`, `6m0s`, `20ms`).
pub fn format_go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms.is_multiple_of(1000) && ms < 60_000 {
        return format!("{}s", ms / 1000);
    }
    let secs = d.as_secs_f64();
    let (h, rem) = ((secs / 3600.0).floor(), secs % 3600.0);
    let (m, s) = ((rem / 60.0).floor(), rem % 60.0);
    let s = (s * 1000.0).round() / 1000.0;
    match (h as u64, m as u64) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_headers_are_the_decimal_number() {
        for n in [0, 1, 9, 10, 11, 99, 100, 12_345, 4_000_000_000, u64::MAX] {
            assert_eq!(integer_header(n), http::HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn go_duration_headers_match_the_formatted_string() {
        for ms in [
            0, 1, 9, 10, 99, 100, 999, 1000, 1500, 9000, 59_000, 60_000, 61_500, 3_723_000,
        ] {
            let d = Duration::from_millis(ms);
            let header = go_duration_header(d).unwrap_or_else(|| panic!("{ms}"));
            assert_eq!(
                header.to_str().ok(),
                Some(format_go_duration(d).as_str()),
                "{ms} ms"
            );
        }
    }

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("12ms", 0.012),
            ("1s", 1.0),
            ("6m0s", 360.0),
            ("2m59.56s", 179.56),
            ("1.772s", 1.772),
            ("1h2m3s", 3723.0),
            ("250ms", 0.25),
            ("10m", 600.0),
            ("30", 30.0),
            ("500us", 0.0005),
        ];
        for (input, secs) in cases {
            let got = parse_duration(input).unwrap_or_else(|| panic!("{input}"));
            assert!((got.as_secs_f64() - secs).abs() < 1e-9, "{input}: {got:?}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for input in ["", "-1s", "abc", "1x", "s", "1.2.3s", "-1"] {
            assert_eq!(parse_duration(input), None, "{input}");
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("10 MB"), Some(10_000_000));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn formats_like_openai() {
        assert_eq!(format_go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(format_go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(
            parse_duration(&format_go_duration(Duration::from_millis(179_560))),
            Some(Duration::from_millis(179_560))
        );
    }
}
