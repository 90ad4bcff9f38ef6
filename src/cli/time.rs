//! Times as a person types them on the command line, wherever a command takes one
//! (`quota set --expires`, `org create --expires`, `audit export --from/--to`): RFC 3339
//! (`2027-06-30T12:00:00Z`; the `T` may be a space, the `Z` left out), a plain date
//! (`2027-06-30`, midnight UTC), a duration from now (`+365d`, `+12h`, `-7d`, in
//! humantime's units), or Unix milliseconds (`1798675200000`, what the flags took
//! first). A license expiry also takes `none`, which removes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A license expiry given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `none` (or `0`, as `--expires-at-unix-ms` took it): no expiry.
    Never,
    /// Unix milliseconds.
    At(i64),
}

impl Expiry {
    /// The wire's form: Unix milliseconds, 0 for none.
    pub fn unix_ms(self) -> i64 {
        match self {
            Expiry::Never => 0,
            Expiry::At(at) => at,
        }
    }
}

/// Parses `--expires`: `none`, or a time as [`parse_time`] takes it.
pub fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Expiry::Never);
    }
    match parse_time(text)? {
        0 => Ok(Expiry::Never),
        at => Ok(Expiry::At(at)),
    }
}

/// A time as Unix milliseconds, relative ones counted from now.
pub fn parse_time(text: &str) -> Result<i64, String> {
    parse_time_at(text, SystemTime::now())
}

fn parse_time_at(text: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    if let Some(at) = relative(text, now)? {
        return unix_ms(text, at);
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let at = if is_date(text) {
        humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339_weak(text)
    }
    .map_err(|e| {
        format!(
            "{text:?} is not a time: give RFC 3339 (2027-06-30T12:00:00Z), a date \
             (2027-06-30, midnight UTC), a duration from now (+365d, +12h, -7d) or Unix \
             milliseconds ({e})"
        )
    })?;
    unix_ms(text, at)
}

/// `+DURATION` or `-DURATION` from `now`; `None` when `text` is not one (a signed
/// number without a unit is Unix milliseconds).
fn relative(text: &str, now: SystemTime) -> Result<Option<SystemTime>, String> {
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => return Ok(None),
    };
    if rest.parse::<i64>().is_ok() {
        return Ok(None);
    }
    let duration: Duration = humantime::parse_duration(rest)
        .map_err(|e| format!("{text:?} is not a duration from now such as +365d or +12h: {e}"))?;
    let at = if sign > 0 {
        now.checked_add(duration)
    } else {
        now.checked_sub(duration)
    };
    at.map(Some)
        .ok_or_else(|| format!("{text:?} is too far away"))
}

/// `YYYY-MM-DD` alone.
fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

fn unix_ms(text: &str, at: SystemTime) -> Result<i64, String> {
    let since_epoch = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| format!("{text:?} is too far away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z.
    const NOW_MS: u64 = 1_796_083_200_000;

    fn at(text: &str) -> Result<i64, String> {
        parse_time_at(text, UNIX_EPOCH + Duration::from_millis(NOW_MS))
    }

    #[test]
    fn rfc_3339_dates_and_unix_ms() {
        assert_eq!(at("1500").unwrap(), 1500);
        assert_eq!(at("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(at("2027-06-30").unwrap(), 1_814_313_600_000);
        assert_eq!(at("2027-06-30T00:00:00Z").unwrap(), 1_814_313_600_000);
        assert_eq!(at("2027-06-30 12:00:00").unwrap(), 1_814_356_800_000);
    }

    #[test]
    fn durations_count_from_now() {
        let day_ms = 86_400_000;
        assert_eq!(at("+365d").unwrap(), NOW_MS as i64 + 365 * day_ms);
        assert_eq!(at("+12h").unwrap(), NOW_MS as i64 + day_ms / 2);
        assert_eq!(at("-7d").unwrap(), NOW_MS as i64 - 7 * day_ms);
        assert_eq!(at("+5").unwrap(), 5, "a number without a unit is Unix ms");
    }

    #[test]
    fn what_is_no_time_is_refused_with_the_forms_it_takes() {
        let error = at("yesterday").unwrap_err();
        assert!(error.contains("2027-06-30"), "{error}");
        assert!(at("+soon").unwrap_err().contains("+365d"));
        assert!(at("2027-13-45").is_err());
    }

    #[test]
    fn an_expiry_may_be_none() {
        assert_eq!(parse_expiry("none").unwrap(), Expiry::Never);
        assert_eq!(parse_expiry("0").unwrap(), Expiry::Never);
        assert_eq!(
            parse_expiry("2027-06-30").unwrap(),
            Expiry::At(1_814_313_600_000)
        );
    }
}
