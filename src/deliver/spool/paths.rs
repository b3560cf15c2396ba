//! Safe names and paths inside the spool: an entry name checked, a relative path joined without
//! escaping its entry.

use super::*;

pub(super) fn check_entry_name(name: &str, dir: &Path) -> Result<(), SpoolError> {
    let reason = if name.is_empty() {
        Some("an entry name cannot be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("an entry name has at most 200 bytes")
    } else if name.starts_with('.') {
        Some("an entry name cannot start with '.'")
    } else if name.contains(['/', '\\', '\0', ':']) {
        Some("an entry name cannot contain '/', '\\', ':' or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpoolError::UnsafePath {
            path: name.to_string(),
            entry: dir.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `entry/rel_path`, provided `rel_path` is a plain relative path that stays in the entry.
pub(super) fn checked_join(entry: &Path, rel_path: &str) -> Result<PathBuf, SpoolError> {
    let refuse = |reason| SpoolError::UnsafePath {
        path: rel_path.to_string(),
        entry: entry.to_path_buf(),
        reason,
    };
    if rel_path.is_empty() {
        return Err(refuse("the path is empty"));
    }
    if rel_path.contains(['\0', '\\']) || rel_path.chars().any(char::is_control) {
        return Err(refuse("the path contains NUL, '\\' or a control character"));
    }
    let parts: Vec<&str> = rel_path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(refuse(
            "the path must be relative, without '.', '..' or empty parts",
        ));
    }
    let joined = entry.join(rel_path);
    let plain = Path::new(rel_path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain || !joined.starts_with(entry) {
        return Err(refuse("the path leaves the entry"));
    }
    Ok(joined)
}
