//! The backend: a small key-value map kept in memory and made durable by
//! an append-only log file.
//!
//! - [`KvLog::write`] appends one batch of puts and deletes as one record
//!   (length, checksum, operations), calls `fsync`, and only then applies
//!   the batch to the map: a batch is all or nothing, and durable when
//!   `write` returns.
//! - [`KvLog::open`] replays the records; a torn or damaged record at the
//!   end (a crash in the middle of an append, never acknowledged) is cut
//!   off. Then the log is compacted: the live map is written to a new file
//!   that replaces the old one by an atomic rename.
//! - The file starts with a magic and a format version: another program's
//!   file is refused as `Corrupted`, a newer format as `SchemaTooNew`,
//!   both untouched. A lock file keeps a second process out.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use outbox_core::{Error, Result};

const MAGIC: &[u8; 8] = b"OUTBOXKV";
/// The file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 12;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// One change in a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Delete(Vec<u8>),
}

/// The map and its log.
#[derive(Debug)]
pub struct KvLog {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    file: File,
    /// The length of the log's whole records.
    len: u64,
    /// A failed append could not be cut off: no more writes until reopened.
    broken: bool,
    /// Held while the store is open: one process at a time.
    _lock: File,
}

/// Why the backend failed; mapped into the core's error kinds by type.
#[derive(Debug)]
enum KvError {
    Io(&'static str, io::Error),
    Foreign,
    TooNew(u32),
    Locked,
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Io(what, e) => match e.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::quota_exceeded(what, e),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    Error::PermissionDenied { message: what.to_owned(), source: Some(Box::new(e)) }
                }
                _ => Error::unavailable(what, e),
            },
            KvError::Foreign => {
                Error::Corrupted { message: "not an outbox key-value log".into(), source: None }
            }
            KvError::TooNew(found) => Error::SchemaTooNew { found, supported: FORMAT_VERSION },
            KvError::Locked => Error::Unavailable {
                message: "another process has this key-value log open".into(),
                source: None,
            },
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| KvError::Io(what, e).into()
}

/// FNV-1a, 64 bits: enough to tell a torn record from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let mut payload = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                payload.push(PUT);
                payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
                payload.extend_from_slice(k);
                payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
                payload.extend_from_slice(v);
            }
            Op::Delete(k) => {
                payload.push(DELETE);
                payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
                payload.extend_from_slice(k);
            }
        }
    }
    let mut record = Vec::with_capacity(12 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    record.extend_from_slice(&checksum(&payload).to_be_bytes());
    record.extend_from_slice(&payload);
    record
}

/// The operations of the record at the start of `b` and its length, or
/// `None` if it is torn or damaged.
fn decode(b: &[u8]) -> Option<(Vec<Op>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let sum = u64::from_be_bytes(b.get(4..12)?.try_into().ok()?);
    let payload = b.get(12..12 + len)?;
    if checksum(payload) != sum {
        return None;
    }
    let mut ops = Vec::new();
    let mut p = payload;
    let take = |p: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = (p.get(..n)?, p.get(n..)?);
        *p = rest;
        Some(head.to_vec())
    };
    let take_len = |p: &mut &[u8]| -> Option<usize> {
        let b = take(p, 4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
    };
    while let Some((&tag, rest)) = p.split_first() {
        p = rest;
        let klen = take_len(&mut p)?;
        let key = take(&mut p, klen)?;
        match tag {
            PUT => {
                let vlen = take_len(&mut p)?;
                ops.push(Op::Put(key, take(&mut p, vlen)?));
            }
            DELETE => ops.push(Op::Delete(key)),
            _ => return None,
        }
    }
    Some((ops, 12 + len))
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    h
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing the directory"))
}

impl KvLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> Result<KvLog> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_path))
            .map_err(io_err("opening the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(KvError::Locked.into()),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking")(e)),
        }

        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_err("reading the log"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("opening the log")(e)),
        }
        let mut map = BTreeMap::new();
        if !bytes.is_empty() {
            if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
                return Err(KvError::Foreign.into());
            }
            let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            if version > FORMAT_VERSION {
                return Err(KvError::TooNew(version).into());
            }
            let mut at = HEADER_LEN;
            // Stops at the first torn or damaged record: nothing after it
            // was acknowledged.
            while let Some((ops, len)) = decode(&bytes[at..]) {
                apply(&mut map, ops);
                at += len;
            }
        }

        // Compact: the live map as one record, replacing the log atomically.
        let mut tmp_path = path.as_os_str().to_owned();
        tmp_path.push(".tmp");
        let tmp_path = PathBuf::from(tmp_path);
        let mut tmp = File::create(&tmp_path).map_err(io_err("creating the compacted log"))?;
        let mut out = header();
        let live: Vec<Op> = map.iter().map(|(k, v)| Op::Put(k.clone(), v.clone())).collect();
        if !live.is_empty() {
            out.extend_from_slice(&encode(&live));
        }
        tmp.write_all(&out).map_err(io_err("writing the compacted log"))?;
        tmp.sync_all().map_err(io_err("syncing the compacted log"))?;
        std::fs::rename(&tmp_path, path).map_err(io_err("replacing the log"))?;
        sync_dir(path)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io_err("opening the log"))?;
        Ok(KvLog { map, file, len: out.len() as u64, broken: false, _lock: lock })
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Writes `ops` as one durable batch: on `Ok` all of it is in the file
    /// (synced) and in the map; on `Err` the map is unchanged.
    pub fn write(&mut self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(Error::unavailable("an earlier append failed; reopen the store", "log broken"));
        }
        let record = encode(&ops);
        let written = self.file.write_all(&record).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut the partial record off, so later records stay readable.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.broken = true;
            }
            return Err(io_err("appending to the log")(e));
        }
        self.len += record.len() as u64;
        apply(&mut self.map, ops);
        Ok(())
    }
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<Op>) {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                map.insert(k, v);
            }
            Op::Delete(k) => {
                map.remove(&k);
            }
        }
    }
}
