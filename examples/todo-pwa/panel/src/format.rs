//! How the panel writes times: short, and the same in every row.

/// A duration in milliseconds as `"850 ms"`, `"12 s"`, `"3 min 5 s"`,
/// `"2 h 10 min"` or `"4 d 3 h"` (negative durations count as zero).
pub(crate) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let s = ms / 1_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => with_rest(s / 60, "min", s % 60, "s"),
        3_600..86_400 => with_rest(s / 3_600, "h", s % 3_600 / 60, "min"),
        _ => with_rest(s / 86_400, "d", s % 86_400 / 3_600, "h"),
    }
}

fn with_rest(n: i64, unit: &str, rest: i64, rest_unit: &str) -> String {
    if rest == 0 { format!("{n} {unit}") } else { format!("{n} {unit} {rest} {rest_unit}") }
}

/// When the next attempt is due, seen at `now` (both in ms since the
/// epoch): `"now"` or `"in 3 s"`.
pub(crate) fn next_attempt(due: i64, now: i64) -> String {
    if due <= now { "now".to_owned() } else { format!("in {}", duration(due - now)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short_and_rounded_down() {
        assert_eq!(duration(-5), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_999), "12 s");
        assert_eq!(duration(60_000), "1 min");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(duration(4 * 86_400_000 + 3 * 3_600_000), "4 d 3 h");
    }

    #[test]
    fn a_due_attempt_is_now() {
        assert_eq!(next_attempt(1_000, 1_000), "now");
        assert_eq!(next_attempt(500, 1_000), "now");
        assert_eq!(next_attempt(4_000, 1_000), "in 3 s");
    }
}
