//! What survives a power cut, under the weakest rules POSIX allows (issue 17):
//!
//! - file data written since the file's last `fsync`/`fdatasync` is not durable: a cut brings
//!   the file back to its size and bytes at that sync (optionally with a prefix of the last
//!   write kept: a torn write);
//! - a create, `mkdir`, `link`, `unlink`, `rmdir` or rename is not durable until its directory
//!   is fsynced after it (for a rename: both directories). Operations become durable in their
//!   order: one whose directories are all synced still waits for an earlier pending operation
//!   on the same name;
//! - a file whose directory entry is not durable is lost whole, fsynced or not.
//!
//! The live tree is the backing directory itself; the model keeps, beside it, the durable
//! namespace (each directory's durable entries, by node) and, for each file, its durable size
//! and the bytes that writes since its last sync overwrote (an undo log). A file unlinked while
//! some durable entry (or pending operation) still names it is moved into a graveyard
//! (`.powerfs/grave/`) instead of being removed, so its durable bytes are still there at a cut.
//! [`State::cut`] rebuilds the backing directory as the durable namespace describes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The root's node id (FUSE's root inode).
pub const ROOT: u64 = 1;
/// The model's own directory in the backing root, hidden from the mount.
pub const META: &str = ".powerfs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(PathBuf),
    /// FIFOs and the like: kept as names only.
    Other,
}

#[derive(Debug, Default, Clone)]
pub struct FileData {
    /// Size at the last sync (or at mount).
    pub durable_size: u64,
    /// Bytes of `[0, durable_size)` overwritten or cut off since: offset → the old bytes.
    /// Ranges never overlap.
    pub saved: BTreeMap<u64, Vec<u8>>,
    /// Written or truncated since the last sync (or created since the mount).
    pub dirty: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// Live names: (parent node, name). Empty once unlinked.
    pub links: Vec<(u64, OsString)>,
    /// Unlinked live but kept in the graveyard (its durable bytes may still be needed).
    pub grave: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub data: FileData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// create, mknod, mkdir, symlink, link.
    Link { dir: u64, name: OsString, node: u64 },
    /// unlink, rmdir.
    Unlink { dir: u64, name: OsString, node: u64 },
    /// rename (`exchange`: the node that was at the target, for RENAME_EXCHANGE).
    Rename {
        from: u64,
        from_name: OsString,
        to: u64,
        to_name: OsString,
        node: u64,
        exchange: Option<u64>,
    },
}

impl Op {
    fn slots(&self) -> Vec<(u64, OsString)> {
        match self {
            Op::Link { dir, name, .. } | Op::Unlink { dir, name, .. } => {
                vec![(*dir, name.clone())]
            }
            Op::Rename {
                from,
                from_name,
                to,
                to_name,
                ..
            } => vec![(*from, from_name.clone()), (*to, to_name.clone())],
        }
    }

    fn nodes(&self) -> Vec<u64> {
        match self {
            Op::Link { node, .. } | Op::Unlink { node, .. } => vec![*node],
            Op::Rename { node, exchange, .. } => {
                let mut v = vec![*node];
                v.extend(exchange);
                v
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    op: Op,
    /// Directories not fsynced since the operation.
    unsynced: BTreeSet<u64>,
}

/// Counters, for the campaigns' figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    /// Namespace operations not yet durable.
    pub pending_ops: u64,
}

/// What a cut threw away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose unsynced bytes were dropped (undo applied or size cut back).
    pub files_rolled_back: usize,
    /// Namespace operations that were not durable.
    pub ops_dropped: usize,
    /// The torn write kept, if any: (path, offset, bytes kept of the write).
    pub torn: Option<(PathBuf, u64, usize)>,
    /// Entries of the durable namespace (files, dirs, links) rebuilt.
    pub entries: usize,
}

pub struct State {
    pub backing: PathBuf,
    pub nodes: HashMap<u64, Node>,
    /// Backing inode number → node.
    pub by_ino: HashMap<u64, u64>,
    next_id: u64,
    /// Durable entries of each directory.
    durable: HashMap<u64, BTreeMap<OsString, u64>>,
    pending: Vec<Pending>,
    pub stats: Stats,
    /// The last write: (node, offset, bytes), for a torn write at the cut.
    last_write: Option<(u64, u64, Vec<u8>)>,
    /// When set, the cut keeps a prefix of the last write, of a length drawn from this seed.
    pub torn_seed: Option<u64>,
    pub cut: bool,
}

fn meta_of(backing: &Path) -> PathBuf {
    backing.join(META)
}

fn kind_of(meta: &fs::Metadata, path: &Path) -> Kind {
    let t = meta.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink(fs::read_link(path).unwrap_or_default())
    } else {
        Kind::Other
    }
}

impl State {
    /// Takes the backing directory as it is: all of it durable (what a disk holds at boot).
    pub fn open(backing: &Path) -> io::Result<State> {
        let meta = meta_of(backing);
        if meta.exists() {
            // A model directory left by a process that died without cutting: nothing in it is
            // part of the tree.
            fs::remove_dir_all(&meta)?;
        }
        let mut s = State {
            backing: backing.to_path_buf(),
            nodes: HashMap::new(),
            by_ino: HashMap::new(),
            next_id: ROOT + 1,
            durable: HashMap::new(),
            pending: Vec::new(),
            stats: Stats::default(),
            last_write: None,
            torn_seed: None,
            cut: false,
        };
        let root_meta = fs::symlink_metadata(backing)?;
        s.nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir,
                links: Vec::new(),
                grave: false,
                mode: root_meta.mode(),
                uid: root_meta.uid(),
                gid: root_meta.gid(),
                data: FileData::default(),
            },
        );
        s.by_ino.insert(root_meta.ino(), ROOT);
        let mut stack = vec![(ROOT, backing.to_path_buf())];
        while let Some((dir, path)) = stack.pop() {
            let mut entries = BTreeMap::new();
            for e in fs::read_dir(&path)? {
                let e = e?;
                let name = e.file_name();
                if dir == ROOT && name == META {
                    continue;
                }
                let p = e.path();
                let m = fs::symlink_metadata(&p)?;
                let id = match s.by_ino.get(&m.ino()) {
                    Some(&id) => {
                        // A hard link seen again.
                        if let Some(n) = s.nodes.get_mut(&id) {
                            n.links.push((dir, name.clone()));
                        }
                        id
                    }
                    None => {
                        let id = s.new_node(kind_of(&m, &p), &m, Some((dir, name.clone())));
                        if let Some(n) = s.nodes.get_mut(&id) {
                            n.data.durable_size = m.len();
                        }
                        if m.is_dir() {
                            stack.push((id, p));
                        }
                        id
                    }
                };
                entries.insert(name, id);
            }
            s.durable.insert(dir, entries);
        }
        Ok(s)
    }

    fn new_node(&mut self, kind: Kind, m: &fs::Metadata, link: Option<(u64, OsString)>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(
            id,
            Node {
                kind,
                links: link.into_iter().collect(),
                grave: false,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                data: FileData::default(),
            },
        );
        self.by_ino.insert(m.ino(), id);
        id
    }

    fn grave_path(&self, id: u64) -> PathBuf {
        meta_of(&self.backing).join("grave").join(id.to_string())
    }

    /// The live path of a node (its first name, or its graveyard file).
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        if id == ROOT {
            return Some(self.backing.clone());
        }
        let n = self.nodes.get(&id)?;
        if n.grave {
            return Some(self.grave_path(id));
        }
        let mut parts = Vec::new();
        let mut cur = id;
        let mut guard = 0;
        while cur != ROOT {
            let (parent, name) = self.nodes.get(&cur)?.links.first()?.clone();
            parts.push(name);
            cur = parent;
            guard += 1;
            if guard > 4096 {
                return None;
            }
        }
        let mut p = self.backing.clone();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Some(p)
    }

    /// The live path of `name` in directory `dir`.
    pub fn child_path(&self, dir: u64, name: &OsStr) -> Option<PathBuf> {
        Some(self.path(dir)?.join(name))
    }

    /// The node behind `name` in `dir` (registering it if it is new to the model).
    pub fn lookup(&mut self, dir: u64, name: &OsStr) -> io::Result<(u64, fs::Metadata)> {
        if dir == ROOT && name == META {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let p = self
            .child_path(dir, name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let m = fs::symlink_metadata(&p)?;
        let kind = kind_of(&m, &p);
        if let Some(&id) = self.by_ino.get(&m.ino()) {
            if let Some(n) = self.nodes.get_mut(&id) {
                let same_kind = std::mem::discriminant(&n.kind) == std::mem::discriminant(&kind);
                if same_kind && !n.grave {
                    let link = (dir, name.to_os_string());
                    if !n.links.contains(&link) {
                        n.links.push(link);
                    }
                    return Ok((id, m));
                }
            }
        }
        // Not made through the mount: count it as new (not durable).
        let id = self.new_node(kind, &m, Some((dir, name.to_os_string())));
        Ok((id, m))
    }

    /// After a create, mknod, mkdir or symlink done live at `dir/name`.
    pub fn created(&mut self, dir: u64, name: &OsStr) -> io::Result<(u64, fs::Metadata)> {
        let p = self
            .child_path(dir, name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let m = fs::symlink_metadata(&p)?;
        let id = self.new_node(kind_of(&m, &p), &m, Some((dir, name.to_os_string())));
        self.push(Op::Link {
            dir,
            name: name.to_os_string(),
            node: id,
        });
        Ok((id, m))
    }

    /// After a hard link done live.
    pub fn linked(&mut self, node: u64, dir: u64, name: &OsStr) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.links.push((dir, name.to_os_string()));
        }
        self.push(Op::Link {
            dir,
            name: name.to_os_string(),
            node,
        });
    }

    fn push(&mut self, op: Op) {
        let unsynced = op
            .slots()
            .into_iter()
            .map(|(d, _)| d)
            .collect::<BTreeSet<u64>>();
        self.pending.push(Pending { op, unsynced });
        self.stats.pending_ops = self.pending.len() as u64;
    }

    fn durably_named(&self, node: u64) -> bool {
        self.durable
            .values()
            .any(|e| e.values().any(|&n| n == node))
            || self.pending.iter().any(|p| p.op.nodes().contains(&node))
    }

    /// Takes `node`'s live name `dir/name` away: removes it, or moves it into the graveyard
    /// when the durable namespace may still need its bytes. Does not record an operation.
    fn drop_live_name(&mut self, node: u64, dir: u64, name: &OsStr) -> io::Result<()> {
        let p = self
            .child_path(dir, name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let Some(n) = self.nodes.get(&node) else {
            return fs::remove_file(&p);
        };
        let is_dir = n.kind == Kind::Dir;
        let last = n.links.len() <= 1;
        if is_dir {
            fs::remove_dir(&p)?;
        } else if last && n.kind == Kind::File && self.durably_named(node) {
            let grave = self.grave_path(node);
            if let Some(parent) = grave.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&p, &grave)?;
            if let Some(n) = self.nodes.get_mut(&node) {
                n.grave = true;
            }
        } else {
            fs::remove_file(&p)?;
        }
        if let Some(n) = self.nodes.get_mut(&node) {
            n.links.retain(|l| !(l.0 == dir && l.1 == name));
        }
        Ok(())
    }

    /// unlink or rmdir of `dir/name`, live and in the model.
    pub fn remove(&mut self, dir: u64, name: &OsStr, want_dir: bool) -> io::Result<()> {
        let (node, m) = self.lookup(dir, name)?;
        if want_dir && !m.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if !want_dir && m.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        self.drop_live_name(node, dir, name)?;
        self.push(Op::Unlink {
            dir,
            name: name.to_os_string(),
            node,
        });
        Ok(())
    }

    /// rename (with renameat2 flags), live and in the model.
    pub fn rename(
        &mut self,
        from: u64,
        from_name: &OsStr,
        to: u64,
        to_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let (node, _) = self.lookup(from, from_name)?;
        let src = self
            .child_path(from, from_name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let dst = self
            .child_path(to, to_name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let target = self.lookup(to, to_name).ok();
        if let Some((t, _)) = target {
            if t == node {
                return Ok(());
            }
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        if exchange && target.is_none() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if let (Some((t, tm)), false) = (target.as_ref(), exchange) {
            // The target is replaced: a file goes to the graveyard if still durably named; an
            // (empty) directory is replaced by the rename itself.
            if !tm.is_dir() {
                let sm = fs::symlink_metadata(&src)?;
                if sm.is_dir() {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                self.drop_live_name(*t, to, to_name)?;
            }
        }
        renameat2(
            &src,
            &dst,
            flags & (libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE),
        )?;
        let from_link = (from, from_name.to_os_string());
        let to_link = (to, to_name.to_os_string());
        if let Some(n) = self.nodes.get_mut(&node) {
            for l in n.links.iter_mut() {
                if *l == from_link {
                    *l = to_link.clone();
                }
            }
        }
        let mut other = None;
        if let Some((t, _)) = target {
            if let Some(n) = self.nodes.get_mut(&t) {
                if exchange {
                    for l in n.links.iter_mut() {
                        if *l == to_link {
                            *l = from_link.clone();
                        }
                    }
                    other = Some(t);
                } else {
                    n.links.retain(|l| *l != to_link);
                }
            }
        }
        self.push(Op::Rename {
            from,
            from_name: from_name.to_os_string(),
            to,
            to_name: to_name.to_os_string(),
            node,
            exchange: other,
        });
        Ok(())
    }

    /// Before bytes `[off, end)` of `node` change (a write, or a truncation): keeps the old
    /// bytes of that range that were durable and are not saved yet. `live` is the file.
    pub fn before_change(&mut self, node: u64, live: &fs::File, off: u64, end: u64) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        n.data.dirty = true;
        let end = end.min(n.data.durable_size);
        if off >= end {
            return;
        }
        for (a, b) in gaps(&n.data.saved, off, end) {
            let mut buf = vec![0u8; (b - a) as usize];
            // A short read (cannot happen while size >= durable_size) leaves zeros.
            let _ = read_full_at(live, &mut buf, a);
            n.data.saved.insert(a, buf);
        }
    }

    /// A write of `data` at `off` is about to be made to `live`.
    pub fn before_write(&mut self, node: u64, live: &fs::File, off: u64, data: &[u8]) {
        self.before_change(node, live, off, off + data.len() as u64);
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        self.last_write = Some((node, off, data.to_vec()));
    }

    /// The file is about to be truncated (or extended) to `size`.
    pub fn before_truncate(&mut self, node: u64, live: &fs::File, size: u64) {
        self.before_change(node, live, size, u64::MAX);
    }

    /// fsync or fdatasync of a file: its bytes and size now are durable.
    pub fn sync_file(&mut self, node: u64, size: u64) {
        self.stats.file_syncs += 1;
        if let Some(n) = self.nodes.get_mut(&node) {
            n.data.saved.clear();
            n.data.durable_size = size;
            n.data.dirty = false;
        }
        if self.last_write.as_ref().is_some_and(|w| w.0 == node) {
            self.last_write = None;
        }
    }

    /// fsync of a directory: every operation on it so far is synced there; those synced
    /// everywhere they touch become durable, in order.
    pub fn sync_dir(&mut self, dir: u64) {
        self.stats.dir_syncs += 1;
        for p in &mut self.pending {
            p.unsynced.remove(&dir);
        }
        let mut blocked: BTreeSet<(u64, OsString)> = BTreeSet::new();
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let slots = p.op.slots();
            if p.unsynced.is_empty() && !slots.iter().any(|s| blocked.contains(s)) {
                apply(&mut self.durable, &p.op);
            } else {
                blocked.extend(slots);
                keep.push(p);
            }
        }
        self.pending = keep;
        self.stats.pending_ops = self.pending.len() as u64;
        self.collect_graves();
    }

    /// Removes graveyard files nothing durable (or pending) names any more.
    fn collect_graves(&mut self) {
        let graves: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.grave)
            .map(|(&id, _)| id)
            .collect();
        for id in graves {
            if !self.durably_named(id) {
                let _ = fs::remove_file(self.grave_path(id));
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.grave = false;
                }
            }
        }
    }

    /// After a chmod or chown done live.
    pub fn set_meta(&mut self, node: u64, m: &fs::Metadata) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.mode = m.mode();
            n.uid = m.uid();
            n.gid = m.gid();
        }
    }

    /// The power is cut: the backing directory becomes what was durable, and the state
    /// refuses everything from now on. Entries already where the durable namespace has them
    /// stay in place (only their unsynced bytes are rolled back); the rest is removed, or
    /// moved aside and put back where it durably was.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        if self.cut {
            return Ok(CutReport::default());
        }
        self.cut = true;
        let mut report = CutReport {
            ops_dropped: self.pending.len(),
            ..CutReport::default()
        };
        // The durable tree, parents before children.
        let mut tree: Vec<(u64, PathBuf)> = Vec::new();
        let mut seen_dirs = BTreeSet::from([ROOT]);
        let mut queue = std::collections::VecDeque::from([(ROOT, PathBuf::new())]);
        while let Some((dir, rel)) = queue.pop_front() {
            let Some(entries) = self.durable.get(&dir) else {
                continue;
            };
            for (name, &node) in entries {
                let Some(n) = self.nodes.get(&node) else {
                    continue;
                };
                let child = rel.join(name);
                if n.kind == Kind::Dir {
                    // A directory durably in two places keeps its first.
                    if !seen_dirs.insert(node) {
                        continue;
                    }
                    queue.push_back((node, child.clone()));
                }
                tree.push((node, child));
            }
        }
        report.entries = tree.len();
        let wanted: BTreeSet<(u64, PathBuf)> = tree.iter().cloned().collect();
        let durable_files: BTreeSet<u64> = tree
            .iter()
            .filter(|(n, _)| self.nodes.get(n).is_some_and(|n| n.kind == Kind::File))
            .map(|(n, _)| *n)
            .collect();
        let meta = meta_of(&self.backing);
        let stage = meta.join("stage");
        fs::create_dir_all(&stage)?;
        // What is live and not where the durable tree has it goes: removed, or (a durable
        // file) moved aside.
        let mut staged = BTreeSet::new();
        self.prune(
            &self.backing.clone(),
            Path::new(""),
            true,
            &wanted,
            &durable_files,
            &stage,
            &mut staged,
        )?;
        // Graveyard files the durable tree names come back from there.
        for &node in &durable_files {
            if self.nodes.get(&node).is_some_and(|n| n.grave) && !staged.contains(&node) {
                fs::rename(self.grave_path(node), stage.join(node.to_string()))?;
                staged.insert(node);
            }
        }
        // The durable tree, completed where it is missing.
        let mut placed: HashMap<u64, PathBuf> = HashMap::new();
        for (node, rel) in &tree {
            let Some(n) = self.nodes.get(node) else {
                continue;
            };
            let p = self.backing.join(rel);
            if fs::symlink_metadata(&p).is_ok() {
                placed.entry(*node).or_insert(p);
                continue;
            }
            match &n.kind {
                Kind::Dir => fs::create_dir(&p)?,
                Kind::File => match placed.get(node) {
                    Some(first) => fs::hard_link(first, &p)?,
                    None => {
                        if staged.remove(node) {
                            fs::rename(stage.join(node.to_string()), &p)?;
                        } else {
                            // Its bytes are gone (cannot happen: the graveyard keeps them).
                            fs::File::create(&p)?;
                        }
                        placed.insert(*node, p.clone());
                    }
                },
                Kind::Symlink(target) => std::os::unix::fs::symlink(target, &p)?,
                Kind::Other => {
                    fs::File::create(&p)?;
                }
            }
            if !matches!(n.kind, Kind::Symlink(_)) {
                fs::set_permissions(&p, fs::Permissions::from_mode(n.mode & 0o7777))?;
            }
            let _ = std::os::unix::fs::lchown(&p, Some(n.uid), Some(n.gid));
        }
        // Each durable file back to its durable size and bytes (and the torn write, if any).
        let torn = self.last_write.take();
        for node in &durable_files {
            let (Some(n), Some(p)) = (self.nodes.get(node), placed.get(node)) else {
                continue;
            };
            let is_torn = torn.as_ref().is_some_and(|w| w.0 == *node) && self.torn_seed.is_some();
            if !n.data.dirty && !is_torn {
                continue;
            }
            let f = fs::OpenOptions::new().write(true).open(p)?;
            if f.metadata()?.len() != n.data.durable_size || !n.data.saved.is_empty() {
                report.files_rolled_back += 1;
            }
            f.set_len(n.data.durable_size)?;
            for (off, bytes) in &n.data.saved {
                f.write_all_at(bytes, *off)?;
            }
            if let (Some((_, off, data)), Some(seed), true) = (&torn, self.torn_seed, is_torn) {
                if !data.is_empty() {
                    let keep = (fastrand::Rng::with_seed(seed).usize(..data.len())).max(1);
                    f.write_all_at(&data[..keep], *off)?;
                    let rel = p.strip_prefix(&self.backing).unwrap_or(p).to_path_buf();
                    report.torn = Some((rel, *off, keep));
                }
            }
        }
        fs::remove_dir_all(&meta)?;
        Ok(report)
    }

    /// Removes (or, durable files, moves into `stage`) every live entry under `dir` that is
    /// not where the durable tree has it. `keep_ok`: `dir` itself is where the durable tree
    /// has it (otherwise nothing under it can be).
    #[allow(clippy::too_many_arguments)]
    fn prune(
        &self,
        dir: &Path,
        rel: &Path,
        keep_ok: bool,
        wanted: &BTreeSet<(u64, PathBuf)>,
        durable_files: &BTreeSet<u64>,
        stage: &Path,
        staged: &mut BTreeSet<u64>,
    ) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            if rel.as_os_str().is_empty() && name == META {
                continue;
            }
            let p = e.path();
            let child_rel = rel.join(&name);
            let m = fs::symlink_metadata(&p)?;
            let node = self.by_ino.get(&m.ino()).copied();
            let keep = keep_ok && node.is_some_and(|n| wanted.contains(&(n, child_rel.clone())));
            if m.is_dir() {
                self.prune(&p, &child_rel, keep, wanted, durable_files, stage, staged)?;
                if !keep {
                    fs::remove_dir(&p)?;
                }
            } else if !keep {
                match node {
                    Some(n) if durable_files.contains(&n) && !staged.contains(&n) => {
                        fs::rename(&p, stage.join(n.to_string()))?;
                        staged.insert(n);
                    }
                    _ => fs::remove_file(&p)?,
                }
            }
        }
        Ok(())
    }
}

fn apply(durable: &mut HashMap<u64, BTreeMap<OsString, u64>>, op: &Op) {
    match op {
        Op::Link { dir, name, node } => {
            durable.entry(*dir).or_default().insert(name.clone(), *node);
        }
        Op::Unlink { dir, name, node } => {
            let e = durable.entry(*dir).or_default();
            if e.get(name) == Some(node) {
                e.remove(name);
            }
        }
        Op::Rename {
            from,
            from_name,
            to,
            to_name,
            node,
            exchange,
        } => {
            let src = durable.entry(*from).or_default();
            if src.get(from_name) == Some(node) {
                src.remove(from_name);
            }
            if let Some(other) = exchange {
                src.insert(from_name.clone(), *other);
            }
            durable
                .entry(*to)
                .or_default()
                .insert(to_name.clone(), *node);
        }
    }
}

/// The parts of `[off, end)` no saved range covers.
fn gaps(saved: &BTreeMap<u64, Vec<u8>>, off: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = off;
    if let Some((s, v)) = saved.range(..=off).next_back() {
        cur = cur.max(s + v.len() as u64);
    }
    for (s, v) in saved.range(off..end) {
        if *s > cur {
            out.push((cur, *s));
        }
        cur = cur.max(s + v.len() as u64);
    }
    if cur < end {
        out.push((cur, end));
    }
    out
}

fn read_full_at(f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

/// renameat2(2) with its flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_the_parts_not_saved() {
        let mut saved = BTreeMap::new();
        assert_eq!(gaps(&saved, 0, 10), vec![(0, 10)]);
        saved.insert(2, vec![0; 3]); // [2, 5)
        saved.insert(8, vec![0; 4]); // [8, 12)
        assert_eq!(gaps(&saved, 0, 10), vec![(0, 2), (5, 8)]);
        assert_eq!(gaps(&saved, 3, 9), vec![(5, 8)]);
        assert_eq!(gaps(&saved, 9, 20), vec![(12, 20)]);
        assert_eq!(gaps(&saved, 2, 5), vec![]);
    }
}
