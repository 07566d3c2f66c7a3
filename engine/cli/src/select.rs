//! Which files of the sources to fetch or list: `--include` / `--exclude` over the
//! environment's `STORAGE_*_PATTERNS`, and `--revision` folded into `hf://` URIs.
//!
//! The flags go through the engine's own matcher ([`Patterns`]), so a pattern means the same
//! on the command line as in KServe's variables. Each flag takes the place of its variable, as
//! flags with an environment fallback do elsewhere in this CLI; a variable whose flag is not
//! given still applies, so an ignore list set for a whole environment keeps working with
//! `--include`. The revision becomes part of the URI rather than a separate option, so that
//! everything downstream (listing, the marker a resumed pull compares) sees one source string.

use modelpull::{Env, Error, Patterns};

use crate::cli::SelectArgs;

/// The patterns a listing is filtered with: the flags where given, else the environment's.
pub fn patterns(args: &SelectArgs, env: &Env) -> Patterns {
    let from_env = Patterns::from_env(env);
    let pick = |flags: &[String], fallback: Vec<String>| {
        if flags.is_empty() {
            fallback
        } else {
            flags.to_vec()
        }
    };
    Patterns {
        allow: pick(&args.include, from_env.allow),
        ignore: pick(&args.exclude, from_env.ignore),
    }
}

/// The sources with `--revision` applied: `hf://ORG/MODEL` becomes `hf://ORG/MODEL:REV`.
/// A source naming another revision, or not an `hf://` URI, is bad input.
pub fn sources(sources: &[String], revision: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(rev) = revision else {
        return Ok(sources.to_vec());
    };
    sources
        .iter()
        .map(|uri| {
            let invalid = |reason: String| Error::InvalidSource {
                input: modelpull::redact_str(uri),
                reason,
            };
            let Some(repo) = uri.strip_prefix("hf://") else {
                return Err(invalid(
                    "--revision applies only to hf:// sources; give the object's exact path instead"
                        .into(),
                ));
            };
            match repo.split_once(':') {
                None => Ok(format!("{uri}:{rev}")),
                Some((_, named)) if named == rev => Ok(uri.clone()),
                Some((_, named)) => Err(invalid(format!(
                    "it names revision `{named}` and --revision `{rev}`; give the revision once"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(include: &[&str], exclude: &[&str]) -> SelectArgs {
        SelectArgs {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            revision: None,
        }
    }

    #[test]
    fn each_flag_takes_the_place_of_its_variable() {
        let env: Env = [
            ("STORAGE_ALLOW_PATTERNS", "*.bin"),
            ("STORAGE_IGNORE_PATTERNS", r#"["original/"]"#),
        ]
        .into_iter()
        .collect();
        assert_eq!(patterns(&args(&[], &[]), &env), Patterns::from_env(&env));
        let p = patterns(&args(&["*.json", "*.safetensors"], &[]), &env);
        assert_eq!(p.allow, ["*.json", "*.safetensors"]);
        assert_eq!(p.ignore, ["original/"], "the ignore variable still applies");
        let p = patterns(&args(&[], &["*.md"]), &env);
        assert_eq!(p.allow, ["*.bin"]);
        assert_eq!(p.ignore, ["*.md"]);
    }

    #[test]
    fn revision_goes_into_hf_uris_once() {
        let srcs = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sources(&srcs(&["hf://a/b", "hf://a/c:v1"]), Some("v1")).unwrap(),
            ["hf://a/b:v1", "hf://a/c:v1"]
        );
        assert_eq!(
            sources(&srcs(&["s3://b/p", "hf://a/b:v2"]), None).unwrap(),
            ["s3://b/p", "hf://a/b:v2"]
        );
        let err = sources(&srcs(&["hf://a/b:v2"]), Some("v1")).unwrap_err();
        assert_eq!(err.exit_code(), modelpull::ExitCode::BadInput);
        assert!(
            err.to_string()
                .contains("names revision `v2` and --revision `v1`"),
            "{err}"
        );
        let err = sources(&srcs(&["s3://b/p"]), Some("v1")).unwrap_err();
        assert_eq!(err.exit_code(), modelpull::ExitCode::BadInput);
        assert!(err.to_string().contains("only to hf:// sources"), "{err}");
    }
}
