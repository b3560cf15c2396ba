//! Names from the hub: attachment file names through `safe_file_name` and `FileNamer`, ids
//! through `entry_name`. Always safe, unique within an entry (case-insensitively), distinct
//! for distinct deliveries, stable. The same checks as tests/reliability_props.rs.
#![no_main]

use std::collections::HashSet;

use hubee_sync::deliver::names::{entry_name, safe_file_name, FileNamer, MAX_NAME_BYTES};
use libfuzzer_sys::fuzz_target;

fn is_windows_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_uppercase();
    if ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"].contains(&upper.as_str()) {
        return true;
    }
    let mut chars = upper.chars();
    let head: String = chars.by_ref().take(3).collect();
    let tail: String = chars.collect();
    (head == "COM" || head == "LPT")
        && ["1", "2", "3", "4", "5", "6", "7", "8", "9", "¹", "²", "³"].contains(&tail.as_str())
}

fn assert_safe_file_name(name: &str, from: &str) {
    assert!(
        !name.is_empty() && name.len() <= MAX_NAME_BYTES,
        "{name:?} from {from:?}"
    );
    assert!(
        !name.starts_with('.') && !name.contains(".."),
        "{name:?} from {from:?}"
    );
    assert!(
        !name.ends_with('.') && !name.ends_with(' '),
        "{name:?} from {from:?}"
    );
    assert!(
        !name
            .chars()
            .any(|c| c.is_control() || "/\\<>:\"|?*".contains(c)),
        "{name:?} from {from:?}"
    );
    assert!(!is_windows_device(name), "{name:?} from {from:?}");
}

fn assert_safe_entry(name: &str) {
    assert!(!name.is_empty() && name.len() <= MAX_NAME_BYTES, "{name:?}");
    assert!(!name.starts_with('.') && !name.ends_with('.'), "{name:?}");
    assert!(!is_windows_device(name), "{name:?}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)),
        "{name:?}"
    );
}

fuzz_target!(
    |input: (Vec<String>, String, String, String, String, u8, u8)| {
        let (files, external, case_a, case_b, event, round_a, round_b) = input;
        let (round_a, round_b) = (u32::from(round_a % 4), u32::from(round_b % 4));

        let mut namer = FileNamer::new();
        let mut again = FileNamer::new();
        let mut seen = HashSet::new();
        for raw in &files {
            let single = safe_file_name(raw);
            assert_safe_file_name(&single, raw);
            assert_eq!(single, safe_file_name(raw), "stable");
            let name = namer.name_for(raw);
            assert_safe_file_name(&name, raw);
            assert_eq!(name, again.name_for(raw), "stable");
            assert!(
                seen.insert(name.to_lowercase()),
                "{name:?} twice in {files:?}"
            );
        }

        let a = entry_name(&external, &case_a, None, round_a);
        assert_safe_entry(&a);
        assert_eq!(a, entry_name(&external, &case_a, None, round_a), "stable");
        let ev = entry_name(&external, &case_a, Some(&event), 0);
        assert_safe_entry(&ev);
        assert_ne!(a, ev);
        if case_a != case_b {
            assert_ne!(a, entry_name(&external, &case_b, None, round_a));
        }
        if round_a != round_b {
            assert_ne!(a, entry_name(&external, &case_a, None, round_b));
        }
    }
);
