//! The listing of cur/, where the legacy software moves what it has read: an index kept while
//! it is settled, so publication can find an entry already delivered.

use super::*;

/// The entries of `cur/` by name without their Maildir flags, as of `cur/`'s mtime.
///
/// Before each new entry, [`Spool::find_entry`] looks for an entry of the same name the
/// consumer may have taken into `cur/` as `NAME:2,FLAGS`: a listing of `cur/`, which a
/// consumer that keeps years of entries makes long. The listing is kept while `cur/`'s mtime
/// stays the one seen before it; every creation, rename or removal in `cur/` changes that
/// mtime. A listing is kept only when that mtime was already older than
/// [`CUR_INDEX_SETTLED`] when it was taken ("racy" mtimes, as git's index has them): a change
/// in the same clock tick as an earlier one could otherwise leave the mtime as it was.
#[derive(Debug, Default)]
pub(super) struct CurIndex {
    pub(super) mtime: Option<SystemTime>,
    /// Entry name → file name in `cur/` (`NAME` or `NAME:2,FLAGS`).
    pub(super) names: HashMap<String, OsString>,
}

/// How old `cur/`'s mtime must be for a listing of it to be kept.
pub(super) const CUR_INDEX_SETTLED: Duration = Duration::from_secs(2);

/// An entry name is one plain, visible path component that fits with the tmp suffix.
/// The entries in `cur/` by name: `NAME` and `NAME:2,FLAGS` are both the entry `NAME`
/// (entry names hold no ':'). A listing that fails is said and taken as empty.
pub(super) fn list_cur(cur: &Path) -> HashMap<String, OsString> {
    let mut names = HashMap::new();
    let listing = match fs::read_dir(cur) {
        Ok(listing) => listing,
        Err(e) => {
            tracing::warn!(dir = %cur.display(), error = %e, "cannot list the spool's cur/");
            return names;
        }
    };
    for item in listing {
        match item {
            Ok(item) => {
                let file = item.file_name();
                let Some(name) = file.to_str() else { continue };
                let entry = name.split_once(":2,").map_or(name, |(entry, _)| entry);
                names.insert(entry.to_string(), file.clone());
            }
            Err(e) => {
                tracing::warn!(dir = %cur.display(), error = %e, "cannot list the spool's cur/");
            }
        }
    }
    names
}

impl Spool {
    pub(super) fn find_in_cur(&self, entry_name: &str) -> EntryLocation {
        let cur = self.cur();
        let exact = cur.join(entry_name);
        if fs::symlink_metadata(&exact).is_ok() {
            return EntryLocation::Cur(exact);
        }
        let mtime = fs::metadata(&cur).and_then(|m| m.modified()).ok();
        let mut index = self.cur_index.lock().unwrap_or_else(|p| p.into_inner());
        if mtime.is_none() || index.mtime != mtime {
            let settled = mtime.filter(|m| {
                SystemTime::now()
                    .duration_since(*m)
                    .is_ok_and(|age| age >= CUR_INDEX_SETTLED)
            });
            index.names = list_cur(&cur);
            index.mtime = settled;
        }
        match index.names.get(entry_name) {
            Some(file) => EntryLocation::Cur(cur.join(file)),
            None => EntryLocation::Absent,
        }
    }
}
