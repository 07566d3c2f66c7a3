//! Logs shaped as KServe's agent writes them, so that what parses KServe's logs parses ours.
//!
//! KServe's agent logs through controller-runtime's `zap.Options{}` bound to the `--zap-*` flags
//! (controller-runtime v0.22.5, `pkg/log/zap`). Without `--zap-devel` that is zap's production
//! setup: one JSON object per line on stderr with the keys `level` (lower case), `ts`, `logger`
//! (the logger's dotted name, e.g. `setup`), `msg`, the structured fields flattened, and
//! `stacktrace` on `error` lines. `--zap-devel` switches to zap's console layout
//! (`<ts>\t<LEVEL>\t<logger>\t<msg>\t{"k": "v"}`, the stack trace on the lines after), debug
//! level and stack traces from `warn` up. What each flag accepts is what controller-runtime's
//! flag values accept (`--zap-time-encoding` takes `nanos`, whatever its help text says).
//!
//! How this maps tracing onto zap:
//! - levels: `ERROR` → `error`, `WARN` → `warn`, `INFO` → `info`, `DEBUG` → `debug`, and
//!   `TRACE` → zap level -2, written `Level(-2)` as zap writes logr's `V(2)`;
//! - `logger`: the event's target, with the crate named for what it is (`localmodelnode`,
//!   `modelpull`) and `::` written `.` (zap's name separator); main's lines are `setup`, as
//!   KServe's `setupLog`'s;
//! - fields of the spans the event is in come first (logr's `WithValues`), then the event's;
//! - `ts`: controller-runtime's default is RFC 3339 (its help text says `epoch`, its code sets
//!   `RFC3339TimeEncoder`). Times are written in UTC: KServe's distroless image has no local
//!   time zone either, so Go writes UTC there too;
//! - `stacktrace`: the Rust call stack of the logging call, as zap writes Go's: `function`, then
//!   `\tfile:line` (where the binary has line tables), one frame after the other. Unlike Go's,
//!   the first one costs: std loads the binary's symbols and keeps them (about 200 ms and 45 MB
//!   for a debug build stripped of its DWARF). With the default level only `error` lines carry
//!   one, and the agent logs at `error` only when it cannot run.
//!
//! Not reproduced: `caller` (controller-runtime does not ask zap for it, so KServe's lines have
//! none) and the production sampler (zap drops repeats of one message beyond 100 a second; every
//! line is kept here).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of main's own lines, whose `logger` is `setup`, as KServe's `setupLog`'s (under
/// the agent's crate, so that `RUST_LOG=localmodelnode_agent=…` covers them).
pub const SETUP: &str = "localmodelnode_agent::setup";

/// A value a `--zap-*` flag does not accept; the message is controller-runtime's, with what is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error(
        "invalid log level \"{0}\" (one of debug, info, error, panic, or an integer > 0 for more verbose levels)"
    )]
    Level(String),
    #[error("invalid stacktrace level \"{0}\" (one of info, error, panic)")]
    StacktraceLevel(String),
    #[error("invalid encoder value \"{0}\" (one of json, console)")]
    Encoder(String),
    #[error(
        "invalid time-encoding value \"{0}\" (one of epoch, millis, nanos, iso8601, rfc3339, rfc3339nano)"
    )]
    TimeEncoding(String),
}

/// zap's encoders (`--zap-encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    Json,
    Console,
}

impl FromStr for Encoder {
    type Err = FlagError;

    fn from_str(s: &str) -> Result<Self, FlagError> {
        match s.to_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "console" => Ok(Self::Console),
            _ => Err(FlagError::Encoder(s.to_owned())),
        }
    }
}

/// How `ts` is written (`--zap-time-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEncoding {
    /// Seconds since the epoch, a float.
    Epoch,
    /// Milliseconds since the epoch, a float.
    Millis,
    /// Nanoseconds since the epoch, an integer.
    Nanos,
    /// `2006-01-02T15:04:05.000Z0700`.
    Iso8601,
    /// `2006-01-02T15:04:05Z07:00`.
    Rfc3339,
    /// RFC 3339 with the nanoseconds, trailing zeros cut.
    Rfc3339Nano,
}

impl FromStr for TimeEncoding {
    type Err = FlagError;

    fn from_str(s: &str) -> Result<Self, FlagError> {
        match s.to_lowercase().as_str() {
            "epoch" => Ok(Self::Epoch),
            "millis" => Ok(Self::Millis),
            "nanos" => Ok(Self::Nanos),
            "iso8601" => Ok(Self::Iso8601),
            "rfc3339" => Ok(Self::Rfc3339),
            "rfc3339nano" => Ok(Self::Rfc3339Nano),
            _ => Err(FlagError::TimeEncoding(s.to_owned())),
        }
    }
}

/// A zap level: -1 debug, 0 info, 1 warn, 2 error, 4 panic; logr's `V(n)` is `-n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ZapLevel(pub i8);

impl ZapLevel {
    pub const DEBUG: Self = Self(-1);
    pub const INFO: Self = Self(0);
    pub const WARN: Self = Self(1);
    pub const ERROR: Self = Self(2);
    pub const PANIC: Self = Self(4);

    /// `--zap-log-level`: `debug`, `info`, `error`, `panic` (any case), or `n` > 0 for `V(n)`.
    pub fn parse_log_level(s: &str) -> Result<Self, FlagError> {
        match s.to_lowercase().as_str() {
            "debug" => Ok(Self::DEBUG),
            "info" => Ok(Self::INFO),
            "error" => Ok(Self::ERROR),
            "panic" => Ok(Self::PANIC),
            _ => match s.parse::<i64>() {
                // Go converts -n to int8 and wraps; every n from 2 up enables all we log.
                Ok(n) if n > 0 => Ok(Self(-(n.min(127) as i8))),
                _ => Err(FlagError::Level(s.to_owned())),
            },
        }
    }

    /// `--zap-stacktrace-level`: `info`, `error` or `panic` (any case).
    pub fn parse_stacktrace_level(s: &str) -> Result<Self, FlagError> {
        match s.to_lowercase().as_str() {
            "info" => Ok(Self::INFO),
            "error" => Ok(Self::ERROR),
            "panic" => Ok(Self::PANIC),
            _ => Err(FlagError::StacktraceLevel(s.to_owned())),
        }
    }

    fn of(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::ERROR,
            Level::WARN => Self::WARN,
            Level::INFO => Self::INFO,
            Level::DEBUG => Self::DEBUG,
            Level::TRACE => Self(-2),
        }
    }

    /// zap's `LowercaseLevelEncoder`.
    fn lower(self) -> Cow<'static, str> {
        match self.0 {
            -1 => "debug".into(),
            0 => "info".into(),
            1 => "warn".into(),
            2 => "error".into(),
            3 => "dpanic".into(),
            4 => "panic".into(),
            5 => "fatal".into(),
            n => format!("Level({n})").into(),
        }
    }

    /// zap's `CapitalLevelEncoder`.
    fn capital(self) -> String {
        self.lower().to_uppercase()
    }

    /// The most verbose tracing level this zap level lets through.
    fn filter(self) -> LevelFilter {
        match self.0 {
            i8::MIN..=-2 => LevelFilter::TRACE,
            -1 => LevelFilter::DEBUG,
            0 => LevelFilter::INFO,
            1 => LevelFilter::WARN,
            2 => LevelFilter::ERROR,
            _ => LevelFilter::OFF,
        }
    }
}

/// How the agent logs: the `--zap-*` flags with controller-runtime's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub encoder: Encoder,
    /// Lines below this level are dropped.
    pub level: ZapLevel,
    /// Lines at this level and above carry a stack trace.
    pub stacktrace: ZapLevel,
    pub time: TimeEncoding,
}

impl Options {
    /// controller-runtime's `Options.addDefaults`: what a flag sets wins; otherwise development
    /// mode is console, debug, stack traces from warn, and production is JSON, info, stack
    /// traces from error; both write RFC 3339 times.
    pub fn new(
        development: bool,
        encoder: Option<Encoder>,
        level: Option<ZapLevel>,
        stacktrace: Option<ZapLevel>,
        time: Option<TimeEncoding>,
    ) -> Self {
        let (encoder_default, level_default, stacktrace_default) = if development {
            (Encoder::Console, ZapLevel::DEBUG, ZapLevel::WARN)
        } else {
            (Encoder::Json, ZapLevel::INFO, ZapLevel::ERROR)
        };
        Self {
            encoder: encoder.unwrap_or(encoder_default),
            level: level.unwrap_or(level_default),
            stacktrace: stacktrace.unwrap_or(stacktrace_default),
            time: time.unwrap_or(TimeEncoding::Rfc3339),
        }
    }

    /// The filter for `level`: the agent's and the engine's lines at that level, other
    /// crates' from warn (or `level`, if stricter).
    fn directives(&self) -> String {
        let level = self.level.filter();
        let others = level.min(LevelFilter::WARN);
        format!("{others},localmodelnode_agent={level},modelpull={level}")
    }
}

/// Installs the logger for the process, on stderr. `RUST_LOG`, when set, replaces the level
/// filter.
pub fn init(options: &Options) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(options.directives()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .fmt_fields(ZapFields::new(options.encoder))
        .event_format(ZapFormat::new(options))
        .init();
}

/// Formats one event as zap's JSON or console encoder would.
#[derive(Debug, Clone)]
pub struct ZapFormat {
    encoder: Encoder,
    time: TimeEncoding,
    stacktrace: ZapLevel,
}

impl ZapFormat {
    pub fn new(options: &Options) -> Self {
        Self {
            encoder: options.encoder,
            time: options.time,
            stacktrace: options.stacktrace,
        }
    }
}

impl<S> FormatEvent<S, ZapFields> for ZapFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, ZapFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let spaced = self.encoder == Encoder::Console;
        let mut fields = FieldsJson::new(spaced);
        // Logr's WithValues: the fields of the spans the event is in, outermost first.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(own) = span.extensions().get::<FormattedFields<ZapFields>>() {
                    fields.append_raw(own);
                }
            }
        }
        event.record(&mut fields);
        let level = ZapLevel::of(event.metadata().level());
        let logger = logger_name(
            fields
                .log_target
                .as_deref()
                .unwrap_or(event.metadata().target()),
        );
        let message = fields.message.take().unwrap_or_default();
        let ts = Timestamp::encode(self.time, SystemTime::now());
        let stack = if level >= self.stacktrace {
            Some(stacktrace())
        } else {
            None
        };
        let line = match self.encoder {
            Encoder::Json => {
                let mut line = String::with_capacity(128);
                line.push_str("{\"level\":");
                push_json_str(&mut line, &level.lower());
                line.push_str(",\"ts\":");
                ts.push_json(&mut line);
                if !logger.is_empty() {
                    line.push_str(",\"logger\":");
                    push_json_str(&mut line, &logger);
                }
                line.push_str(",\"msg\":");
                push_json_str(&mut line, &message);
                if !fields.out.is_empty() {
                    line.push(',');
                    line.push_str(&fields.out);
                }
                if let Some(stack) = &stack {
                    line.push_str(",\"stacktrace\":");
                    push_json_str(&mut line, stack);
                }
                line.push('}');
                line
            }
            Encoder::Console => {
                let mut line = ts.console();
                line.push('\t');
                line.push_str(&level.capital());
                if !logger.is_empty() {
                    line.push('\t');
                    line.push_str(&logger);
                }
                line.push('\t');
                line.push_str(&message);
                if !fields.out.is_empty() {
                    line.push_str("\t{");
                    line.push_str(&fields.out);
                    line.push('}');
                }
                if let Some(stack) = &stack {
                    line.push('\n');
                    line.push_str(stack);
                }
                line
            }
        };
        writeln!(writer, "{line}")
    }
}

/// Records span fields as the JSON members zap's encoder would write for them (compact for
/// the JSON encoder, `"k": "v"` for the console's).
#[derive(Debug, Clone, Copy)]
pub struct ZapFields {
    spaced: bool,
}

impl ZapFields {
    pub fn new(encoder: Encoder) -> Self {
        Self {
            spaced: encoder == Encoder::Console,
        }
    }
}

impl<'w> FormatFields<'w> for ZapFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut json = FieldsJson::new(self.spaced);
        fields.record(&mut json);
        // A span's own message, if it has one, is one of its fields.
        if let Some(message) = json.message.take() {
            json.key("message");
            push_json_str(&mut json.out, &message);
        }
        writer.write_str(&json.out)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if !current.fields.is_empty() {
            current
                .fields
                .push_str(if self.spaced { ", " } else { "," });
        }
        self.format_fields(current.as_writer(), fields)
    }
}

/// The members of a JSON object, without braces, and the two fields zap keeps apart: the
/// message, and the target of a line that came from the `log` crate.
#[derive(Debug)]
struct FieldsJson {
    out: String,
    spaced: bool,
    message: Option<String>,
    log_target: Option<String>,
}

impl FieldsJson {
    fn new(spaced: bool) -> Self {
        Self {
            out: String::new(),
            spaced,
            message: None,
            log_target: None,
        }
    }

    fn key(&mut self, name: &str) {
        if !self.out.is_empty() {
            self.out.push_str(if self.spaced { ", " } else { "," });
        }
        push_json_str(&mut self.out, name);
        self.out.push_str(if self.spaced { ": " } else { ":" });
    }

    fn append_raw(&mut self, members: &str) {
        if members.is_empty() {
            return;
        }
        if !self.out.is_empty() {
            self.out.push_str(if self.spaced { ", " } else { "," });
        }
        self.out.push_str(members);
    }

    /// Whether a string field is one of those kept apart (and keeps it).
    fn kept_apart(&mut self, field: &Field, value: &str) -> bool {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "log.target" => self.log_target = Some(value.to_owned()),
            // The rest of what tracing-log adds: zap has no caller, so neither do we.
            name if name.starts_with("log.") => {}
            _ => return false,
        }
        true
    }
}

impl Visit for FieldsJson {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.kept_apart(field, value) {
            self.key(field.name());
            push_json_str(&mut self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        self.record_str(field, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        push_json_f64(&mut self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.out.push_str(if value { "true" } else { "false" });
    }
}

/// The logger's name for a tracing target: `localmodelnode_agent::jobs` is
/// `localmodelnode.jobs`, [`SETUP`] is `setup`.
fn logger_name(target: &str) -> String {
    if target == SETUP {
        return "setup".into();
    }
    let (head, rest) = target.split_once("::").unwrap_or((target, ""));
    let head = match head {
        "localmodelnode_agent" => "localmodelnode",
        other => other,
    };
    if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}.{}", rest.replace("::", "."))
    }
}

/// A string as zap's JSON encoder writes it: `"` and `\` escaped, `\n`, `\r`, `\t` as such,
/// other control characters as `\u00XX`.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as zap's JSON encoder writes it: the shortest decimal that reads back the same, no
/// exponent; NaN and the infinities as strings.
fn push_json_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"+Inf\"" } else { "\"-Inf\"" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A float as Go's `%v` writes it (zap's console encoder prints its time so): the shortest
/// digits, with an exponent (`1.5e+09`) when it is below -4 or from 6 up.
fn go_float_v(v: f64) -> String {
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` writes an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if v == 0.0 || !v.is_finite() || (-4..6).contains(&exp) {
        format!("{v}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// `ts`, encoded.
#[derive(Debug, Clone, PartialEq)]
enum Timestamp {
    Float(f64),
    Int(i64),
    Text(String),
}

impl Timestamp {
    fn encode(encoding: TimeEncoding, t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let nanos = i64::try_from(since.as_nanos()).unwrap_or(i64::MAX);
        match encoding {
            // As zap: the integer nanoseconds, as a float, divided.
            TimeEncoding::Epoch => Self::Float(nanos as f64 / 1e9),
            TimeEncoding::Millis => Self::Float(nanos as f64 / 1e6),
            TimeEncoding::Nanos => Self::Int(nanos),
            TimeEncoding::Iso8601 => {
                let millis = since.subsec_millis();
                Self::Text(format!("{}.{millis:03}Z", civil(since.as_secs())))
            }
            TimeEncoding::Rfc3339 => Self::Text(format!("{}Z", civil(since.as_secs()))),
            TimeEncoding::Rfc3339Nano => {
                let mut s = civil(since.as_secs());
                let frac = since.subsec_nanos();
                if frac > 0 {
                    let digits = format!("{frac:09}");
                    s.push('.');
                    s.push_str(digits.trim_end_matches('0'));
                }
                s.push('Z');
                Self::Text(s)
            }
        }
    }

    fn push_json(&self, out: &mut String) {
        match self {
            Self::Float(v) => push_json_f64(out, *v),
            Self::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Self::Text(s) => push_json_str(out, s),
        }
    }

    fn console(&self) -> String {
        match self {
            Self::Float(v) => go_float_v(*v),
            Self::Int(v) => v.to_string(),
            Self::Text(s) => s.clone(),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC for seconds since the epoch (the days-to-civil algorithm of
/// H. Hinnant's `chrono`-compatible date library).
fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The call stack of the logging call as zap writes Go's: `function`, then `\tfile:line`.
fn stacktrace() -> String {
    zap_stack(&std::backtrace::Backtrace::force_capture().to_string())
}

/// Frames of the logging machinery itself, dropped from the top of a stack trace.
const MACHINERY: [&str; 9] = [
    "std::backtrace",
    "std::thread::local",
    "tracing::",
    "tracing_core::",
    "tracing_subscriber::",
    "<tracing",
    "localmodelnode_agent::logging::stacktrace",
    "<localmodelnode_agent::logging::ZapFormat",
    "core::ops::function",
];

/// Source files of the machinery, for frames named without their path.
const MACHINERY_SOURCES: [&str; 4] = [
    "/tracing-",
    "/std/src/thread/local.rs",
    "/std/src/backtrace",
    "/core/src/ops/function.rs",
];

/// Rewrites a rendered [`std::backtrace::Backtrace`] (`  0: function` / `at file:line:col`)
/// into zap's layout, from the first frame outside the logging machinery.
fn zap_stack(rendered: &str) -> String {
    let mut frames: Vec<(String, Option<String>)> = Vec::new();
    for line in rendered.lines() {
        let line = line.trim_start();
        if let Some(at) = line.strip_prefix("at ") {
            if let Some((_, location)) = frames.last_mut().filter(|(_, l)| l.is_none()) {
                // `file:line:column`; zap has no column.
                let at = at.rsplit_once(':').map_or(at, |(rest, col)| {
                    if col.chars().all(|c| c.is_ascii_digit()) {
                        rest
                    } else {
                        at
                    }
                });
                *location = Some(at.to_owned());
            }
        } else if let Some((n, function)) = line.split_once(": ")
            && n.chars().all(|c| c.is_ascii_digit())
        {
            frames.push((function.to_owned(), None));
        }
    }
    // A frame in tracing's own source is the event macro's closure, not the caller. Inlined
    // frames may carry a bare name (`try_with<…>`, with line tables only): their file tells.
    let machinery = |(function, location): &(String, Option<String>)| {
        MACHINERY.iter().any(|m| function.starts_with(m))
            || location
                .as_ref()
                .is_some_and(|l| MACHINERY_SOURCES.iter().any(|s| l.contains(s)))
    };
    let first = frames.iter().position(|f| !machinery(f)).unwrap_or(0);
    let mut out = String::new();
    for (function, location) in &frames[first..] {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(function);
        if let Some(location) = location {
            out.push_str("\n\t");
            out.push_str(location);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written to memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What `log` writes with `options`, at every level.
    fn logged(options: Options, log: impl FnOnce()) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(LevelFilter::TRACE)
            .with_writer(out.clone())
            .fmt_fields(ZapFields::new(options.encoder))
            .event_format(ZapFormat::new(&options))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        out.text()
    }

    fn production() -> Options {
        Options::new(false, None, None, None, None)
    }

    /// A JSON object's members, in the order written.
    struct Line(Vec<(String, Value)>);

    impl Line {
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_str()).collect()
        }

        fn contains_key(&self, key: &str) -> bool {
            self.0.iter().any(|(k, _)| k == key)
        }
    }

    impl std::ops::Index<&str> for Line {
        type Output = Value;

        fn index(&self, key: &str) -> &Value {
            let found = self.0.iter().find(|(k, _)| k == key);
            &found.unwrap_or_else(|| panic!("no {key}")).1
        }
    }

    impl<'de> serde::Deserialize<'de> for Line {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Members;
            impl<'de> serde::de::Visitor<'de> for Members {
                type Value = Line;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }

                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Line, A::Error> {
                    let mut members = Vec::new();
                    while let Some(member) = map.next_entry::<String, Value>()? {
                        members.push(member);
                    }
                    Ok(Line(members))
                }
            }
            d.deserialize_map(Members)
        }
    }

    fn json_lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object: {l}: {e}"))
            })
            .collect()
    }

    #[test]
    fn json_lines_have_zaps_keys_in_zaps_order() {
        let text = logged(production(), || {
            tracing::info!(target: SETUP, node = "gpu-node-1", models = 3_u64, ready = true, "connected");
        });
        let lines = json_lines(&text);
        assert_eq!(lines.len(), 1, "{text}");
        let line = &lines[0];
        assert_eq!(
            line.keys(),
            ["level", "ts", "logger", "msg", "node", "models", "ready"],
            "{text}"
        );
        assert_eq!(line["level"], "info");
        assert_eq!(line["logger"], "setup");
        assert_eq!(line["msg"], "connected");
        assert_eq!(line["node"], "gpu-node-1");
        assert_eq!(line["models"], 3);
        assert_eq!(line["ready"], true);
        // controller-runtime's default: RFC 3339, in seconds.
        let ts = line["ts"].as_str().expect("an RFC 3339 string");
        assert_eq!(ts.len(), "2006-01-02T15:04:05Z".len(), "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{ts}");
    }

    #[test]
    fn levels_are_zaps_names_and_the_logger_is_the_module() {
        let text = logged(production(), || {
            tracing::error!(target: "localmodelnode_agent::controller", "e");
            tracing::warn!(target: "localmodelnode_agent", "w");
            tracing::info!(target: "modelpull::store::s3", "i");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let lines = json_lines(&text);
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l["level"].as_str().unwrap(), l["logger"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("error", "localmodelnode.controller"),
                ("warn", "localmodelnode"),
                ("info", "modelpull.store.s3"),
                ("debug", "localmodelnode.logging.tests"),
                ("Level(-2)", "localmodelnode.logging.tests"),
            ]
        );
    }

    #[test]
    fn error_lines_carry_the_callers_stack_in_production() {
        let text = logged(production(), || {
            tracing::warn!("no stack below error");
            tracing::error!(error = "boom", "reconcile failed");
        });
        let lines = json_lines(&text);
        assert!(!lines[0].contains_key("stacktrace"), "{text}");
        assert_eq!(
            lines[1].keys(),
            ["level", "ts", "logger", "msg", "error", "stacktrace"],
            "{text}"
        );
        let stack = lines[1]["stacktrace"].as_str().unwrap();
        // The first frame is the caller, the closure above (named in full where the build
        // has full debug info, `{closure#0}` with line tables only): its file is this one.
        let first = stack.lines().next().unwrap();
        assert!(
            first.contains("error_lines_carry_the_callers_stack_in_production")
                || first.contains("{closure"),
            "the first frame is the caller: {stack}"
        );
        let at = stack.lines().nth(1).unwrap();
        assert!(
            at.starts_with('\t') && at.contains("logging.rs:"),
            "zap's layout: function, then a tab and the caller's file:line: {stack}"
        );
    }

    #[test]
    fn the_stacktrace_level_is_the_flags() {
        let options = Options::new(false, None, None, Some(ZapLevel::INFO), None);
        let text = logged(options, || tracing::info!("with a stack"));
        assert!(json_lines(&text)[0].contains_key("stacktrace"), "{text}");
        let options = Options::new(false, None, None, Some(ZapLevel::PANIC), None);
        let text = logged(options, || tracing::error!("without"));
        assert!(!json_lines(&text)[0].contains_key("stacktrace"), "{text}");
    }

    #[test]
    fn span_fields_come_before_the_events_and_log_fields_are_dropped() {
        let text = logged(production(), || {
            let span = tracing::info_span!("reconciling object", object = "gpu-node-1");
            let _in = span.enter();
            tracing::info!(step = 2, "planned");
        });
        let line = &json_lines(&text)[0];
        assert_eq!(
            line.keys(),
            ["level", "ts", "logger", "msg", "object", "step"]
        );
        assert_eq!(line["object"], "gpu-node-1");
        assert_eq!(line["step"], 2);
    }

    #[test]
    fn strings_are_escaped_as_zap_escapes_them() {
        let text = logged(production(), || {
            tracing::info!(path = "C:\\x \"q\"\n\u{1}", "a\tb");
        });
        assert!(
            text.contains(r#""msg":"a\tb","path":"C:\\x \"q\"\n\u0001""#),
            "{text}"
        );
        json_lines(&text);
    }

    #[test]
    fn console_is_zaps_development_layout() {
        let options = Options::new(true, None, None, None, None);
        assert_eq!(options.encoder, Encoder::Console);
        let text = logged(options, || {
            tracing::info!(target: SETUP, addr = ":8080", workers = 1, "starting");
            tracing::warn!("careful");
        });
        let first = text.lines().next().unwrap();
        let cols: Vec<&str> = first.split('\t').collect();
        assert_eq!(cols.len(), 5, "{first}");
        assert!(cols[0].ends_with('Z'), "{first}");
        assert_eq!(
            &cols[1..],
            [
                "INFO",
                "setup",
                "starting",
                r#"{"addr": ":8080", "workers": 1}"#
            ]
        );
        // Development mode: stack traces from warn, on the lines after.
        let warn = text.lines().nth(1).unwrap();
        assert!(
            warn.ends_with("\tWARN\tlocalmodelnode.logging.tests\tcareful"),
            "{warn}"
        );
        let caller = text.lines().nth(2).unwrap();
        assert!(
            caller.contains("console_is_zaps_development_layout") || caller.contains("{closure"),
            "{text}"
        );
        assert!(
            text.lines().nth(3).unwrap().contains("logging.rs:"),
            "{text}"
        );
    }

    #[test]
    fn console_without_fields_has_no_braces() {
        let options = Options::new(false, Some(Encoder::Console), None, None, None);
        let text = logged(options, || tracing::info!(target: SETUP, "plain"));
        assert!(text.ends_with("\tINFO\tsetup\tplain\n"), "{text:?}");
    }

    #[test]
    fn times_are_encoded_as_each_flag_value_says() {
        // 2024-02-29T12:34:56.789012300Z
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 789_012_300);
        let enc = |e| Timestamp::encode(e, t);
        let nanos = 1_709_210_096_789_012_300_i64;
        // zap's arithmetic: the integer nanoseconds, as a float, divided.
        assert_eq!(
            enc(TimeEncoding::Epoch),
            Timestamp::Float(nanos as f64 / 1e9)
        );
        assert_eq!(
            enc(TimeEncoding::Millis),
            Timestamp::Float(nanos as f64 / 1e6)
        );
        assert_eq!(enc(TimeEncoding::Nanos), Timestamp::Int(nanos));
        let text = |e| match enc(e) {
            Timestamp::Text(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(TimeEncoding::Iso8601), "2024-02-29T12:34:56.789Z");
        assert_eq!(text(TimeEncoding::Rfc3339), "2024-02-29T12:34:56Z");
        assert_eq!(
            text(TimeEncoding::Rfc3339Nano),
            "2024-02-29T12:34:56.7890123Z"
        );
        let whole = Timestamp::encode(
            TimeEncoding::Rfc3339Nano,
            UNIX_EPOCH + Duration::from_secs(0),
        );
        assert_eq!(whole, Timestamp::Text("1970-01-01T00:00:00Z".into()));
        // zap's JSON writes floats without an exponent, its console as Go's %v.
        let mut json = String::new();
        enc(TimeEncoding::Epoch).push_json(&mut json);
        assert!(json.starts_with("1709210096.789"), "{json}");
        let console = enc(TimeEncoding::Epoch).console();
        assert!(
            console.starts_with("1.709210096789") && console.ends_with("e+09"),
            "{console}"
        );
        assert_eq!(enc(TimeEncoding::Nanos).console(), "1709210096789012300");
    }

    #[test]
    fn epoch_json_lines_have_a_float_ts() {
        let options = Options::new(false, None, None, None, Some(TimeEncoding::Epoch));
        let text = logged(options, || tracing::info!("x"));
        let ts = json_lines(&text)[0]["ts"].as_f64().expect("a number");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - ts).abs() < 60.0, "{ts} vs {now}");
    }

    #[test]
    fn civil_dates_round_leap_years_and_centuries() {
        assert_eq!(civil(0), "1970-01-01T00:00:00");
        assert_eq!(civil(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(civil(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(civil(4_107_542_400), "2100-03-01T00:00:00");
    }

    #[test]
    fn go_v_floats() {
        assert_eq!(go_float_v(0.0), "0");
        assert_eq!(go_float_v(123_456.0), "123456");
        assert_eq!(go_float_v(1_234_567.0), "1.234567e+06");
        assert_eq!(go_float_v(0.0001), "0.0001");
        assert_eq!(go_float_v(0.000_01), "1e-05");
    }

    #[test]
    fn flags_accept_what_controller_runtime_accepts() {
        assert_eq!(ZapLevel::parse_log_level("DEBUG"), Ok(ZapLevel::DEBUG));
        assert_eq!(ZapLevel::parse_log_level("panic"), Ok(ZapLevel::PANIC));
        assert_eq!(ZapLevel::parse_log_level("3"), Ok(ZapLevel(-3)));
        for bad in ["warn", "trace", "0", "-1", "verbose", ""] {
            let err = ZapLevel::parse_log_level(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("\"{bad}\"")), "{err}");
        }
        assert_eq!(
            ZapLevel::parse_stacktrace_level("Error"),
            Ok(ZapLevel::ERROR)
        );
        assert!(ZapLevel::parse_stacktrace_level("warn").is_err());
        assert_eq!("CONSOLE".parse(), Ok(Encoder::Console));
        assert!("text".parse::<Encoder>().is_err());
        assert_eq!("rfc3339nano".parse(), Ok(TimeEncoding::Rfc3339Nano));
        assert_eq!("nanos".parse(), Ok(TimeEncoding::Nanos));
        let err = "nano".parse::<TimeEncoding>().unwrap_err();
        assert!(err.to_string().contains("nanos"), "{err}");
    }

    #[test]
    fn defaults_are_controller_runtimes() {
        assert_eq!(
            production(),
            Options {
                encoder: Encoder::Json,
                level: ZapLevel::INFO,
                stacktrace: ZapLevel::ERROR,
                time: TimeEncoding::Rfc3339
            }
        );
        let devel = Options::new(true, Some(Encoder::Json), Some(ZapLevel::ERROR), None, None);
        assert_eq!(devel.encoder, Encoder::Json);
        assert_eq!(devel.level, ZapLevel::ERROR);
        assert_eq!(devel.stacktrace, ZapLevel::WARN);
    }

    #[test]
    fn the_level_filters_our_crates_and_keeps_others_at_warn() {
        let at = |level| Options::new(false, None, Some(level), None, None).directives();
        assert_eq!(
            at(ZapLevel::INFO),
            "warn,localmodelnode_agent=info,modelpull=info"
        );
        assert_eq!(
            at(ZapLevel::ERROR),
            "error,localmodelnode_agent=error,modelpull=error"
        );
        assert_eq!(
            at(ZapLevel(-5)),
            "warn,localmodelnode_agent=trace,modelpull=trace"
        );
        assert!(at(ZapLevel::PANIC).starts_with("off,localmodelnode_agent=off"));
    }

    #[test]
    fn stacks_are_rewritten_from_the_first_frame_outside_the_machinery() {
        let rendered = "   0: std::backtrace::Backtrace::force_capture
             at /rustc/abc/library/std/src/backtrace.rs:312:13
   1: localmodelnode_agent::logging::stacktrace
             at ./agent/src/logging.rs:500:5
   2: <tracing_subscriber::fmt::fmt_layer::Layer<S,N,E,W> as tracing_subscriber::layer::Layer<S>>::on_event
   3: localmodelnode_agent::controller::run::{{closure}}::{{closure}}
             at /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tracing-0.1.44/src/macros.rs:905:9
   4: localmodelnode_agent::controller::run::{{closure}}
             at ./agent/src/controller.rs:260:17
   5: main
";
        assert_eq!(
            zap_stack(rendered),
            "localmodelnode_agent::controller::run::{{closure}}\n\t./agent/src/controller.rs:260\nmain"
        );
    }
}
