//! `strftime_now(format)` for templates that date their system prompt (Llama 3.2: `"%d %b %Y"`).
//!
//! Python's `datetime.now().strftime(format)` uses local time; Hone uses UTC, which is what servers
//! and containers run in, and avoids a time-zone database. The C directives templates use are
//! supported; any other `%x` is written out unchanged, as glibc does.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

pub(super) fn strftime_now(format: String) -> String {
    let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    format_utc(now, &format)
}

/// Formats a Unix time (seconds, UTC) with C `strftime` directives.
pub(crate) fn format_utc(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        let text = match directive {
            'a' => DAYS[weekday][..3].to_owned(),
            'A' => DAYS[weekday].to_owned(),
            'b' | 'h' => MONTHS[month as usize - 1][..3].to_owned(),
            'B' => MONTHS[month as usize - 1].to_owned(),
            'd' => format!("{day:02}"),
            'e' => format!("{day:2}"),
            'm' => format!("{month:02}"),
            'y' => format!("{:02}", year.rem_euclid(100)),
            'Y' => year.to_string(),
            'H' => format!("{hour:02}"),
            'I' => format!("{hour12:02}"),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            'p' => if hour < 12 { "AM" } else { "PM" }.to_owned(),
            'j' => format!("{day_of_year:03}"),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            '%' => "%".to_owned(),
            other => format!("%{other}"),
        };
        out.push_str(&text);
    }
    out
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01, the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "%d %b %Y|%A %a %B %b|%Y-%m-%d %H:%M:%S|%y %j %I %p|%%|%e";

    // Expected strings from Python: datetime.fromtimestamp(t, timezone.utc).strftime(FORMAT).
    #[test]
    fn matches_python_strftime() {
        assert_eq!(
            format_utc(1_721_999_109, FORMAT),
            "26 Jul 2024|Friday Fri July Jul|2024-07-26 13:05:09|24 208 01 PM|%|26"
        );
        assert_eq!(
            format_utc(951_782_400, FORMAT),
            "29 Feb 2000|Tuesday Tue February Feb|2000-02-29 00:00:00|00 060 12 AM|%|29"
        );
        assert_eq!(
            format_utc(-1, FORMAT),
            "31 Dec 1969|Wednesday Wed December Dec|1969-12-31 23:59:59|69 365 11 PM|%|31"
        );
    }

    #[test]
    fn unknown_directives_pass_through() {
        assert_eq!(format_utc(0, "%Q %Y %"), "%Q 1970 %");
    }

    #[test]
    fn now_is_a_plausible_date() {
        let year: i64 = strftime_now("%Y".into()).parse().unwrap();
        assert!(year >= 2024);
    }
}
