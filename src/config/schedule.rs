//! When a subscription polls: `"every 5m"` or a cron expression with seconds. This room only
//! checks the syntax and the ranges of each field; the scheduler that computes the next run
//! lives elsewhere. Pure, no I/O.

use std::fmt;
use std::time::Duration;

use super::duration::parse_duration;

/// A validated schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// `"every 5m"`: a fixed interval from the end of one cycle to the start of the next.
    Every(Duration),
    /// A cron expression with seconds, as written (trimmed, fields separated by one space):
    /// `sec min hour day-of-month month day-of-week [year]`, Europe/Paris time.
    /// Day-of-week numbers are 0–7 (0 and 7 are Sunday); names `Mon`–`Sun` and `Jan`–`Dec`.
    Cron(String),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", super::duration::format_duration(*d)),
            Schedule::Cron(c) => f.write_str(c),
        }
    }
}

/// The shortest interval `every` accepts: anything faster hammers the hub.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl std::str::FromStr for Schedule {
    type Err = String;

    /// The error says what is wrong and how to write it instead.
    fn from_str(text: &str) -> Result<Schedule, String> {
        let s = text.trim();
        if let Some(rest) = s.strip_prefix("every ") {
            let d = parse_duration(rest).map_err(|why| {
                format!("{text:?} is not a schedule: the interval {why} — write \"every 5m\", \"every 30s\" or \"every 1h\"")
            })?;
            if d < MIN_EVERY {
                return Err(format!(
                    "{text:?} is too often — the interval must be at least 1s; write \"every 5m\" or similar"
                ));
            }
            return Ok(Schedule::Every(d));
        }
        parse_cron(s)
            .map(Schedule::Cron)
            .map_err(|why| format!("{text:?} is not a schedule: {why}"))
    }
}

const FIX: &str = r#"write a cron with seconds ("0 */5 * * * *") or "every 5m""#;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name stands for this number.
    names_from: u32,
    question_mark: bool,
}

const FIELDS: [Field; 7] = [
    Field {
        name: "seconds",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
    Field {
        name: "minutes",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
    Field {
        name: "hours",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
        question_mark: true,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
        names_from: 1,
        question_mark: false,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
        names_from: 0,
        question_mark: true,
    },
    Field {
        name: "year",
        min: 1970,
        max: 2099,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
];

/// Checks a cron expression with seconds; returns it normalised (single spaces).
fn parse_cron(s: &str) -> Result<String, String> {
    if s.starts_with('@') {
        return Err(format!("macros such as @hourly are not supported — {FIX}"));
    }
    let parts: Vec<&str> = s.split_whitespace().collect();
    match parts.len() {
        6 | 7 => {}
        5 => {
            return Err(format!(
                "it has 5 fields, but this cron has seconds first — put the second in front, e.g. \"0 {s}\""
            ))
        }
        0 => return Err(format!("it is empty — {FIX}")),
        n => return Err(format!("it has {n} fields instead of 6 (or 7 with a year) — {FIX}")),
    }
    for (part, field) in parts.iter().zip(FIELDS.iter()) {
        check_field(part, field)
            .map_err(|why| format!("the {} field {part:?} {why} — {FIX}", field.name))?;
    }
    Ok(parts.join(" "))
}

fn check_field(text: &str, field: &Field) -> Result<(), String> {
    if text == "?" {
        return if field.question_mark {
            Ok(())
        } else {
            Err("cannot be `?` (only day of month and day of week can)".into())
        };
    }
    for item in text.split(',') {
        if item.is_empty() {
            return Err("has an empty list item".into());
        }
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("has a step {step:?} that is not a number"))?;
            if n == 0 || n > field.max - field.min + 1 {
                return Err(format!(
                    "has a step of {n}; it must be from 1 to {}",
                    field.max - field.min + 1
                ));
            }
        }
        if base == "*" {
            continue;
        }
        if base == "?" {
            return Err("uses `?` inside a list or with a step".into());
        }
        match base.split_once('-') {
            Some((a, b)) => {
                let a = value(a, field)?;
                let b = value(b, field)?;
                if a > b {
                    return Err(format!(
                        "has a range that runs backwards ({a} > {b}); split it into two, e.g. \"{a}-{},{}-{b}\"",
                        field.max, field.min
                    ));
                }
            }
            None => {
                value(base, field)?;
            }
        }
    }
    Ok(())
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if n < field.min || n > field.max {
            return Err(format!("has {n}, outside {}–{}", field.min, field.max));
        }
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        // `names` are short lists: the index always fits.
        return Ok(field.names_from + i as u32);
    }
    if field.names.is_empty() {
        Err(format!("has {text:?}, which is not a number"))
    } else {
        Err(format!(
            "has {text:?}, which is neither a number nor a name ({}…)",
            field.names[..3].join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Schedule {
        s.parse().unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
    }

    #[test]
    fn every_and_cron_with_seconds_are_accepted() {
        assert_eq!(ok("every 5m"), Schedule::Every(Duration::from_secs(300)));
        assert_eq!(ok("0 */5 * * * *"), Schedule::Cron("0 */5 * * * *".into()));
        assert_eq!(
            ok(" 0  0 8 * * Mon-Fri "),
            Schedule::Cron("0 0 8 * * Mon-Fri".into())
        );
        ok("0 0 8 ? * MON,WED,FRI");
        ok("0 0 8 1 JAN-jun ? 2030");
        ok("30 15 8-18/2 1,15 * 0-7");
        ok("0 5/10 * * * *");
    }

    #[test]
    fn bad_schedules_say_why() {
        for (bad, why) in [
            ("every banana", "interval"),
            ("*/5 * * * *", "seconds first"),
            ("60 * * * * *", "outside 0–59"),
            ("0 0 25 * * *", "outside 0–23"),
            ("0 0 0 0 * *", "outside 1–31"),
            ("0 0 0 * 13 *", "outside 1–12"),
            ("0 0 0 * * Mun", "neither a number nor a name"),
            ("0 */0 * * * *", "step of 0"),
            ("0 10-5 * * * *", "backwards"),
            ("? * * * * *", "cannot be `?`"),
            ("@hourly", "macros"),
            ("0 0 0 * * * * *", "8 fields"),
            ("every 0s", "at least 1s"),
            ("0 0 0 L * *", "not a number"),
        ] {
            let err = bad.parse::<Schedule>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
