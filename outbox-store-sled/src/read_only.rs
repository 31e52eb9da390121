//! Opening a database for reading only ([`SledOptions::read_only`]).
//!
//! sled 0.34 has no read-only mode: opening a database takes its
//! directory lock, may recover and rewrite its log and writes a snapshot.
//! So a read-only open never opens the directory it is given: it checks
//! that the directory looks like a sled database, copies its files into a
//! private scratch directory and opens the copy (a copy taken while
//! another process writes is recovered like a crash would be). The
//! original is read, never written: a directory that is not an outbox,
//! or one of a newer layout, is refused and left byte-for-byte as it was.
//! The scratch copy is removed when the store is dropped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use outbox_core::{Error, Result};

use crate::error::SledError;
use crate::options::{SledOptions, open_waiting};
use crate::store::SledStore;
use crate::worker;

/// The files every sled 0.34 database directory holds.
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Opens a read-only store over a private copy of the database at
/// `o.path` (see the module's documentation).
pub(crate) fn open(o: SledOptions) -> Result<SledStore> {
    let original = o.path.clone();
    check_looks_like_sled(&original)?;
    let scratch = scratch_dir();
    let opened = copy_tree(&original, &scratch)
        .map_err(|source| Error::from(SledError::File { what: "copy the database for reading", source }))
        .and_then(|()| {
            let mut copy = o.clone();
            copy.path = scratch.clone();
            let db = open_waiting(&copy.sled_config(&scratch), &scratch, copy.lock_timeout)?;
            let (tx, handle, counts) = worker::start(db, &copy)?;
            Ok(SledStore::new(tx, handle, counts, o).read_only_over(scratch.clone()))
        });
    if opened.is_err() {
        let _ = fs::remove_dir_all(&scratch);
    }
    opened
}

/// Refuses, before anything is copied, a missing path, a file, and a
/// directory without sled's files.
fn check_looks_like_sled(path: &Path) -> Result<()> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            message: format!("cannot read {shown}: {e}"),
            source: Some(Box::new(e)),
        },
        _ => Error::invalid_input(format!("no sled database at {shown}: {e}")),
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid_input(format!("{shown} is not a directory, so not a sled database")));
    }
    for f in SLED_FILES {
        if !path.join(f).is_file() {
            return Err(Error::Corrupted {
                message: format!("not a sled database, left as it is: {shown} has no `{f}` file"),
                source: None,
            });
        }
    }
    Ok(())
}

/// A new, not yet existing, scratch directory path.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "outbox-sled-read-only-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Copies the directory tree at `from` to the new directory `to` (regular
/// files and directories; sled makes nothing else).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
