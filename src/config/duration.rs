//! Go's `time.Duration` text form, as kubeadm's config uses it ("24h0m0s", "500ms").

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub const fn secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }

    /// Parses Go's duration syntax: a sequence of decimal numbers with units ns, us, µs, ms, s, m, h.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid duration {s:?} (use Go syntax such as \"24h\", \"1m30s\", \"500ms\")")
        };
        let text = s.trim();
        if text == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if text.is_empty() || text.starts_with('-') {
            return Err(bad());
        }
        let mut rest = text.strip_prefix('+').unwrap_or(text);
        let mut total: f64 = 0.0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            total += value * nanos_per;
            rest = &rest[unit_len..];
        }
        // Go's time.Duration is an int64 of nanoseconds: about 292 years at most.
        if total.round() > i64::MAX as f64 {
            return Err(format!(
                "duration {s:?} is out of range (at most 2562047h47m16.854775807s)"
            ));
        }
        Ok(GoDuration(Duration::from_nanos(total.round() as u64)))
    }
}

impl std::fmt::Display for GoDuration {
    /// Go's `Duration.String()`: "24h0m0s", "1m30s", "500ms", "0s".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return write!(f, "0s");
        }
        if nanos < 1_000_000_000 {
            return match nanos {
                n if n < 1_000 => write!(f, "{n}ns"),
                n if n < 1_000_000 => write!(f, "{}µs", trim(n as f64 / 1e3)),
                n => write!(f, "{}ms", trim(n as f64 / 1e6)),
            };
        }
        let secs = self.0.as_secs();
        let frac = self.0.subsec_nanos();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        let sec = if frac == 0 {
            format!("{s}")
        } else {
            trim(s as f64 + frac as f64 / 1e9)
        };
        if h > 0 {
            write!(f, "{h}h{m}m{sec}s")
        } else if m > 0 {
            write!(f, "{m}m{sec}s")
        } else {
            write!(f, "{sec}s")
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GoDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_go() {
        for (text, secs, printed) in [
            ("24h", 86400, "24h0m0s"),
            ("8760h0m0s", 8760 * 3600, "8760h0m0s"),
            ("1m30s", 90, "1m30s"),
            ("4m", 240, "4m0s"),
            ("0", 0, "0s"),
            ("90s", 90, "1m30s"),
        ] {
            let d = GoDuration::parse(text).unwrap();
            assert_eq!(d.0.as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
        }
        assert_eq!(GoDuration::parse("500ms").unwrap().to_string(), "500ms");
        assert_eq!(GoDuration::parse("1.5h").unwrap().to_string(), "1h30m0s");
        for bad in [
            "",
            "10",
            "5 minutes",
            "-1h",
            "1x",
            "h",
            "2562048h",
            "1e400h",
        ] {
            assert!(GoDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
