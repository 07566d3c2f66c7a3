//! `STORAGE_ALLOW_PATTERNS` / `STORAGE_IGNORE_PATTERNS`, with the storage-initializer's
//! semantics: a JSON list or a comma list of Python `fnmatch` patterns matched against the
//! file's path relative to the URI; `*` crosses `/`. For `hf://`, a pattern ending in `/`
//! matches the folder's contents, as in `huggingface_hub`, which KServe hands them to.
//!
//! [`Patterns`] is public so that a caller with patterns of its own (the CLI's `--include` /
//! `--exclude`) filters with this very matcher, through [`super::resolve_filtered`], rather
//! than by setting environment variables.

use super::env::Env;

/// Which listed files to fetch: a file is kept when it matches one of `allow` (or `allow` is
/// empty) and none of `ignore`. Patterns are Python `fnmatch` patterns (`*`, `?`, `[seq]`,
/// `[!seq]`; `*` crosses `/`) matched against the file's path relative to the source URI;
/// for `hf://`, one ending in `/` also matches everything in that folder. A single file (an
/// `http(s)://` URL, an exact S3 key or GCS object) is fetched whatever the patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    /// Patterns a file must match one of; none means every file.
    pub allow: Vec<String>,
    /// Patterns a file must match none of.
    pub ignore: Vec<String>,
}

impl Patterns {
    /// `STORAGE_ALLOW_PATTERNS` and `STORAGE_IGNORE_PATTERNS`: each a JSON list (or a JSON
    /// string), else a comma-separated list; empty items are dropped.
    pub fn from_env(env: &Env) -> Self {
        Self {
            allow: parse_list(env.get("STORAGE_ALLOW_PATTERNS")),
            ignore: parse_list(env.get("STORAGE_IGNORE_PATTERNS")),
        }
    }

    /// Whether `path` passes: it matches an allow pattern (when there are any) and no
    /// ignore pattern, with plain `fnmatch` (KServe's rule for S3 and GCS).
    pub fn keeps(&self, path: &str) -> bool {
        self.filter(path, fnmatch)
    }

    /// [`Patterns::keeps`] as `huggingface_hub` applies patterns: one ending in `/` matches
    /// the folder's contents.
    pub fn keeps_folders(&self, path: &str) -> bool {
        self.filter(path, |p, n| match p.strip_suffix('/') {
            Some(_) => fnmatch(&format!("{p}*"), n),
            None => fnmatch(p, n),
        })
    }

    fn filter(&self, path: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|p| matches(p, path)))
            && !self.ignore.iter().any(|p| matches(p, path))
    }
}

/// A JSON list (or a JSON string), else a comma-separated list.
fn parse_list(value: Option<&str>) -> Vec<String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    let items: Vec<String> = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        Ok(serde_json::Value::String(s)) => vec![s],
        _ => value.split(',').map(str::to_owned).collect(),
    };
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Python's `fnmatch.fnmatchcase`: `*`, `?`, `[seq]`, `[!seq]`; an unclosed `[` is literal.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in practice and
    // never exponential, whatever the pattern.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; `None` when the class is not
/// closed (then `[` is a literal). Returns whether it matched and where the pattern goes on.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && i > first {
            return Some((matched != negate, i + 1));
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let end = p[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        // Expectations from CPython's fnmatch.fnmatchcase.
        let cases = [
            ("*.safetensors", "model-00001.safetensors", true),
            ("*.safetensors", "sub/model.safetensors", true),
            ("*.json", "config.json.bak", false),
            ("config.???", "config.yml", true),
            ("[ab]*", "b.txt", true),
            ("[!ab]*", "b.txt", false),
            ("[a-c]x", "bx", true),
            ("[]]x", "]x", true),
            ("[x", "[x", true),
            ("*a*a*a*a*b", &"a".repeat(60), false),
            ("original/*", "original/consolidated.pth", true),
            ("", "", true),
            ("*", "", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(fnmatch(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn env_lists() {
        let env: Env = [
            ("STORAGE_ALLOW_PATTERNS", r#"["*.safetensors", "*.json"]"#),
            ("STORAGE_IGNORE_PATTERNS", " original/ , *.bin"),
        ]
        .into_iter()
        .collect();
        let p = Patterns::from_env(&env);
        assert_eq!(p.allow, ["*.safetensors", "*.json"]);
        assert_eq!(p.ignore, ["original/", "*.bin"]);
        assert!(p.keeps("config.json"));
        assert!(!p.keeps_folders("original/params.json"));
        assert!(
            p.keeps("original/params.json"),
            "for S3 and GCS, `original/` is a plain fnmatch pattern that matches no file"
        );
        assert!(p.keeps_folders("config.json"));
        assert!(!p.keeps("README.md"));
        let only_folder = Patterns {
            allow: Vec::new(),
            ignore: vec!["original/".into()],
        };
        assert!(
            only_folder.keeps("original/w.pth"),
            "plain fnmatch: `original/` matches no file"
        );
        assert!(!only_folder.keeps_folders("original/w.pth"));
        assert!(Patterns::from_env(&Env::default()).keeps("anything"));
        assert_eq!(parse_list(Some(r#""*.md""#)), ["*.md"]);
    }
}
