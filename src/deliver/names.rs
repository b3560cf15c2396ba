//! Safe names in the spool: entry directory names and attachment file names. Pure, no I/O.
//!
//! CONTRACT "Spool layout": names are unique, readable, at most 200 bytes, never escape their
//! directory, never hidden, and also safe on a Windows share (SMB) where the legacy software
//! often reads the spool.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// Longest entry or attachment name, in bytes (CONTRACT: "at most 200 bytes"). Leaves room
/// under NAME_MAX (255) for the `.{pid}.{random}` suffix of the private tmp/ directory.
pub const MAX_NAME_BYTES: usize = 200;

/// Name used for an attachment whose hub name leaves nothing usable.
const FALLBACK_FILE_NAME: &str = "fichier";

/// Shortest a cut external id may become: 7 readable bytes, '-', 8 hex digits of hash.
const MIN_CUT_PART: usize = 16;

/// The name of a spool entry: `{externalId}~{caseId}`, `{externalId}~{caseId}~{eventId}`,
/// plus `~r{round}` for the Nth reopening (round > 0).
///
/// Each part keeps `[A-Za-z0-9._-]` and turns anything else into `_`; an empty part becomes
/// `_`; a part starting with `.` is prefixed with `_` (no hidden entries, no `.`/`..`). The
/// whole name is at most [`MAX_NAME_BYTES`]: the external id is cut first (it is only there for
/// humans), the ids only if they alone are too long; a cut part ends with `-` and 8 hex digits
/// of the SHA-256 of the original part, so different ids still give different names.
pub fn entry_name(external_id: &str, case_id: &str, event_id: Option<&str>, round: u32) -> String {
    let round_suffix = if round > 0 {
        format!("~r{round}")
    } else {
        String::new()
    };
    let mut external = entry_part(external_id);
    // `aux.txt~…` would name a device on a Windows share: the stem before the first dot must
    // not be a reserved name. Decided here, before any cut, so the `~rN` suffix always stays.
    if is_windows_reserved(&external) {
        external.insert(0, '_');
    }
    // Ids must stay distinct after sanitising (`dossier/1` and `dossier_1`): when any
    // character was replaced, a short hash of the original keeps the name unique.
    let mut case = id_part(case_id);
    let mut event = event_id.map(id_part);

    let ids_len = |case: &str, event: &Option<String>| {
        case.len() + event.as_ref().map_or(0, |e| 1 + e.len()) + round_suffix.len()
    };
    // External id first: it gets what the ids leave, but never less than MIN_CUT_PART.
    let room_for_external = MAX_NAME_BYTES.saturating_sub(1 + ids_len(&case, &event));
    if external.len() > room_for_external {
        external = cut_part(&external, external_id, room_for_external.max(MIN_CUT_PART));
    }
    // Then the ids, if they alone are still too long: share what is left between them.
    let total = external.len() + 1 + ids_len(&case, &event);
    if total > MAX_NAME_BYTES {
        let separators = 1 + usize::from(event.is_some());
        let room = MAX_NAME_BYTES - external.len() - separators - round_suffix.len();
        match event.as_mut() {
            None => case = cut_part(&case, case_id, room),
            Some(ev) => {
                let half = room / 2;
                let (case_room, event_room) = if case.len() <= half {
                    (case.len(), room - case.len())
                } else if ev.len() <= room - half {
                    (room - ev.len(), ev.len())
                } else {
                    (half, room - half)
                };
                case = cut_part(&case, case_id, case_room);
                *ev = cut_part(ev, event_id.unwrap_or_default(), event_room);
            }
        }
    }

    let mut name = external;
    name.push('~');
    name.push_str(&case);
    if let Some(ev) = event {
        name.push('~');
        name.push_str(&ev);
    }
    name.push_str(&round_suffix);
    // Windows drops a trailing dot; the only way here is an id ending with '.'.
    while name.ends_with('.') || name.ends_with(' ') {
        name.pop();
        name.push('_');
    }
    name
}

/// An id as an entry part, with a hash of the original when sanitising changed it.
fn id_part(raw: &str) -> String {
    let part = entry_part(raw);
    // A trailing dot would be changed at the end of the name: count it as a change too.
    if part == raw && !part.ends_with('.') {
        part
    } else {
        format!("{part}-{}", short_hash(raw))
    }
}

/// One part of an entry name: ASCII `[A-Za-z0-9._-]`, never empty, never starting with '.'.
fn entry_part(raw: &str) -> String {
    let mut part: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if part.is_empty() || part.starts_with('.') {
        part.insert(0, '_');
    }
    part
}

/// Cuts an (ASCII) entry part to `max` bytes, ending it with `-` and 8 hex digits of the
/// SHA-256 of the original, so two long ids that share a prefix stay distinct.
fn cut_part(part: &str, original: &str, max: usize) -> String {
    if part.len() <= max {
        return part.to_string();
    }
    let hash = short_hash(original);
    let keep = max.saturating_sub(hash.len() + 1);
    // Parts are ASCII (entry_part), but stay safe on a char boundary anyway.
    let mut cut = keep;
    while !part.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{}", &part[..cut], hash)
}

fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    hex::encode(&digest[..4])
}

/// Allocates safe, unique file names for the attachments of one entry.
///
/// Uniqueness is checked case-insensitively: on a Windows share `Acte.pdf` and `acte.pdf` are
/// the same file.
#[derive(Debug, Default, Clone)]
pub struct FileNamer {
    /// Names already given, lower-cased.
    used: HashSet<String>,
}

impl FileNamer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A safe file name for an attachment the hub calls `hub_name`, unique within this namer.
    /// A duplicate gets `-2`, `-3`, … before its extension: `acte.pdf`, `acte-2.pdf`.
    pub fn name_for(&mut self, hub_name: &str) -> String {
        let base = safe_file_name(hub_name);
        if self.used.insert(base.to_lowercase()) {
            return base;
        }
        let (stem, ext) = split_extension(&base);
        for n in 2u64.. {
            let suffix = format!("-{n}");
            let stem = cut_stem(stem, MAX_NAME_BYTES - suffix.len() - ext.len());
            let candidate = format!("{stem}{suffix}{ext}");
            if self.used.insert(candidate.to_lowercase()) {
                return candidate;
            }
        }
        unreachable!("u64 suffixes exhausted")
    }
}

/// A file name safe on Linux and on a Windows share; not yet unique.
pub fn safe_file_name(hub_name: &str) -> String {
    let mut name = String::with_capacity(hub_name.len());
    for c in hub_name.chars() {
        // Combining accents (U+0300..U+036F) keep names from macOS (NFD) readable.
        let c = if c.is_alphanumeric() || is_allowed_punctuation(c) || is_combining_accent(c) {
            c
        } else {
            '_'
        };
        // No "..": a dot right after a dot becomes '_'.
        if c == '.' && name.ends_with('.') {
            name.push('_');
        } else {
            name.push(c);
        }
    }
    let mut name = trim_ends(&name).to_string();
    if name.is_empty() {
        return FALLBACK_FILE_NAME.to_string();
    }
    if name.starts_with('.') || is_windows_reserved(&name) {
        name.insert(0, '_');
    }
    if name.len() > MAX_NAME_BYTES {
        let (stem, ext) = split_extension(&name);
        name = format!("{}{}", cut_stem(stem, MAX_NAME_BYTES - ext.len()), ext);
    }
    name
}

/// Punctuation kept in file names: harmless in a shell-free world, on Linux and on Windows.
/// Space is kept but never at either end.
fn is_allowed_punctuation(c: char) -> bool {
    matches!(
        c,
        ' ' | '.'
            | '_'
            | '-'
            | '('
            | ')'
            | '+'
            | ','
            | ';'
            | '='
            | '@'
            | '['
            | ']'
            | '{'
            | '}'
            | '\''
            | '!'
            | '#'
            | '$'
            | '%'
            | '&'
            | '~'
    )
}

fn is_combining_accent(c: char) -> bool {
    ('\u{300}'..='\u{36f}').contains(&c)
}

/// Without leading spaces, trailing spaces or trailing dots (Windows drops those).
fn trim_ends(s: &str) -> &str {
    s.trim_start_matches(' ').trim_end_matches([' ', '.'])
}

/// Splits "acte.pdf" into ("acte", ".pdf"). An extension is kept only when it is short and
/// there is a stem before it; otherwise the whole name is the stem.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 16 && name.len() - dot > 1 => {
            name.split_at(dot)
        }
        _ => (name, ""),
    }
}

/// `stem` cut to at most `max` bytes at a char boundary, without trailing dots or spaces
/// (which would end up before the extension or at the very end).
fn cut_stem(stem: &str, max: usize) -> String {
    let mut cut = stem.len().min(max);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut = stem[..cut].trim_end_matches([' ', '.']);
    if cut.is_empty() {
        "_".to_string()
    } else {
        cut.to_string()
    }
}

/// Device names Windows reserves in every directory, with or without an extension, in any
/// case; "COM¹"…"LPT³" count too.
fn is_windows_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let (head, tail) = match upper.char_indices().nth(3) {
                Some((i, _)) => upper.split_at(i),
                None => return false,
            };
            (head == "COM" || head == "LPT")
                && matches!(
                    tail,
                    "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything CONTRACT promises about a file name, checked in one place.
    fn assert_safe(name: &str) {
        assert!(!name.is_empty(), "empty name");
        assert!(name.len() <= MAX_NAME_BYTES, "too long: {name:?}");
        assert!(!name.contains('/') && !name.contains('\\'), "{name:?}");
        assert!(!name.contains(".."), "{name:?}");
        assert!(!name.starts_with('.'), "{name:?}");
        assert!(!name.ends_with('.') && !name.ends_with(' '), "{name:?}");
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(!name.chars().any(|c| "<>:\"|?*".contains(c)), "{name:?}");
        assert!(!is_windows_reserved(name), "{name:?}");
        assert!(name != "." && name != "..");
    }

    #[test]
    fn hostile_names_never_escape_the_entry() {
        let long = "é".repeat(150) + ".pdf";
        let hostile = [
            "../../etc/passwd",
            "/abs",
            "a/b",
            "..",
            ".",
            "\\..\\x",
            "C:\\Windows\\system32",
            "a\u{0}b\nc\rd\te\u{7f}",
            "\u{202e}fdp.exe",
            &"x".repeat(300),
            &long,
            "",
            "   ",
            "...",
            "CON",
            "nul.txt",
            "Com1.tar.gz",
            "lpt9",
            "aux .txt",
            "trailing. ",
            "<>:\"|?*",
            ".bashrc",
            " .hidden",
        ];
        let mut namer = FileNamer::new();
        for h in hostile {
            let name = namer.name_for(h);
            assert_safe(&name);
            let path = std::path::Path::new("attachments").join(&name);
            assert_eq!(path.components().count(), 2, "{h:?} → {name:?}");
        }
        let mut namer = FileNamer::new();
        assert_eq!(namer.name_for(""), "fichier");
        assert_eq!(namer.name_for("CON"), "_CON");
        assert_eq!(namer.name_for("nul.txt"), "_nul.txt");
        assert_eq!(namer.name_for("trailing. "), "trailing");
        assert_eq!(namer.name_for(".."), "_._");
        assert_eq!(namer.name_for("a/b"), "a_b");
        assert_eq!(namer.name_for("<>:\"|?*"), "_______");
        assert_eq!(namer.name_for("../../etc/passwd"), "_.__.__etc_passwd");
        assert_eq!(namer.name_for("console.txt"), "console.txt");
        assert_eq!(namer.name_for("COM10"), "COM10");
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary_keeping_the_extension() {
        let mut namer = FileNamer::new();
        let name = namer.name_for(&("é".repeat(150) + ".pdf"));
        assert!(name.len() <= MAX_NAME_BYTES);
        assert!(name.ends_with(".pdf"), "{name}");
        assert!(name.starts_with("ééé"));
        // The duplicate still fits and keeps its extension.
        let dup = namer.name_for(&("é".repeat(150) + ".pdf"));
        assert!(
            dup.len() <= MAX_NAME_BYTES && dup.ends_with("-2.pdf"),
            "{dup}"
        );
    }

    #[test]
    fn french_names_stay_readable() {
        let mut namer = FileNamer::new();
        assert_eq!(
            namer.name_for("Acte de naissance (copie intégrale) n°12.pdf"),
            "Acte de naissance (copie intégrale) n_12.pdf"
        );
        assert_eq!(
            namer.name_for("Pièce d'identité.JPG"),
            "Pièce d'identité.JPG"
        );
    }

    #[test]
    fn duplicate_names_get_a_suffix_before_the_extension() {
        let mut namer = FileNamer::new();
        assert_eq!(namer.name_for("acte.pdf"), "acte.pdf");
        assert_eq!(namer.name_for("acte.pdf"), "acte-2.pdf");
        assert_eq!(namer.name_for("ACTE.PDF"), "ACTE-3.PDF");
        assert_eq!(namer.name_for("acte-2.pdf"), "acte-2-2.pdf");
        assert_eq!(namer.name_for("README"), "README");
        assert_eq!(namer.name_for("readme"), "readme-2");
        // Different hub names that become the same safe name are told apart too.
        assert_eq!(namer.name_for("a:b.txt"), "a_b.txt");
        assert_eq!(namer.name_for("a?b.txt"), "a_b-2.txt");
    }

    #[test]
    fn entry_name_replaces_unsafe_characters() {
        assert_eq!(entry_name("EXT-1", "abc", None, 0), "EXT-1~abc");
        assert_eq!(entry_name("EXT-1", "abc", Some("ev1"), 0), "EXT-1~abc~ev1");
        assert_eq!(entry_name("EXT-1", "abc", None, 2), "EXT-1~abc~r2");
        assert_eq!(entry_name("EXT-1", "abc", Some("ev"), 3), "EXT-1~abc~ev~r3");
        // A sanitised id carries a short hash of the original, so ids stay distinct.
        let h = |s: &str| short_hash(s);
        assert_eq!(
            entry_name("a/b c:é", "x~y", None, 0),
            format!("a_b_c__~x_y-{}", h("x~y"))
        );
        assert_ne!(
            entry_name("E", "dossier/1", None, 0),
            entry_name("E", "dossier_1", None, 0)
        );
        assert_eq!(
            entry_name("", "", Some(""), 0),
            format!("_~_-{0}~_-{0}", h(""))
        );
        assert_eq!(entry_name("..", ".", None, 0), format!("_..~_.-{}", h(".")));
        assert_eq!(entry_name("aux.txt", "id", None, 0), "_aux.txt~id");
        assert_eq!(entry_name("COM1", "id", None, 0), "_COM1~id");
        assert_eq!(entry_name("../../etc", "id", None, 0), "_.._.._etc~id");
        assert_eq!(
            entry_name("ext", "case.", None, 0),
            format!("ext~case.-{}", short_hash("case."))
        );
        assert_ne!(
            entry_name("ext", "case.", None, 0),
            entry_name("ext", "case_", None, 0)
        );
        let name = entry_name("\u{0}\n", "a\\b", Some("c/d"), 1);
        assert_eq!(
            name,
            format!("__~a_b-{}~c_d-{}~r1", short_hash("a\\b"), short_hash("c/d"))
        );
    }

    #[test]
    fn long_external_id_keeps_names_unique_and_short() {
        let case = "5f0e8d3c-1a2b-4c3d-8e9f-0123456789ab";
        let ext_a = format!("{}A", "x".repeat(300));
        let ext_b = format!("{}B", "x".repeat(300));
        let a = entry_name(&ext_a, case, Some(case), 7);
        let b = entry_name(&ext_b, case, Some(case), 7);
        assert!(a.len() <= MAX_NAME_BYTES && b.len() <= MAX_NAME_BYTES);
        assert_ne!(a, b, "cut external ids must stay distinct");
        assert!(
            a.ends_with(&format!("~{case}~{case}~r7")),
            "ids kept whole: {a}"
        );
        assert_eq!(
            a.len(),
            MAX_NAME_BYTES,
            "the external id uses the room left"
        );

        // Absurdly long ids are cut too, and still distinct.
        let long_case_a = format!("{}1", "c".repeat(400));
        let long_case_b = format!("{}2", "c".repeat(400));
        let a = entry_name("EXT", &long_case_a, Some(&"e".repeat(300)), u32::MAX);
        let b = entry_name("EXT", &long_case_b, Some(&"e".repeat(300)), u32::MAX);
        assert!(
            a.len() <= MAX_NAME_BYTES && b.len() <= MAX_NAME_BYTES,
            "{a}"
        );
        assert_ne!(a, b);
        assert!(a.starts_with("EXT~") && a.ends_with("~r4294967295"), "{a}");
        let a = entry_name(&"x".repeat(500), &long_case_a, None, 0);
        assert!(a.len() <= MAX_NAME_BYTES, "{a}");
        assert!(!a.starts_with('.') && !a.ends_with('.'));
    }
}
