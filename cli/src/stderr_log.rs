//! Log records of the runtime (connections, pairing, retries) on stderr: plain lines, or
//! one JSON object per line for log shippers (`run-relay-server --log-format json`).

use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// How each record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `info: message`.
    Text,
    /// `{"time":"…","level":"info","message":"…", fields…}`.
    Json,
}

struct StderrLog {
    /// Most detailed level shown for p2p-copy's own crates.
    ours: LevelFilter,
    format: Format,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Dependencies (TLS, WebSocket) only get to speak up for real problems.
        let limit = if m.target().starts_with("p2p_copy") {
            self.ours
        } else {
            LevelFilter::Warn.min(self.ours)
        };
        m.level() <= limit
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        match self.format {
            Format::Text => eprintln!("{level}: {}", r.args()),
            Format::Json => eprintln!("{}", json_line(level, r, SystemTime::now())),
        }
    }

    fn flush(&self) {}
}

/// One record as a JSON object: time (UTC, RFC 3339), level, message, then the record's
/// fields with their own types.
fn json_line(level: &str, r: &Record<'_>, now: SystemTime) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("time".into(), rfc3339(now).into());
    obj.insert("level".into(), level.into());
    obj.insert("message".into(), r.args().to_string().into());
    let mut fields = Fields(&mut obj);
    let _ = r.key_values().visit(&mut fields);
    serde_json::Value::Object(obj).to_string()
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), v);
        Ok(())
    }
}

/// `2026-12-03T15:04:05.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Show p2p-copy's log records up to `level` on stderr, in `format`.
pub fn init(level: LevelFilter, format: Format) {
    let logger = Box::leak(Box::new(StderrLog {
        ours: level,
        format,
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_250);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.250Z");
    }

    #[test]
    fn a_json_line_carries_the_fields_with_their_types() {
        let kvs: [(&str, Value<'_>); 3] = [
            ("bytes", Value::from(42u64)),
            ("outcome", Value::from("completed")),
            ("duration_s", Value::from(1.5f64)),
        ];
        let args = format_args!("pair \"1/2\" ended");
        let r = Record::builder()
            .args(args)
            .level(Level::Info)
            .key_values(&kvs)
            .build();
        let line = json_line("info", &r, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"], "pair \"1/2\" ended");
        assert_eq!(v["level"], "info");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["outcome"], "completed");
        assert_eq!(v["duration_s"], 1.5);
        assert!(!line.contains('\n'));
    }
}
