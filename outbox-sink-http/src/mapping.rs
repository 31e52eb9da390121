//! What an HTTP answer means for an event: the one mapping both targets
//! use (native `reqwest` and the browser's `fetch` only fetch; they never
//! decide). Pure: the current time is an argument.
//!
//! | answer | outcome |
//! | --- | --- |
//! | `2xx` | [`Outcome::Ok`] (the body is never read) |
//! | `409 Conflict` (the receiver already applied this id) | [`Outcome::Ok`] |
//! | `408`, `429`, `5xx` | [`Outcome::Retriable`], or [`Outcome::RetryAfter`] with a valid `Retry-After` |
//! | a network error, a timeout | [`Outcome::Retriable`] |
//! | other `4xx`, any `3xx` (redirects are not followed), `1xx`, a status past `599` | [`Outcome::NonRetriable`] |

use std::time::Duration;

use outbox_core::{Outcome, Timestamp};

/// The outcome of an HTTP answer with `status` and, if the response had
/// one, the value of its `Retry-After` header; `now` dates an HTTP-date
/// `Retry-After`. `Retry-After` counts only on the retriable statuses
/// (`408`, `429`, `5xx`); a value that does not parse is ignored (plain
/// [`Outcome::Retriable`]).
pub fn outcome_for_status(status: u16, retry_after: Option<&str>, now: Timestamp) -> Outcome {
    match status {
        200..=299 | 409 => Outcome::Ok,
        408 | 429 | 500..=599 => {
            let message = format!("HTTP {status}: the receiver asks to retry");
            match retry_after.and_then(|v| parse_retry_after(v, now)) {
                Some(delay) => Outcome::RetryAfter(delay, message),
                None => Outcome::Retriable(message),
            }
        }
        300..=399 => Outcome::NonRetriable(format!(
            "HTTP {status}: a redirect, which the sink does not follow (configure the final URL)"
        )),
        400..=499 => Outcome::NonRetriable(format!("HTTP {status}: the receiver refused the event")),
        _ => Outcome::NonRetriable(format!("HTTP {status}: not a final status the sink can act on")),
    }
}

/// The outcome of a request that got no answer within `timeout`.
pub(crate) fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Retriable(format!("no answer within {} ms", timeout.as_millis()))
}

/// The outcome of a request that failed before any answer (connection
/// refused or reset, DNS, TLS, the browser's network error).
pub(crate) fn network_error(detail: &str) -> Outcome {
    Outcome::Retriable(format!("network error: {detail}"))
}

/// The outcome of a redirect the browser reported without its status
/// (`fetch` with `redirect: "manual"` hides it).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn redirect_not_followed() -> Outcome {
    Outcome::NonRetriable(
        "HTTP 3xx: a redirect, which the sink does not follow (configure the final URL)".into(),
    )
}

/// The outcome of a request the sink could not make because the
/// application's header callback returned a header HTTP cannot carry. The
/// callback may return a good one next time (a refreshed token), so the
/// event is retried; the retry policy gives up in the end.
pub(crate) fn bad_callback_header(detail: &str) -> Outcome {
    Outcome::Retriable(format!("the header callback returned an invalid header: {detail}"))
}

/// The delay a `Retry-After` value asks for: delta-seconds (`"120"`), or an
/// HTTP-date (IMF-fixdate `"Sun, 06 Nov 1994 08:49:37 GMT"`, or the
/// obsolete RFC 850 and asctime forms RFC 9110 asks recipients to accept),
/// counted from `now`; a date in the past is a zero delay. `None` when the
/// value is neither.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim_matches([' ', '\t']);
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds; more digits than a u64 holds saturate.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    Some(parse_http_date(value, now)?.duration_since(now))
}

/// An HTTP-date (RFC 9110 §5.6.7) as milliseconds since the epoch: the
/// IMF-fixdate form, the RFC 850 form (its two-digit year read as RFC 9110
/// says, never more than 50 years after `now`) and the asctime form.
/// Month and day names are matched without regard to case; the day name is
/// not checked against the date.
pub fn parse_http_date(value: &str, now: Timestamp) -> Option<Timestamp> {
    let value = value.trim_matches([' ', '\t']);
    let (year, month, day, time) = if let Some((day_name, rest)) = value.split_once(',') {
        day_index(day_name)?;
        let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
        match parts.as_slice() {
            // IMF-fixdate: "06 Nov 1994 08:49:37 GMT".
            [day, month, year, time, "GMT"] if year.len() == 4 && day.len() == 2 => {
                (digits(year)?, month_index(month)?, digits(day)?, *time)
            }
            // RFC 850: "06-Nov-94 08:49:37 GMT".
            [date, time, "GMT"] => {
                let mut fields = date.split('-');
                let (day, month, yy) = (fields.next()?, fields.next()?, fields.next()?);
                if fields.next().is_some() || day.len() != 2 || yy.len() != 2 {
                    return None;
                }
                (two_digit_year(digits(yy)?, now), month_index(month)?, digits(day)?, *time)
            }
            _ => return None,
        }
    } else {
        // asctime: "Sun Nov  6 08:49:37 1994".
        let parts: Vec<&str> = value.split_ascii_whitespace().collect();
        match parts.as_slice() {
            [day_name, month, day, time, year] if year.len() == 4 && day.len() <= 2 => {
                day_index(day_name)?;
                (digits(year)?, month_index(month)?, digits(day)?, *time)
            }
            _ => return None,
        }
    };
    let mut hms = time.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() || h.len() != 2 || m.len() != 2 || s.len() != 2 {
        return None;
    }
    let (h, m, s) = (digits(h)?, digits(m)?, digits(s)?);
    // 60: a leap second.
    if h > 23 || m > 59 || s > 60 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3_600 + m * 60 + s;
    Some(Timestamp::from_millis(secs.checked_mul(1_000)?))
}

/// The value of an all-digit field.
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// 1..=12 for a three-letter month name.
fn month_index(s: &str) -> Option<i64> {
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(s))?;
    i64::try_from(i + 1).ok()
}

/// Whether `s` is a day name, short or long.
fn day_index(s: &str) -> Option<usize> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .or_else(|| LONG_DAYS.iter().position(|d| d.eq_ignore_ascii_case(s)))
}

/// RFC 9110: a two-digit year that would be more than 50 years in the
/// future is the most recent past year with those last two digits.
fn two_digit_year(yy: i64, now: Timestamp) -> i64 {
    let now_year = civil_year(now.as_millis().div_euclid(86_400_000));
    let mut year = now_year - now_year.rem_euclid(100) + yy;
    if year > now_year + 50 {
        year -= 100;
    }
    year
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day counted from 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_year(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400;
    if month <= 2 { year + 1 } else { year }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1994-11-06 08:49:37 UTC, RFC 9110's example date.
    const EXAMPLE_MS: i64 = 784_111_777_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn success_and_conflict_are_ok() {
        for status in [200, 201, 202, 204, 299, 409] {
            assert_eq!(outcome_for_status(status, None, at(0)), Outcome::Ok, "{status}");
            // Retry-After means nothing on a success.
            assert_eq!(outcome_for_status(status, Some("5"), at(0)), Outcome::Ok, "{status}");
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retriable() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(outcome_for_status(status, None, at(0)), Outcome::Retriable(_)), "{status}");
            assert!(
                matches!(outcome_for_status(status, Some("soon"), at(0)), Outcome::Retriable(_)),
                "{status}: an unparsable Retry-After is ignored"
            );
            assert!(
                matches!(
                    outcome_for_status(status, Some("7"), at(0)),
                    Outcome::RetryAfter(d, _) if d == Duration::from_secs(7)
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn other_client_errors_redirects_and_odd_statuses_are_not_retriable() {
        for status in [
            400, 401, 403, 404, 405, 410, 413, 415, 422, 451, 499, 300, 301, 302, 304, 307, 308, 100, 0, 600,
            999,
        ] {
            assert!(
                matches!(outcome_for_status(status, Some("3"), at(0)), Outcome::NonRetriable(ref m) if m.contains(&status.to_string())),
                "{status}"
            );
        }
    }

    #[test]
    fn transport_failures_are_retriable() {
        assert!(matches!(timed_out(Duration::from_millis(200)), Outcome::Retriable(_)));
        assert!(matches!(network_error("refused"), Outcome::Retriable(_)));
        assert!(matches!(bad_callback_header("x"), Outcome::Retriable(_)));
        assert!(matches!(redirect_not_followed(), Outcome::NonRetriable(_)));
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_retry_after("0", at(0)), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 120\t", at(0)), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("99999999999999999999999", at(0)), Some(Duration::from_secs(u64::MAX)));
        for bad in ["", " ", "-1", "1.5", "+3", "3s", "0x10", "1 2"] {
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_three_http_date_forms() {
        let now = at(0);
        for form in
            ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"]
        {
            assert_eq!(parse_http_date(form, now), Some(at(EXAMPLE_MS)), "{form}");
        }
        assert_eq!(parse_http_date("sun, 06 NOV 1994 08:49:37 GMT", now), Some(at(EXAMPLE_MS)));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT", now), Some(at(0)));
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 23:59:59 GMT", now), Some(at(951_868_799_000)));
        assert_eq!(parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT", now), Some(at(253_402_300_799_000)));
    }

    #[test]
    fn rfc850_years_are_never_more_than_50_years_ahead() {
        // From 2026, "94" is 1994 and "30" is 2030.
        let now = at(1_780_000_000_000);
        let y94 = parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now);
        assert_eq!(y94, Some(at(EXAMPLE_MS)));
        let y30 = parse_http_date("Wednesday, 06-Nov-30 08:49:37 GMT", now).map(|t| t.as_millis());
        assert_eq!(y30, parse_http_date("Wed, 06 Nov 2030 08:49:37 GMT", now).map(|t| t.as_millis()));
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 6 08:49:37",
            "1994-11-06T08:49:37Z",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad, at(0)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_date_counts_from_now_and_a_past_date_is_zero() {
        let now = at(EXAMPLE_MS - 90_000);
        let d = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now);
        assert_eq!(d, Some(Duration::from_secs(90)));
        let later = at(EXAMPLE_MS + 3_600_000);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later), Some(Duration::ZERO));
        assert!(matches!(
            outcome_for_status(503, Some("Sun, 06 Nov 1994 08:49:37 GMT"), later),
            Outcome::RetryAfter(d, _) if d.is_zero()
        ));
    }

    #[test]
    fn civil_conversions_agree() {
        for days in [-800_000, -1, 0, 1, 59, 365, 10_957, 11_016, 2_932_896] {
            let y = civil_year(days);
            assert!(days_from_civil(y, 1, 1) <= days && days < days_from_civil(y + 1, 1, 1), "{days}");
        }
    }
}
