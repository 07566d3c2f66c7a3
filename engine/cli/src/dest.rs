//! Where `pull` puts what it fetches. DEST is optional after a list of sources, which clap
//! cannot express (a variadic positional must be followed by a required one), so the sources
//! and DEST arrive as one list and are told apart here: every source is a URI.

use std::path::PathBuf;

use crate::cli::PullArgs;

/// Where a pull goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A model directory, files at their plain paths.
    Dir(PathBuf),
    /// The Hugging Face cache (`HF_HUB_CACHE`…), as `huggingface_hub` lays it out.
    HfCache,
}

impl PullArgs {
    /// Takes DEST off the positionals: `--local-dir`, else a last positional that is not a URI
    /// (has no `://`), else the Hugging Face cache, which takes one hf:// model. The error
    /// says what to give instead.
    pub fn destination(&mut self) -> Result<Destination, String> {
        let last_is_dest =
            self.sources.len() > 1 && self.sources.last().is_some_and(|s| !s.contains("://"));
        match (self.local_dir.take(), last_is_dest) {
            (Some(_), true) => Err("give DEST or --local-dir, not both".into()),
            (Some(dir), false) => Ok(Destination::Dir(dir)),
            (None, true) => Ok(Destination::Dir(
                self.sources.pop().expect("a last positional").into(),
            )),
            (None, false) => match self.sources.as_slice() {
                [one] if one.starts_with("hf://") => Ok(Destination::HfCache),
                [one] => Err(format!(
                    "no destination for `{}`: only hf:// models have a default one (the Hugging Face cache); give DEST or --local-dir DIR",
                    modelpull::redact_str(one)
                )),
                _ => Err("no destination: the Hugging Face cache takes one hf:// model per pull; give DEST or --local-dir DIR, or run one pull per model".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn destination(args: &[&str]) -> (Vec<String>, Result<Destination, String>) {
        let cli = Cli::try_parse_from([&["modelpull", "pull"][..], args].concat()).unwrap();
        let Command::Pull(mut pull) = cli.command else {
            panic!("not a pull")
        };
        let dest = pull.destination();
        (pull.sources, dest)
    }

    #[test]
    fn dest_local_dir_or_the_hf_cache() {
        let dir = |p: &str| -> Result<Destination, String> { Ok(Destination::Dir(p.into())) };
        assert_eq!(
            destination(&["hf://o/m", "out"]),
            (vec!["hf://o/m".into()], dir("out"))
        );
        assert_eq!(
            destination(&["s3://b/a", "gs://b/c", "out"]),
            (vec!["s3://b/a".into(), "gs://b/c".into()], dir("out"))
        );
        assert_eq!(
            destination(&["hf://o/m", "--local-dir", "out"]),
            (vec!["hf://o/m".into()], dir("out"))
        );
        assert_eq!(
            destination(&["hf://o/m:v1"]),
            (vec!["hf://o/m:v1".into()], Ok(Destination::HfCache))
        );
    }

    #[test]
    fn without_one_the_error_names_what_to_give() {
        let err = |args: &[&str]| destination(args).1.unwrap_err();
        assert!(err(&["s3://b/m"]).contains("give DEST or --local-dir DIR"));
        assert!(err(&["https://h/x?sig=secret"]).contains("`https://h/x`"));
        assert!(err(&["hf://o/a", "hf://o/b"]).contains("one hf:// model per pull"));
        assert!(err(&["hf://o/m", "out", "--local-dir", "x"]).contains("not both"));
    }
}
