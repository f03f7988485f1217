//! A small append-only log to `logFile` (the plugin's stdout belongs to the runtime). Without a
//! `logFile` nothing is written. Lines: `<unix ms> <level> <command> <container> <message>`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::LogLevel;

struct Logger {
    file: PathBuf,
    max_bytes: u64,
    level: LogLevel,
    prefix: String,
}

static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

pub fn init(file: Option<PathBuf>, max_bytes: u64, level: LogLevel, command: &str, container: &str) {
    let mut g = LOGGER.lock().unwrap_or_else(|e| e.into_inner());
    *g = file.map(|file| Logger { file, max_bytes, level, prefix: format!("{command} {container}") });
}

pub fn log(level: LogLevel, msg: &str) {
    let g = LOGGER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(l) = g.as_ref() else { return };
    if level > l.level {
        return;
    }
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let line = format!("{ms} {} {} {msg}\n", level.as_str(), l.prefix);
    append(&l.file, l.max_bytes, &line);
}

/// Appends `line` to `file`, size-capped at `max_bytes`: past it the full log becomes
/// `<file>.1` (replacing the older one). Plugins run concurrently; two rotating at once lose at
/// most the lines between, never grow the log. A log that cannot be written must not fail the
/// pod, so errors are ignored.
fn append(file: &std::path::Path, max_bytes: u64, line: &str) {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(file);
    let Ok(mut f) = open() else { return };
    if f.metadata().is_ok_and(|m| m.len() + line.len() as u64 > max_bytes) {
        let mut rotated = file.to_path_buf().into_os_string();
        rotated.push(".1");
        let _ = std::fs::rename(file, rotated);
        let Ok(fresh) = open() else { return };
        f = fresh;
    }
    let _ = f.write_all(line.as_bytes());
}

pub fn info(msg: &str) {
    log(LogLevel::Info, msg)
}

pub fn warn(msg: &str) {
    log(LogLevel::Warn, msg)
}

pub fn debug(msg: &str) {
    log(LogLevel::Debug, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_size_capped_with_one_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cni.log");
        // Straight to `append`: the logger is process-wide, and other tests in this process set it.
        for i in 0..1000 {
            append(&file, 4096, &format!("line {i} {}\n", "x".repeat(40)));
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&file) <= 4096, "{}", size(&file));
        let old = dir.path().join("cni.log.1");
        assert!(size(&old) <= 4096 && size(&old) > 3000, "{}", size(&old));
        assert!(std::fs::read_to_string(&file).unwrap().contains("line 999"));
    }
}
