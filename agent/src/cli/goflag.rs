//! Go's `flag` syntax in front of clap, so that every command line KServe's agent takes means
//! the same here (its DaemonSet, Helm values and scripts were written for Go's parser):
//!
//! - one dash or two: `-zap-devel` is `--zap-devel`;
//! - a value after `=` or as the next argument, whatever it starts with (`-zap-log-level -1`
//!   gives the value `-1`, which Go then refuses);
//! - a boolean takes no separate value: `-leader-elect` is true, `-leader-elect=false` false,
//!   with Go's spellings (`1`, `t`, `T`, `TRUE`, `true`, `True`, and their negations);
//! - parsing stops at the first argument that is not a flag, or after `--`: Go leaves the rest
//!   in `flag.Args()`, which KServe's agent never reads (so `-leader-elect false` is *true*, and
//!   what follows `false` is ignored). They are returned so that the caller can say so.
//!
//! Only the long names the command knows are rewritten (to `--name=value`, which clap reads
//! without guessing); anything else goes to clap as it is, so `-h` and `-V` keep working and
//! unknown flags are refused with clap's message and exit code 2, as Go's `flag` exits 2.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use clap::{ArgAction, Command};

/// What a long flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Go `bool` flag: no separate value.
    Bool,
    /// A value, after `=` or as the next argument.
    Value,
    /// Neither (`--help`, `--version`).
    Switch,
}

/// The long flags of a clap command and what each takes.
#[derive(Debug, Clone)]
pub struct Flags(HashMap<String, Kind>);

impl Flags {
    /// The flags of `cmd`, which must have been built (`Command::build`) for `--help` and
    /// `--version` to be among them. A flag whose values are `bool` is a Go boolean.
    pub fn of(cmd: &Command) -> Self {
        let kinds = cmd
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?;
                let kind = if !arg.get_action().takes_values() {
                    Kind::Switch
                } else if matches!(arg.get_action(), ArgAction::Set)
                    && arg.get_value_parser().type_id() == std::any::TypeId::of::<bool>()
                {
                    Kind::Bool
                } else {
                    Kind::Value
                };
                Some((long.to_owned(), kind))
            })
            .collect();
        Self(kinds)
    }
}

/// A command line that Go's `flag` would refuse; it exits 2 for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoFlagError {
    #[error("bad flag syntax: {0}")]
    Syntax(String),
    #[error(
        "invalid boolean value \"{value}\" for -{flag}: use -{flag}, -{flag}=true or -{flag}=false (also 1, t, T, TRUE, True and 0, f, F, FALSE, False)"
    )]
    Bool { flag: String, value: String },
    #[error("flag needs an argument: -{0}")]
    NeedsArgument(String),
}

/// A command line in clap's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// The program name, then every flag Go would parse.
    pub args: Vec<OsString>,
    /// What Go would leave unparsed: from the first argument that is not a flag (`--`
    /// excluded).
    pub ignored: Vec<OsString>,
}

/// Rewrites `argv` (the program name first) from Go's flag syntax to clap's.
pub fn normalise(
    argv: impl IntoIterator<Item = impl Into<OsString>>,
    flags: &Flags,
) -> Result<Normalised, GoFlagError> {
    let mut rest = argv.into_iter().map(Into::into);
    let mut args: Vec<OsString> = rest.next().into_iter().collect();
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            // Not a flag (`-` alone neither): Go stops here.
            let ignored = std::iter::once(arg).chain(rest).collect();
            return Ok(Normalised { args, ignored });
        }
        if bytes == b"--" {
            return Ok(Normalised {
                args,
                ignored: rest.collect(),
            });
        }
        let body = if bytes[1] == b'-' {
            &bytes[2..]
        } else {
            &bytes[1..]
        };
        if body.first().is_some_and(|b| *b == b'-' || *b == b'=') {
            return Err(GoFlagError::Syntax(arg.to_string_lossy().into_owned()));
        }
        let (name, value) = match body.iter().position(|b| *b == b'=') {
            Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
            None => (body, None),
        };
        let known = std::str::from_utf8(name)
            .ok()
            .and_then(|n| flags.0.get(n).map(|kind| (n, *kind)));
        let Some((name, kind)) = known else {
            // A short flag of clap's (`-h`, `-V`) or an unknown one, which clap refuses.
            args.push(arg);
            args.extend(rest);
            return Ok(Normalised {
                args,
                ignored: Vec::new(),
            });
        };
        let mut long = OsString::from(format!("--{name}"));
        match (kind, value) {
            (Kind::Switch, None) => {}
            (Kind::Switch | Kind::Value, Some(value)) => {
                long.push("=");
                long.push(OsStr::from_bytes(value));
            }
            (Kind::Bool, value) => {
                let value = value.map_or(Ok(true), |v| {
                    parse_bool(v).ok_or_else(|| GoFlagError::Bool {
                        flag: name.to_owned(),
                        value: String::from_utf8_lossy(v).into_owned(),
                    })
                })?;
                long.push(if value { "=true" } else { "=false" });
            }
            (Kind::Value, None) => {
                let value = rest
                    .next()
                    .ok_or_else(|| GoFlagError::NeedsArgument(name.to_owned()))?;
                let mut joined = long.into_vec();
                joined.push(b'=');
                joined.extend_from_slice(value.as_bytes());
                long = OsString::from_vec(joined);
            }
        }
        args.push(long);
    }
    Ok(Normalised {
        args,
        ignored: Vec::new(),
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Some(true),
        b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn flags() -> Flags {
        let mut cmd = Command::new("agent")
            .version("1")
            .arg(
                Arg::new("leader-elect")
                    .long("leader-elect")
                    .action(ArgAction::Set)
                    .value_parser(clap::value_parser!(bool)),
            )
            .arg(Arg::new("tls-min-version").long("tls-min-version"))
            .arg(Arg::new("zap-log-level").long("zap-log-level"));
        cmd.build();
        Flags::of(&cmd)
    }

    fn norm(argv: &[&str]) -> Result<(Vec<String>, Vec<String>), GoFlagError> {
        let n = normalise(
            std::iter::once("agent").chain(argv.iter().copied()),
            &flags(),
        )?;
        let text = |v: Vec<OsString>| v.into_iter().map(|a| a.into_string().unwrap()).collect();
        let mut args: Vec<String> = text(n.args);
        args.remove(0);
        Ok((args, text(n.ignored)))
    }

    fn args(argv: &[&str]) -> Vec<String> {
        let (args, ignored) = norm(argv).unwrap();
        assert!(ignored.is_empty(), "{ignored:?}");
        args
    }

    #[test]
    fn kinds_come_from_the_command() {
        let f = flags();
        assert_eq!(f.0["leader-elect"], Kind::Bool);
        assert_eq!(f.0["tls-min-version"], Kind::Value);
        assert_eq!(f.0["help"], Kind::Switch);
        assert_eq!(f.0["version"], Kind::Switch);
    }

    #[test]
    fn values_in_every_form_go_takes() {
        let want = ["--tls-min-version=VersionTLS13"];
        for form in [
            &["-tls-min-version", "VersionTLS13"][..],
            &["-tls-min-version=VersionTLS13"],
            &["--tls-min-version", "VersionTLS13"],
            &["--tls-min-version=VersionTLS13"],
        ] {
            assert_eq!(args(form), want, "{form:?}");
        }
        // The next argument is the value, whatever it looks like.
        assert_eq!(args(&["-zap-log-level", "-1"]), ["--zap-log-level=-1"]);
        assert_eq!(args(&["--tls-min-version="]), ["--tls-min-version="]);
        assert_eq!(args(&["-tls-min-version=a=b"]), ["--tls-min-version=a=b"]);
    }

    #[test]
    fn booleans_as_go_takes_them() {
        for (form, want) in [
            ("-leader-elect", "--leader-elect=true"),
            ("--leader-elect", "--leader-elect=true"),
            ("-leader-elect=false", "--leader-elect=false"),
            ("--leader-elect=False", "--leader-elect=false"),
            ("-leader-elect=0", "--leader-elect=false"),
            ("-leader-elect=T", "--leader-elect=true"),
            ("-leader-elect=TRUE", "--leader-elect=true"),
        ] {
            assert_eq!(args(&[form]), [want], "{form}");
        }
        let err = norm(&["-leader-elect=yes"]).unwrap_err();
        assert_eq!(
            err,
            GoFlagError::Bool {
                flag: "leader-elect".into(),
                value: "yes".into()
            }
        );
        assert!(err.to_string().contains("-leader-elect=false"), "{err}");
    }

    #[test]
    fn a_boolean_takes_no_separate_value_so_parsing_stops_there() {
        let (args, ignored) = norm(&["-leader-elect", "false", "-zap-log-level", "debug"]).unwrap();
        assert_eq!(args, ["--leader-elect=true"]);
        assert_eq!(ignored, ["false", "-zap-log-level", "debug"]);
    }

    #[test]
    fn parsing_stops_at_a_non_flag_and_after_double_dash() {
        let (args, ignored) = norm(&["-zap-log-level=info", "--", "-leader-elect"]).unwrap();
        assert_eq!(args, ["--zap-log-level=info"]);
        assert_eq!(ignored, ["-leader-elect"]);
        let (args, ignored) = norm(&["-", "-leader-elect"]).unwrap();
        assert!(args.is_empty());
        assert_eq!(ignored, ["-", "-leader-elect"]);
    }

    #[test]
    fn short_and_unknown_flags_go_to_clap_as_they_are() {
        assert_eq!(args(&["-h"]), ["-h"]);
        assert_eq!(args(&["-help"]), ["--help"]);
        assert_eq!(args(&["-V"]), ["-V"]);
        assert_eq!(
            args(&["-leader-elect", "-nope", "-leader-elect=false"]),
            ["--leader-elect=true", "-nope", "-leader-elect=false"]
        );
    }

    #[test]
    fn what_go_refuses() {
        assert_eq!(
            norm(&["---leader-elect"]),
            Err(GoFlagError::Syntax("---leader-elect".into()))
        );
        assert_eq!(norm(&["-=x"]), Err(GoFlagError::Syntax("-=x".into())));
        assert_eq!(
            norm(&["-tls-min-version"]),
            Err(GoFlagError::NeedsArgument("tls-min-version".into()))
        );
    }

    #[test]
    fn values_that_are_not_utf8_pass_through() {
        let value = OsString::from_vec(b"/models/\xff".to_vec());
        let n = normalise(
            [OsString::from("agent"), "-tls-min-version".into(), value],
            &flags(),
        )
        .unwrap();
        assert_eq!(n.args[1].as_bytes(), b"--tls-min-version=/models/\xff");
    }
}
