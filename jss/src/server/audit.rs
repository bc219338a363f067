//! The audit log: one JSON line per decision, never the token.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Serialize, Default)]
pub struct AuditRecord<'a> {
    pub time: f64,
    pub pid: i32,
    pub uid: u32,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub container: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub exp: Option<u64>,
    /// "issued", "cached" or "denied".
    pub outcome: &'a str,
    /// For "denied": the error code the caller got, then the message.
    pub code: Option<&'a str>,
    pub reason: Option<&'a str>,
}

#[derive(Debug)]
pub struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    /// Appends to `path`, or logs through the `audit` tracing target when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(Mutex::new(
                    OpenOptions::new().create(true).append(true).open(p)?,
                ))
            }
            None => None,
        };
        Ok(Self { file })
    }

    pub fn record(&self, mut rec: AuditRecord<'_>) {
        rec.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let Ok(mut line) = serde_json::to_string(&rec) else {
            return;
        };
        match &self.file {
            Some(f) => {
                line.push('\n');
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                // One write per line: O_APPEND keeps lines whole across writers.
                if let Err(e) = f.write_all(line.as_bytes()) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
            None => tracing::info!(target: "audit", "{line}"),
        }
    }
}
