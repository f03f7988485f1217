//! The write-ahead log that makes an operation durable with one `fdatasync`, whatever the batch.
//!
//! Why it exists: sled 0.34's `flush()` costs about 70 us per entry written since the last flush,
//! so "flush sled per batch" caps durable throughput near 4,000 pairs/s. An append plus one
//! fdatasync costs about 0.11 ms regardless of how many records it carries. So every operation is
//! applied to sled (not flushed) and appended here; callers wait until a sync covers their record
//! (group commit: whoever gets the writer lock syncs everything pending, the others find their
//! record already covered). A background checkpoint flushes sled and trims the log.
//!
//! On disk: `wal/<first seq, 20 digits>.log` segments. A record is
//! `[len: u32 LE][crc32 of the rest: u32 LE][seq: u64 LE][body]`, `len` counting seq and body.
//! Only the last segment can end in a torn record (a segment is complete before the next is
//! created); recovery cuts such a tail off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

const HEADER_LEN: usize = 8;
/// No single operation comes anywhere near this; a larger length field is a torn or corrupt header.
const MAX_RECORD_LEN: usize = 64 << 20;

/// Sees every sync and every acknowledgement, in order, so tests can prove that no operation is
/// acknowledged before a sync that covers it.
pub trait SyncObserver: Send + Sync {
    /// A `fdatasync` covering every record up to and including `upto` has returned.
    fn synced(&self, upto: u64);
    /// The operation with sequence number `seq` is about to be reported durable to its caller.
    fn acknowledged(&self, seq: u64);
}

/// A record read back during recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub seq: u64,
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    start: u64,
    path: PathBuf,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
}

struct Writer {
    /// The file appends go to: the last of `segments`, or none when the log is empty.
    file: Option<File>,
    file_len: u64,
    segments: Vec<Segment>,
}

pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    /// True while some caller (the leader) is writing and syncing; the others wait on
    /// `synced` and are all woken together when it is done.
    leader: Mutex<bool>,
    synced: Condvar,
    durable: AtomicU64,
    syncs: AtomicU64,
    poisoned: OnceLock<String>,
    observer: Option<Arc<dyn SyncObserver>>,
}

pub(crate) fn encode_record(seq: u64, body: &[u8], out: &mut Vec<u8>) {
    let len = 8 + body.len();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// Parses records from `data`; returns them and the offset of the first byte that is not part of
/// a complete, checksummed record (== data.len() when the segment is whole).
fn decode_records(data: &[u8]) -> (Vec<Recovered>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() - at >= HEADER_LEN {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if !(8..=MAX_RECORD_LEN).contains(&len) || data.len() - at - HEADER_LEN < len {
            break;
        }
        let rest = &data[at + HEADER_LEN..at + HEADER_LEN + len];
        if crc32fast::hash(rest) != crc {
            break;
        }
        let seq = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        out.push(Recovered { seq, body: rest[8..].to_vec() });
        at += HEADER_LEN + len;
    }
    (out, at)
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What recovery found: the records in order, and whether a torn tail was cut off.
pub(crate) struct RecoveredLog {
    pub records: Vec<Recovered>,
    pub torn_tail_bytes: u64,
}

impl Wal {
    /// Reads every segment in `dir`, cutting a torn tail off the last one. A damaged record
    /// anywhere but the tail of the last segment is corruption, reported as `Err(detail)`.
    pub(crate) fn recover(dir: &Path) -> io::Result<Result<RecoveredLog, String>> {
        fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut torn_tail_bytes = 0;
        for (i, seg) in segments.iter().enumerate() {
            let data = fs::read(&seg.path)?;
            let (mut recs, good) = decode_records(&data);
            if good < data.len() {
                if i + 1 != segments.len() {
                    return Ok(Err(format!(
                        "write-ahead log segment {} is damaged at byte {good} of {}, and it is not the last segment",
                        seg.path.display(),
                        data.len()
                    )));
                }
                torn_tail_bytes = (data.len() - good) as u64;
                let file = OpenOptions::new().write(true).open(&seg.path)?;
                file.set_len(good as u64)?;
                file.sync_all()?;
            }
            if let Some(first) = recs.first()
                && first.seq != seg.start
            {
                return Ok(Err(format!(
                    "write-ahead log segment {} starts with record {} instead of {}",
                    seg.path.display(),
                    first.seq,
                    seg.start
                )));
            }
            if let Some(pair) = recs.windows(2).find(|w| w[1].seq != w[0].seq + 1) {
                return Ok(Err(format!(
                    "write-ahead log segment {} jumps from record {} to {}",
                    seg.path.display(),
                    pair[0].seq,
                    pair[1].seq
                )));
            }
            records.append(&mut recs);
        }
        Ok(Ok(RecoveredLog { records, torn_tail_bytes }))
    }

    /// Opens the log for appending after recovery (and after the caller has made sled hold
    /// every recovered record, so the old segments can go). `last_seq` is the newest sequence
    /// number already durable somewhere.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        last_seq: u64,
        observer: Option<Arc<dyn SyncObserver>>,
    ) -> io::Result<Wal> {
        for seg in list_segments(dir)? {
            fs::remove_file(&seg.path)?;
        }
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(Writer { file: None, file_len: 0, segments: Vec::new() }),
            leader: Mutex::new(false),
            synced: Condvar::new(),
            durable: AtomicU64::new(last_seq),
            syncs: AtomicU64::new(0),
            poisoned: OnceLock::new(),
            observer,
        })
    }

    /// Queues a record. Callers append in sequence order (they hold the ledger's state lock).
    pub(crate) fn append(&self, seq: u64, body: &[u8]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.buf.is_empty() {
            p.first_seq = seq;
        }
        p.last_seq = seq;
        encode_record(seq, body, &mut p.buf);
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.get().map(String::as_str)
    }

    /// Returns once a sync covers `seq`. Group commit: if no sync is under way the caller
    /// becomes the leader and writes and syncs everything pending; otherwise it waits for the
    /// current leader, whose broadcast wakes every waiter at once (handing a mutex from waiter
    /// to waiter instead would serialise their wake-ups and cap throughput).
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<(), String> {
        if self.durable_seq() >= seq {
            return Ok(());
        }
        let mut leading = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.durable_seq() >= seq {
                return Ok(());
            }
            if let Some(reason) = self.poisoned() {
                return Err(reason.to_string());
            }
            if !*leading {
                *leading = true;
                drop(leading);
                let result = self.sync_pending();
                leading = self.leader.lock().unwrap_or_else(|e| e.into_inner());
                *leading = false;
                self.synced.notify_all();
                result?;
                continue;
            }
            leading = self.synced.wait(leading).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Writes and syncs every pending record (the leader's job).
    fn sync_pending(&self) -> Result<(), String> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, first, last) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let buf = std::mem::take(&mut p.buf);
            (buf, p.first_seq, p.last_seq)
        };
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_and_sync(&mut writer, &buf, first) {
            let reason = format!("write-ahead log write failed: {e}");
            let _ = self.poisoned.set(reason.clone());
            return Err(reason);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.durable.store(last, Ordering::Release);
        if let Some(obs) = &self.observer {
            obs.synced(last);
        }
        Ok(())
    }

    pub(crate) fn acknowledge(&self, seq: u64) {
        if let Some(obs) = &self.observer {
            obs.acknowledged(seq);
        }
    }

    fn write_and_sync(&self, w: &mut Writer, buf: &[u8], first_seq: u64) -> io::Result<()> {
        if w.file.is_none() || w.file_len >= self.segment_bytes {
            // The previous segment was synced whole by the call that wrote it, so a torn
            // record can only ever be at the end of the newest segment.
            let path = segment_path(&self.dir, first_seq);
            let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
            sync_dir(&self.dir)?;
            w.file = Some(file);
            w.file_len = 0;
            w.segments.push(Segment { start: first_seq, path });
        }
        let file = w.file.as_mut().expect("segment opened above");
        file.write_all(buf)?;
        file.sync_data()?;
        w.file_len += buf.len() as u64;
        Ok(())
    }

    /// Drops every record up to `upto`, which the caller has made durable in sled.
    pub(crate) fn trim(&self, upto: u64) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let pending_empty = self.pending.lock().unwrap_or_else(|e| e.into_inner()).buf.is_empty();
        let keep_from = if self.durable_seq() <= upto && pending_empty {
            // Everything written is in sled: the whole log can go, the next write starts afresh.
            w.file = None;
            w.file_len = 0;
            w.segments.len()
        } else {
            // A segment can go when the next one starts at or before `upto + 1`.
            let n = w.segments.len();
            (0..n.saturating_sub(1)).find(|&i| w.segments[i + 1].start > upto + 1).unwrap_or(n.saturating_sub(1))
        };
        if keep_from == 0 {
            return Ok(());
        }
        for seg in w.segments.drain(..keep_from) {
            fs::remove_file(&seg.path)?;
        }
        sync_dir(&self.dir)
    }

    /// Bytes on disk in live segments (for tests and benchmarks).
    pub(crate) fn segment_count(&self) -> usize {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).segments.len()
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>() {
            segments.push(Segment { start, path: entry.path() });
        }
    }
    segments.sort_by_key(|s| s.start);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let mut buf = Vec::new();
        for seq in 1..=3u64 {
            encode_record(seq, format!("body {seq}").as_bytes(), &mut buf);
        }
        let (recs, good) = decode_records(&buf);
        assert_eq!(good, buf.len());
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(recs[1].body, b"body 2");

        let whole_two = {
            let mut b = Vec::new();
            encode_record(1, b"body 1", &mut b);
            encode_record(2, b"body 2", &mut b);
            b.len()
        };
        for cut in whole_two..buf.len() {
            let (recs, good) = decode_records(&buf[..cut]);
            assert_eq!(recs.len(), 2, "cut at {cut}");
            assert_eq!(good, whole_two);
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_log_there() {
        let mut buf = Vec::new();
        encode_record(1, b"first", &mut buf);
        let first_len = buf.len();
        encode_record(2, b"second", &mut buf);
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        let (recs, good) = decode_records(&buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(good, first_len);
    }
}
