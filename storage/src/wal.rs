//! The write-ahead log that makes an operation durable with one `fdatasync`, whatever the batch.
//!
//! Every operation is queued here as one record; callers wait until a sync covers it. Group
//! commit: one syncer thread writes and syncs everything queued, so one fdatasync serves every
//! caller waiting at that moment, and starts the next sync as soon as one ends if anyone still
//! waits. A caller that finds the syncer asleep, nobody waiting and the last sync covering one
//! record syncs on its own thread instead (an idle daemon's one request: the hand-over and the
//! wake-up back cost more than the fdatasync). A waiter is a [`Waker`]: a parked thread ([`Log::wait_durable`]) or an async task
//! ([`Log::poll_durable`]), so the daemon's requests wait without holding a thread. The ledger's
//! checkpointer writes the state into sled and then trims the log.
//!
//! On disk: `wal/<first seq, 20 digits>.log` segments. A record is
//! `[len: u32 LE][crc32 of the rest: u32 LE][seq: u64 LE][body]`, `len` counting seq and body.
//! Segments are zero-filled before use and records are written over the zeros: overwriting
//! allocated blocks lets fdatasync skip the journal commit that a growing file needs for its new
//! size, which measured 15-40% faster here. A background thread keeps one zero-filled spare
//! (`wal/spare`) ready, so starting a segment costs a rename. The zeros are also the end marker:
//! a length of 0 is no record.
//!
//! Recovery reads each segment up to its first invalid frame. Zeros after it are unused space.
//! Other bytes there are a torn write (the tail of the last segment, from a crash mid-write: it
//! was never acknowledged) unless a valid record follows them, which means damage in the middle
//! of the log: that, or anything but zeros after the end of a segment that is not the last, is
//! corruption.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

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
struct Unwritten {
    buf: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
}

#[derive(Default)]
struct Group {
    /// The highest sequence number anyone has waited for: the syncer sleeps once it is durable.
    wanted: u64,
    /// True while the syncer has no work (asleep on [`Log::work`], or not started yet); whoever
    /// gives it work then notifies it, and a caller finding it so may sync on its own thread.
    idle: bool,
    /// Set when the log is dropped: the syncer thread ends.
    stop: bool,
    /// Callers waiting for a sync to cover their sequence number, woken (all of them, on a
    /// failure) once one does.
    waiters: Vec<(u64, Waker)>,
}

/// Wakes a thread parked in [`Log::wait_durable`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

struct Writer {
    /// The segment records go to: the last of `segments`, or none when the log is empty.
    file: Option<File>,
    /// Where the next record goes in `file`.
    offset: u64,
    /// The zero-filled size of `file`.
    capacity: u64,
    segments: Vec<Segment>,
}

/// The log and its syncer thread, which stops when this is dropped.
pub(crate) struct Wal {
    log: Arc<Log>,
    syncer: Option<thread::JoinHandle<()>>,
}

impl std::ops::Deref for Wal {
    type Target = Log;
    fn deref(&self) -> &Log {
        &self.log
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.log.lock_group().stop = true;
        self.log.work.notify_one();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

/// What the callers and the syncer thread share.
pub(crate) struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    pending: Mutex<Unwritten>,
    writer: Mutex<Writer>,
    /// Who waits for what, and whether the syncer sleeps.
    group: Mutex<Group>,
    /// The syncer sleeps on this when nobody waits.
    work: Condvar,
    durable: AtomicU64,
    syncs: AtomicU64,
    /// Whether the last sync covered a single record: the log is used one caller at a time,
    /// and a caller may sync in place (see [`Log::sync_if_uncontended`]).
    last_sync_alone: AtomicBool,
    poisoned: OnceLock<String>,
    observer: Option<Arc<dyn SyncObserver>>,
    /// Asks the spare-maker thread for a new spare; dropping it stops the thread.
    want_spare: Mutex<Option<Sender<()>>>,
    spare_maker: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Drop for Log {
    fn drop(&mut self) {
        self.want_spare.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.spare_maker.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
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

/// What follows the last valid record of a segment.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing, or zeros: unused space.
    Clean,
    /// Bytes of a write that did not complete: this many up to the last non-zero byte.
    Torn(usize),
    /// A valid record further on: the log is damaged in the middle.
    Damaged,
}

fn classify_tail(data: &[u8], good: usize) -> Tail {
    let rest = &data[good..];
    let Some(last_nonzero) = rest.iter().rposition(|&b| b != 0) else {
        return Tail::Clean;
    };
    // A record written after the damaged one was synced after it, so it may have been
    // acknowledged: finding one means the damage is not a torn tail.
    let later_record = (1..=last_nonzero).any(|at| !decode_records(&rest[at..]).0.is_empty());
    if later_record { Tail::Damaged } else { Tail::Torn(last_nonzero + 1) }
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
            let is_last = i + 1 == segments.len();
            match classify_tail(&data, good) {
                Tail::Clean => {}
                Tail::Torn(bytes) if is_last => torn_tail_bytes = bytes as u64,
                Tail::Torn(_) | Tail::Damaged => {
                    return Ok(Err(format!(
                        "write-ahead log segment {} is damaged at byte {good} of {}{}",
                        seg.path.display(),
                        data.len(),
                        if is_last {
                            ", and valid records follow the damage"
                        } else {
                            ", and it is not the last segment"
                        }
                    )));
                }
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
        match fs::remove_file(dir.join(SPARE_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(dir)?;
        let (want_spare, wanted) = mpsc::channel();
        let maker_dir = dir.to_path_buf();
        let spare_maker = thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || make_spares(&maker_dir, segment_bytes, wanted))?;
        // The first segment will want one.
        let _ = want_spare.send(());
        let log = Arc::new(Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            pending: Mutex::new(Unwritten::default()),
            writer: Mutex::new(Writer { file: None, offset: 0, capacity: 0, segments: Vec::new() }),
            group: Mutex::new(Group { idle: true, ..Group::default() }),
            work: Condvar::new(),
            durable: AtomicU64::new(last_seq),
            syncs: AtomicU64::new(0),
            last_sync_alone: AtomicBool::new(true),
            poisoned: OnceLock::new(),
            observer,
            want_spare: Mutex::new(Some(want_spare)),
            spare_maker: Mutex::new(Some(spare_maker)),
        });
        let syncer = {
            let log = log.clone();
            thread::Builder::new().name("wal-sync".into()).spawn(move || log.run_syncer())?
        };
        Ok(Wal { log, syncer: Some(syncer) })
    }
}

impl Log {
    fn lock_group(&self) -> std::sync::MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())
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

    /// `Some` once `seq` is durable (`Ok`) or can never be (`Err`: the log failed).
    fn settled(&self, seq: u64) -> Option<Result<(), String>> {
        if self.durable_seq() >= seq {
            return Some(Ok(()));
        }
        self.poisoned().map(|reason| Err(reason.to_string()))
    }

    /// Asks the syncer to cover `seq` and to wake `waker` once it has; false (and nothing
    /// registered) when `seq` is settled already. Checked under the group lock, which the
    /// syncer takes after publishing a sync, so no wake-up is missed.
    fn register(&self, seq: u64, waker: &Waker) -> bool {
        let mut group = self.lock_group();
        if self.settled(seq).is_some() {
            return false;
        }
        group.waiters.push((seq, waker.clone()));
        group.wanted = group.wanted.max(seq);
        if group.idle {
            group.idle = false;
            self.work.notify_one();
        }
        true
    }

    /// Syncs on the calling thread when the syncer sleeps, nobody waits and the last sync
    /// covered one record: handing the record to the syncer and being woken back costs two
    /// thread wake-ups, each ~0.2 ms on an idle machine, more than the fdatasync. `None`
    /// otherwise: the caller then waits for the syncer, so a busy log keeps one sync per batch.
    /// (Without the last condition, under load the first caller after each batch synced alone
    /// on a runtime worker while the rest queued behind it: 19,647-22,330 pairs/s through the
    /// daemon at 64 clients, against 21,843-25,766 with no in-place syncs, runs alternating.)
    fn sync_if_uncontended(&self, seq: u64) -> Option<Result<(), String>> {
        if !self.last_sync_alone.load(Ordering::Relaxed) {
            return None;
        }
        {
            let group = self.lock_group();
            if !group.idle || group.stop || !group.waiters.is_empty() {
                return None;
            }
        }
        let writer = self.writer.try_lock().ok()?;
        let result = self.sync_pending(writer);
        self.wake_covered(result.is_err());
        self.settled(seq)
    }

    /// Blocks the calling thread until a sync covers `seq`.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<(), String> {
        if let Some(done) = self.settled(seq).or_else(|| self.sync_if_uncontended(seq)) {
            return done;
        }
        thread_local! {
            static UNPARK_ME: Waker = Waker::from(Arc::new(Unpark(thread::current())));
        }
        let waker = UNPARK_ME.with(Waker::clone);
        loop {
            if let Some(done) = self.settled(seq) {
                return done;
            }
            if self.register(seq, &waker) {
                // Spurious wake-ups are fine: the loop re-checks.
                thread::park();
            }
        }
    }

    /// The async form of [`Log::wait_durable`]: ready once a sync covers `seq`. Uncontended, the
    /// first poll syncs in place, blocking its thread for one fdatasync, as a caller of
    /// `spawn_blocking` would, without the hand-over.
    pub(crate) fn poll_durable(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if let Some(done) = self.settled(seq).or_else(|| self.sync_if_uncontended(seq)) {
            return Poll::Ready(done);
        }
        loop {
            if let Some(done) = self.settled(seq) {
                return Poll::Ready(done);
            }
            if self.register(seq, cx.waker()) {
                return Poll::Pending;
            }
        }
    }

    /// The syncer thread: while anyone waits for a record that is not yet durable, write and
    /// sync everything pending, then wake whoever that covered. Wakers are woken outside the
    /// group lock, so callers can queue the next batch meanwhile. (Handing the wakes to a thread
    /// of their own let syncs run back to back, each with fewer records: measured slower.)
    fn run_syncer(&self) {
        let mut group = self.lock_group();
        loop {
            if group.stop {
                return;
            }
            if group.wanted <= self.durable_seq() || self.poisoned().is_some() {
                group.idle = true;
                group = self.work.wait(group).unwrap_or_else(|e| e.into_inner());
                group.idle = false;
                continue;
            }
            drop(group);
            let result = self.sync_pending(self.writer.lock().unwrap_or_else(|e| e.into_inner()));
            group = self.lock_group();
            let durable = self.durable_seq();
            if result == Ok(false) && group.wanted > durable {
                // Every waited-for record is appended before its caller waits, and whoever took
                // it from `pending` published its sync before letting go of the writer, so this
                // cannot happen; if it did, sleep until the next caller rather than spin.
                tracing::error!(wanted = group.wanted, durable, "a caller waits for a record beyond the log's end");
                group.wanted = durable;
            }
            drop(group);
            self.wake_covered(result.is_err());
            group = self.lock_group();
        }
    }

    /// Wakes every waiter the last published sync covers (all of them when the log failed).
    /// Called after publishing: a caller registering meanwhile sees the sync and does not wait.
    fn wake_covered(&self, failed: bool) {
        let durable = self.durable_seq();
        let covered: Vec<Waker> = self
            .lock_group()
            .waiters
            .extract_if(.., |(waits_for, _)| failed || *waits_for <= durable)
            .map(|(_, waker)| waker)
            .collect();
        covered.into_iter().for_each(Waker::wake);
    }

    /// Writes and syncs every pending record, holding the writer throughout (so a sync is
    /// published before anyone else can take records); false when nothing was pending.
    fn sync_pending(&self, mut writer: std::sync::MutexGuard<'_, Writer>) -> Result<bool, String> {
        let (buf, first, last) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let buf = std::mem::take(&mut p.buf);
            (buf, p.first_seq, p.last_seq)
        };
        if buf.is_empty() {
            return Ok(false);
        }
        if let Err(e) = self.write_and_sync(&mut writer, &buf, first) {
            let reason = format!("write-ahead log write in {} failed: {e}", self.dir.display());
            if self.poisoned.set(reason.clone()).is_ok() {
                tracing::error!(%reason, "the ledger refuses every write from now on; restart to recover from disk");
            }
            return Err(reason);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.last_sync_alone.store(first == last, Ordering::Relaxed);
        // Report the sync before publishing it: once `durable` moves, other callers may
        // acknowledge without coming here, and the observer must already have seen the sync.
        if let Some(obs) = &self.observer {
            obs.synced(last);
        }
        self.durable.store(last, Ordering::Release);
        Ok(true)
    }

    pub(crate) fn acknowledge(&self, seq: u64) {
        if let Some(obs) = &self.observer {
            obs.acknowledged(seq);
        }
    }

    fn write_and_sync(&self, w: &mut Writer, buf: &[u8], first_seq: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        if w.file.is_none() || w.offset + len > w.capacity {
            // The previous segment was synced whole by the call that wrote into it, so a torn
            // record can only ever be in the newest segment.
            let path = segment_path(&self.dir, first_seq);
            let file = match fs::rename(self.dir.join(SPARE), &path) {
                Ok(()) => {
                    self.request_spare();
                    OpenOptions::new().read(true).write(true).open(&path)?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let file = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
                    zero_fill(&file, self.segment_bytes)?;
                    file
                }
                Err(e) => return Err(e),
            };
            sync_dir(&self.dir)?;
            w.capacity = file.metadata()?.len();
            w.file = Some(file);
            w.offset = 0;
            w.segments.push(Segment { start: first_seq, path });
        }
        let file = w.file.as_ref().expect("segment opened above");
        // A batch larger than a segment extends the file; sync_data then covers the new size.
        file.write_all_at(buf, w.offset)?;
        file.sync_data()?;
        w.offset += len;
        w.capacity = w.capacity.max(w.offset);
        Ok(())
    }

    fn request_spare(&self) {
        if let Some(tx) = self.want_spare.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(());
        }
    }

    /// Drops every record up to `upto`, which the caller has made durable in sled.
    pub(crate) fn trim(&self, upto: u64) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let pending_empty = self.pending.lock().unwrap_or_else(|e| e.into_inner()).buf.is_empty();
        let keep_from = if self.durable_seq() <= upto && pending_empty {
            // Everything written is in sled: the whole log can go, the next write starts afresh.
            w.file = None;
            w.offset = 0;
            w.capacity = 0;
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

const SPARE: &str = "spare";
const SPARE_TMP: &str = "spare.tmp";

fn zero_fill(file: &File, bytes: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// The spare-maker thread: on each request, makes `spare` (zero-filled, synced, then renamed into
/// place so a half-made spare is never used) unless one is there already.
fn make_spares(dir: &Path, bytes: u64, wanted: Receiver<()>) {
    while wanted.recv().is_ok() {
        if dir.join(SPARE).exists() {
            continue;
        }
        let made = (|| {
            let tmp = dir.join(SPARE_TMP);
            let file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
            zero_fill(&file, bytes)?;
            fs::rename(&tmp, dir.join(SPARE))?;
            sync_dir(dir)
        })();
        // Without a spare the writer zero-fills a segment itself: slower, still correct.
        drop(made);
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
    fn zeros_after_the_last_record_are_unused_space_and_other_bytes_are_torn_or_damage() {
        let mut buf = Vec::new();
        encode_record(1, b"first", &mut buf);
        let good = buf.len();
        let mut clean = buf.clone();
        clean.extend_from_slice(&[0; 64]);
        assert_eq!(classify_tail(&clean, good), Tail::Clean);

        // The first 9 bytes of a second record (ending on its non-zero seq byte), then the
        // zeros it was being written over.
        let mut second = Vec::new();
        encode_record(2, b"second record", &mut second);
        assert_ne!(second[8], 0);
        let mut torn = buf.clone();
        torn.extend_from_slice(&second[..9]);
        torn.extend_from_slice(&[0; 64]);
        assert_eq!(decode_records(&torn).1, good);
        assert_eq!(classify_tail(&torn, good), Tail::Torn(9));

        // A damaged second record followed by a valid third: not a torn tail.
        let mut damaged = buf.clone();
        let mut bad = second.clone();
        bad[12] ^= 0xff;
        damaged.extend_from_slice(&bad);
        encode_record(3, b"third", &mut damaged);
        damaged.extend_from_slice(&[0; 16]);
        assert_eq!(decode_records(&damaged).1, good);
        assert_eq!(classify_tail(&damaged, good), Tail::Damaged);
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
