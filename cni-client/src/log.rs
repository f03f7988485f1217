//! A small append-only log to `logFile` (the plugin's stdout belongs to the runtime). Without a
//! `logFile` nothing is written. Lines: `<unix ms> <level> <command> <container> <message>`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::LogLevel;

struct Logger {
    file: PathBuf,
    level: LogLevel,
    prefix: String,
}

static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

pub fn init(file: Option<PathBuf>, level: LogLevel, command: &str, container: &str) {
    let mut g = LOGGER.lock().unwrap_or_else(|e| e.into_inner());
    *g = file.map(|file| Logger { file, level, prefix: format!("{command} {container}") });
}

pub fn log(level: LogLevel, msg: &str) {
    let g = LOGGER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(l) = g.as_ref() else { return };
    if level > l.level {
        return;
    }
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let line = format!("{ms} {} {} {msg}\n", level.as_str(), l.prefix);
    // A log that cannot be written must not fail the pod.
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&l.file) {
        let _ = f.write_all(line.as_bytes());
    }
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
