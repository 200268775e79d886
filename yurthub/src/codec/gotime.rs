//! The Go text forms of metav1.Time, metav1.MicroTime and metav1.Duration.
//!
//! * Time marshals as RFC 3339 in UTC with whole seconds (`2024-05-01T10:00:00Z`); its
//!   protobuf form drops nanoseconds too (apimachinery `time_proto.go`).
//! * MicroTime marshals with exactly six fractional digits.
//! * Duration marshals with Go's `time.Duration.String` (`1h2m3.5s`, `150ms`, `0s`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z), which marshals as `null`.
pub(crate) const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// Parses an RFC 3339 timestamp into Unix seconds and nanoseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<(i64, i32)> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond() as i32))
}

/// Formats Unix seconds as a metav1.Time JSON string.
pub(crate) fn format_time(seconds: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Formats Unix seconds and nanoseconds as a metav1.MicroTime JSON string.
pub(crate) fn format_micro_time(seconds: i64, nanos: i32) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    let micros = nanos.clamp(0, 999_999_999) / 1000;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Formats nanoseconds like Go's `time.Duration.String`.
pub(crate) fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if u < 1_000_000_000 {
        // Sub-second: one unit with a fraction.
        let (unit, scale) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        push_fraction(&mut out, u, scale);
        out.push_str(unit);
        return out;
    }
    let hours = u / 3_600_000_000_000;
    let rem = u % 3_600_000_000_000;
    let minutes = rem / 60_000_000_000;
    let rem = rem % 60_000_000_000;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    push_fraction(&mut out, rem, 1_000_000_000);
    out.push('s');
    out
}

/// `value / scale` with the fraction's trailing zeros removed.
fn push_fraction(out: &mut String, value: u64, scale: u64) {
    out.push_str(&(value / scale).to_string());
    let frac = value % scale;
    if frac > 0 {
        let digits = scale.ilog10() as usize;
        let s = format!("{frac:0digits$}");
        out.push('.');
        out.push_str(s.trim_end_matches('0'));
    }
}

/// Parses a Go duration string (`1h30m`, `-1.5h`, `300ms`, `2us`) into nanoseconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut exact: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." {
            return None;
        }
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        match num.split_once('.') {
            None => exact += num.parse::<i128>().ok()? * scale,
            Some((int, frac)) => {
                let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
                exact += int * scale;
                if !frac.is_empty() {
                    let f: f64 = format!("0.{frac}").parse().ok()?;
                    total += f * scale as f64;
                }
            }
        }
    }
    let value = exact + total.round() as i128;
    let value = if neg { -value } else { value };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_like_go() {
        for (nanos, text) in [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (4 * 60_000_000_000 + 5_000_000_000, "4m5s"),
            (3_600_000_000_000, "1h0m0s"),
            (5_400_000_000_000 + 500_000_000, "1h30m0.5s"),
            (-1_500_000_000, "-1.5s"),
        ] {
            assert_eq!(format_duration(nanos), text, "format {nanos}");
            assert_eq!(parse_duration(text), Some(nanos), "parse {text}");
        }
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("300us"), Some(300_000));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn times_round_trip_and_drop_sub_second_precision_like_go() {
        assert_eq!(
            format_time(1_714_557_600).as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00+02:00"),
            Some((1_714_557_600, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T10:00:00.25Z"),
            Some((1_714_557_600, 250_000_000))
        );
        assert_eq!(
            format_micro_time(1_714_557_600, 250_000_999).as_deref(),
            Some("2024-05-01T10:00:00.250000Z")
        );
        assert_eq!(
            format_time(GO_ZERO_SECONDS).as_deref(),
            Some("0001-01-01T00:00:00Z")
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
