//! The model itself, through a real mount: what a cut keeps and what it drops.
//! Needs /dev/fuse and root (CI has both); skips with a message otherwise.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

struct Rig {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    m: Option<powerfs::Mounted>,
}

impl Rig {
    fn new() -> Option<Rig> {
        if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: powerfs needs /dev/fuse and root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let m = powerfs::mount(&backing, &mnt).unwrap();
        Some(Rig {
            _dir: dir,
            backing,
            mnt,
            m: Some(m),
        })
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Cuts, unmounts, mounts again: the mount shows only what was durable.
    fn cut_and_remount(&mut self) -> powerfs::CutReport {
        let m = self.m.take().unwrap();
        let r = m.control().cut().unwrap();
        m.unmount();
        self.m = Some(powerfs::mount(&self.backing, &self.mnt).unwrap());
        r
    }

    fn ctl(&self) -> powerfs::Control {
        self.m.as_ref().unwrap().control()
    }
}

fn sync_dir(p: &Path) {
    fs::File::open(p).unwrap().sync_all().unwrap();
}

fn write_synced(p: &Path, data: &[u8]) {
    let mut f = fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("f"), b"durable");
    sync_dir(&r.mnt);
    let f = fs::OpenOptions::new().write(true).open(r.p("f")).unwrap();
    f.write_all_at(b"DUR", 0).unwrap();
    f.write_all_at(b" and more, never synced", 7).unwrap();
    drop(f);
    assert_eq!(
        fs::read(r.p("f")).unwrap(),
        b"DURable and more, never synced"
    );
    let report = r.cut_and_remount();
    assert_eq!(fs::read(r.p("f")).unwrap(), b"durable");
    assert_eq!(report.files_rolled_back, 1);
}

#[test]
fn a_write_with_fsync_is_kept_and_a_truncation_without_is_undone() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("f"), b"0123456789");
    sync_dir(&r.mnt);
    let f = fs::OpenOptions::new().write(true).open(r.p("f")).unwrap();
    f.write_all_at(b"ab", 0).unwrap();
    f.sync_data().unwrap();
    f.set_len(3).unwrap();
    f.write_all_at(b"zzzzzzzzzzzzzzzz", 3).unwrap();
    drop(f);
    r.cut_and_remount();
    assert_eq!(fs::read(r.p("f")).unwrap(), b"ab23456789");
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    let Some(mut r) = Rig::new() else { return };
    fs::create_dir(r.p("tmp")).unwrap();
    fs::create_dir(r.p("new")).unwrap();
    sync_dir(&r.mnt);
    write_synced(&r.p("tmp/e"), b"entry");
    sync_dir(&r.p("tmp"));
    fs::rename(r.p("tmp/e"), r.p("new/e")).unwrap();
    // Only one of the two directories: still not durable.
    sync_dir(&r.p("new"));
    r.cut_and_remount();
    assert_eq!(fs::read(r.p("tmp/e")).unwrap(), b"entry");
    assert!(!r.p("new/e").exists());
}

#[test]
fn a_rename_with_both_directories_fsynced_is_kept() {
    let Some(mut r) = Rig::new() else { return };
    fs::create_dir(r.p("tmp")).unwrap();
    fs::create_dir(r.p("new")).unwrap();
    sync_dir(&r.mnt);
    write_synced(&r.p("tmp/e"), b"entry");
    sync_dir(&r.p("tmp"));
    fs::rename(r.p("tmp/e"), r.p("new/e")).unwrap();
    sync_dir(&r.p("new"));
    sync_dir(&r.p("tmp"));
    r.cut_and_remount();
    assert_eq!(fs::read(r.p("new/e")).unwrap(), b"entry");
    assert!(!r.p("tmp/e").exists());
}

#[test]
fn rename_noreplace_reaches_the_filesystem_and_is_modelled() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("a"), b"a");
    write_synced(&r.p("b"), b"b");
    sync_dir(&r.mnt);
    let err = powerfs::model::renameat2(&r.p("a"), &r.p("b"), libc::RENAME_NOREPLACE)
        .expect_err("b exists");
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    powerfs::model::renameat2(&r.p("a"), &r.p("c"), libc::RENAME_NOREPLACE).unwrap();
    r.cut_and_remount();
    // Not durable: the rename is undone.
    assert_eq!(fs::read(r.p("a")).unwrap(), b"a");
    assert!(!r.p("c").exists());
}

#[test]
fn a_synced_file_whose_entry_is_not_durable_is_lost_whole() {
    let Some(mut r) = Rig::new() else { return };
    fs::create_dir(r.p("d")).unwrap();
    write_synced(&r.p("d/f"), b"synced data");
    sync_dir(&r.p("d"));
    // d's own entry in the root was never made durable: d and f go.
    r.cut_and_remount();
    assert!(!r.p("d").exists());
    assert_eq!(fs::read_dir(&r.mnt).unwrap().count(), 0);
}

#[test]
fn an_unlink_without_a_directory_fsync_is_undone_with_the_durable_bytes() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("f"), b"kept");
    sync_dir(&r.mnt);
    let f = fs::OpenOptions::new().write(true).open(r.p("f")).unwrap();
    f.write_all_at(b"lost", 0).unwrap();
    fs::remove_file(r.p("f")).unwrap();
    drop(f);
    write_synced(&r.p("g"), b"new file, entry not durable");
    r.cut_and_remount();
    assert_eq!(fs::read(r.p("f")).unwrap(), b"kept");
    assert!(!r.p("g").exists());
    // With the directory fsync, the unlink is durable.
    fs::remove_file(r.p("f")).unwrap();
    sync_dir(&r.mnt);
    r.cut_and_remount();
    assert!(!r.p("f").exists());
}

#[test]
fn a_rename_over_a_file_is_undone_back_to_both_files() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("old"), b"old");
    write_synced(&r.p("x.tmp"), b"replacement");
    sync_dir(&r.mnt);
    fs::rename(r.p("x.tmp"), r.p("old")).unwrap();
    assert_eq!(fs::read(r.p("old")).unwrap(), b"replacement");
    r.cut_and_remount();
    assert_eq!(fs::read(r.p("old")).unwrap(), b"old");
    assert_eq!(fs::read(r.p("x.tmp")).unwrap(), b"replacement");
}

#[test]
fn a_cut_at_the_kth_sync_keeps_the_syncs_before_it_only() {
    let Some(mut r) = Rig::new() else { return };
    r.ctl().cut_at_sync(3);
    write_synced(&r.p("a"), b"1"); // sync 1
    sync_dir(&r.mnt); // sync 2
    let mut f = fs::File::create(r.p("b")).unwrap();
    f.write_all(b"2").unwrap();
    assert!(f.sync_all().is_err(), "sync 3 is where the power goes");
    assert!(r.ctl().is_cut());
    assert!(
        fs::read(r.p("a")).is_err(),
        "every call fails after the cut"
    );
    drop(f);
    let m = r.m.take().unwrap();
    m.unmount();
    r.m = Some(powerfs::mount(&r.backing, &r.mnt).unwrap());
    assert_eq!(fs::read(r.p("a")).unwrap(), b"1");
    assert!(!r.p("b").exists());
}

#[test]
fn a_torn_last_write_keeps_a_prefix_of_it() {
    let Some(mut r) = Rig::new() else { return };
    write_synced(&r.p("f"), b"");
    sync_dir(&r.mnt);
    r.ctl().torn_last_write(Some(7));
    let f = fs::OpenOptions::new().write(true).open(r.p("f")).unwrap();
    f.write_all_at(&[b'x'; 1000], 0).unwrap();
    drop(f);
    let report = r.cut_and_remount();
    let (_, off, kept) = report.torn.expect("a torn write");
    assert_eq!(off, 0);
    let data = fs::read(r.p("f")).unwrap();
    assert_eq!(data.len(), kept);
    assert!((1..1000).contains(&kept), "{kept}");
    assert!(data.iter().all(|&b| b == b'x'));
}
