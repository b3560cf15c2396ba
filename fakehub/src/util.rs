//! Small helpers: UUIDs, RFC 3339 times, urlencoded forms, the HubEE error envelope.
//! Hand-written to keep the fake's dependencies lean.

use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random version-4 UUID drawn from `rng` (so `--seed` makes ids reproducible).
pub(crate) fn uuid_v4(rng: &mut fastrand::Rng) -> String {
    let mut b = [0u8; 16];
    for x in b.iter_mut() {
        *x = rng.u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::content::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Path ids are validated as UUIDs (PROTOCOL §3): 8-4-4-4-12 hex digits.
pub(crate) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Date-time styles seen in the documents (PROTOCOL §3): `2022-03-01T16:24:44.521Z` [CI] and
/// `2024-07-04T08:54:15.438+00:00` [FQF]. The fake uses both, so clients must parse both.
#[derive(Clone, Copy)]
pub(crate) enum TimeStyle {
    Zulu,
    Offset,
}

pub(crate) fn now_rfc3339(style: TimeStyle) -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let suffix = match style {
        TimeStyle::Zulu => "Z",
        TimeStyle::Offset => "+00:00",
    };
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}{suffix}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `a=b&c=d` (query strings and `application/x-www-form-urlencoded` bodies).
pub(crate) fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A path segment, percent-decoded (`+` stays a plus sign).
pub(crate) fn percent_decode_path(s: &str) -> String {
    percent_decode(&s.replace('+', "%2B"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hexval = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hexval {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HubEE error envelope (PROTOCOL §3): `{"errors":[{"code":…,"message":"…"}]}`.
pub(crate) fn envelope(code: Value, message: &str) -> Value {
    json!({"errors": [{"code": code, "message": message}]})
}

/// The swagger-request-validator message format quoted in PROTOCOL §3.
pub(crate) fn validation_message(method: &str, path: &str, location: &str, detail: &str) -> String {
    format!(
        "Bad Request : Validation failed.\n[ERROR][REQUEST][{method} {path} @{location}] {detail}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_generated_and_validated() {
        let mut rng = fastrand::Rng::with_seed(1);
        let id = uuid_v4(&mut rng);
        assert!(is_uuid(&id), "{id}");
        assert!(!is_uuid("dddddd"));
        assert!(!is_uuid("sdeabb0c-5dd1-4ere0-9fg5-22526fb52492"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn urlencoded() {
        assert_eq!(
            parse_urlencoded("scope=SI&grant_type=client_credentials&x=a%20b+c&y"),
            vec![
                ("scope".into(), "SI".into()),
                ("grant_type".into(), "client_credentials".into()),
                ("x".into(), "a b c".into()),
                ("y".into(), "".into())
            ]
        );
        assert_eq!(
            parse_urlencoded("a=%zz%4"),
            vec![("a".into(), "%zz%4".into())]
        );
    }
}
