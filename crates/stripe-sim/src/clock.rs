//! Simulated time: the wall clock plus a global offset, Stripe test clocks' frozen times, and calendar arithmetic for billing periods.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch by the wall clock (webhook signatures always use this).
pub fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    next - days_from_civil(y, m, 1)
}

/// Adds whole months, clamping the day to the month's length as Stripe does (Jan 31 → Feb 28 → Mar 31,
/// because each period is computed from the anchor, not from the previous period).
fn add_months(ts: i64, months: i64) -> i64 {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let total = y * 12 + (m - 1) + months;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd) * 86_400 + secs
}

/// The end of the `k`-th period after `anchor` for a Stripe recurring interval (`day|week|month|year`).
pub fn period_boundary(anchor: i64, interval: &str, interval_count: i64, k: i64) -> i64 {
    let n = interval_count.max(1) * k;
    match interval {
        "day" => anchor + n * 86_400,
        "week" => anchor + n * 7 * 86_400,
        "year" => add_months(anchor, 12 * n),
        _ => add_months(anchor, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_periods_clamp_to_month_end_and_recover() {
        let jan31 = days_from_civil(2026, 1, 31) * 86_400 + 3600;
        let feb = period_boundary(jan31, "month", 1, 1);
        assert_eq!(civil_from_days(feb / 86_400), (2026, 2, 28));
        let mar = period_boundary(jan31, "month", 1, 2);
        assert_eq!(civil_from_days(mar / 86_400), (2026, 3, 31));
        assert_eq!(mar % 86_400, 3600);
        let year = period_boundary(jan31, "year", 1, 1);
        assert_eq!(civil_from_days(year / 86_400), (2027, 1, 31));
    }
}
