//! Renders the Helm chart in deploy/helm/ without Helm, which cannot be installed on these
//! machines. It implements the part of Go's text/template and Helm's functions that the
//! chart uses, with Go's whitespace rules (`{{-` trims every space and newline before the
//! action, `-}}` every one after it), and refuses anything else, so a template that uses more
//! fails here instead of rendering wrongly: actions `define`, `include`, `if`, `with`,
//! `else`, `end` and comments; operands `.Values.…`, `.Release.Name`/`.Namespace`, `.Chart.…`, `.` and
//! string or integer literals; functions `quote`, `nindent`, `toYaml`, `printf "%s…"`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

enum Node {
    Text(String),
    Output(String),
    If(String, Vec<Node>, Vec<Node>),
    With(String, Vec<Node>, Vec<Node>),
}

/// A chart read from its folder: named templates from every file, the other files' trees.
pub struct Chart {
    defines: HashMap<String, Vec<Node>>,
    files: Vec<(String, Vec<Node>)>,
    meta: Value,
    pub values: Value,
}

impl Chart {
    pub fn load(dir: &Path) -> Self {
        let meta: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap())
                .unwrap();
        let values: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap())
                .unwrap();
        let mut defines = HashMap::new();
        let mut files = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let tokens = lex(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut pos = 0;
            let (nodes, _) = parse(&tokens, &mut pos, &mut defines, &name, false);
            assert_eq!(pos, tokens.len(), "{name}: an `end` without a block");
            if !name.starts_with('_') {
                files.push((name, nodes));
            }
        }
        Self {
            defines,
            files,
            meta,
            values,
        }
    }

    /// Every object the chart renders with `overrides` coalesced over its values, as
    /// `helm template` would print them.
    pub fn render(&self, release: &str, namespace: &str, overrides: &Value) -> Vec<Value> {
        let mut values = self.values.clone();
        merge(&mut values, overrides);
        let root = json!({
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace},
            "Chart": {
                "Name": self.meta["name"],
                "Version": self.meta["version"],
                "AppVersion": self.meta["appVersion"],
            },
        });
        let mut objects = Vec::new();
        for (name, nodes) in &self.files {
            let mut out = String::new();
            self.exec(nodes, &root, &root, &mut out);
            for doc in serde_yaml_ng::Deserializer::from_str(&out) {
                let v: Value = serde::Deserialize::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{name} renders invalid YAML: {e}\n{out}"));
                if !v.is_null() {
                    objects.push(v);
                }
            }
        }
        objects
    }

    fn exec(&self, nodes: &[Node], root: &Value, dot: &Value, out: &mut String) {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => out.push_str(&text(&self.pipeline(p, root, dot))),
                Node::If(p, then, otherwise) => {
                    if truthy(&self.pipeline(p, root, dot)) {
                        self.exec(then, root, dot, out);
                    } else {
                        self.exec(otherwise, root, dot, out);
                    }
                }
                Node::With(p, then, otherwise) => {
                    let v = self.pipeline(p, root, dot);
                    if truthy(&v) {
                        self.exec(then, root, &v, out);
                    } else {
                        self.exec(otherwise, root, dot, out);
                    }
                }
            }
        }
    }

    fn pipeline(&self, src: &str, root: &Value, dot: &Value) -> Value {
        let mut acc: Option<Value> = None;
        for stage in src.split('|') {
            let words = words(stage);
            let (f, args) = words.split_first().expect("an empty pipeline stage");
            let mut args: Vec<Value> = args.iter().map(|a| operand(a, root, dot)).collect();
            args.extend(acc.take());
            acc = Some(match f.as_str() {
                "include" => {
                    let name = args[0].as_str().unwrap();
                    let body = self
                        .defines
                        .get(name)
                        .unwrap_or_else(|| panic!("no {name}"));
                    let mut s = String::new();
                    self.exec(body, root, &args[1], &mut s);
                    Value::String(s)
                }
                "quote" => Value::String(format!("{:?}", text(&args[0]))),
                "nindent" => {
                    let pad = " ".repeat(args[0].as_u64().unwrap() as usize);
                    let lines: Vec<String> = text(&args[1])
                        .lines()
                        .map(|l| format!("{pad}{l}"))
                        .collect();
                    Value::String(format!("\n{}", lines.join("\n")))
                }
                "toYaml" => Value::String(
                    serde_yaml_ng::to_string(&args[0])
                        .unwrap()
                        .trim_end()
                        .to_owned(),
                ),
                "printf" => {
                    let mut s = args[0].as_str().unwrap().to_owned();
                    for a in &args[1..] {
                        assert!(s.contains("%s"), "printf supports %s only: {stage}");
                        s = s.replacen("%s", &text(a), 1);
                    }
                    Value::String(s)
                }
                _ if args.is_empty() => operand(f, root, dot),
                _ => panic!("unsupported function in `{stage}`"),
            });
        }
        acc.unwrap()
    }
}

/// Helm's coalescing of user values over the chart's: maps key by key, a null removes the
/// key, anything else replaces.
fn merge(into: &mut Value, over: &Value) {
    match (into, over) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How Go prints a value: strings bare, numbers and booleans as written, nothing for nil.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        _ => panic!("a map or list printed without toYaml: {v}"),
    }
}

fn operand(word: &str, root: &Value, dot: &Value) -> Value {
    if let Some(s) = word.strip_prefix('"') {
        return Value::String(s.strip_suffix('"').unwrap().to_owned());
    }
    if let Ok(n) = word.parse::<u64>() {
        return json!(n);
    }
    if word == "." {
        return dot.clone();
    }
    let path = word
        .strip_prefix('.')
        .unwrap_or_else(|| panic!("unsupported operand {word}"));
    // Fields are looked up on the dot; the chart's own fields (.Values, .Release, .Chart)
    // are only used where the dot is the root.
    let mut v = dot;
    for key in path.split('.') {
        v = v.get(key).unwrap_or(&Value::Null);
    }
    if v.is_null() && path.split('.').count() > 1 && !std::ptr::eq(dot, root) {
        panic!("{word} is looked up on a `with` value");
    }
    v.clone()
}

fn words(stage: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = stage.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            let mut w = String::from(chars.next().unwrap());
            for c in chars.by_ref() {
                w.push(c);
                if c == '"' {
                    break;
                }
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    out
}

enum Token {
    Text(String),
    Action(String),
}

/// Splits a template into text and actions, applying the trim markers to the text around them.
fn lex(src: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or("an unclosed action")?;
        let mut inner = &after[..close];
        if let Some(s) = inner.strip_prefix("- ") {
            before = before.trim_end();
            inner = s;
        }
        trim_next = false;
        if let Some(s) = inner.strip_suffix(" -") {
            trim_next = true;
            inner = s;
        }
        tokens.push(Token::Text(before.to_owned()));
        tokens.push(Token::Action(inner.trim().to_owned()));
        rest = &after[close + 2..];
    }
    tokens.push(Token::Text(if trim_next {
        rest.trim_start().to_owned()
    } else {
        rest.to_owned()
    }));
    Ok(tokens)
}

/// Nodes up to the `end` or `else` that closes the block (and whether it was `else`), or to
/// the end of the file.
fn parse(
    tokens: &[Token],
    pos: &mut usize,
    defines: &mut HashMap<String, Vec<Node>>,
    file: &str,
    in_block: bool,
) -> (Vec<Node>, bool) {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let token = &tokens[*pos];
        *pos += 1;
        let action = match token {
            Token::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Token::Action(a) => a,
        };
        if action.starts_with("/*") {
            assert!(action.ends_with("*/"), "{file}: {action}");
            continue;
        }
        let (keyword, rest) = action.split_once(' ').unwrap_or((action, ""));
        match keyword {
            "end" | "else" => {
                assert!(in_block, "{file}: an `{keyword}` without a block");
                assert!(rest.is_empty(), "{file}: `{action}` is not supported here");
                return (nodes, keyword == "else");
            }
            "define" => {
                let name = rest.trim().trim_matches('"').to_owned();
                let (body, has_else) = parse(tokens, pos, defines, file, true);
                assert!(!has_else, "{file}: `else` in a define");
                defines.insert(name, body);
            }
            "if" | "with" => {
                let (then, has_else) = parse(tokens, pos, defines, file, true);
                let otherwise = if has_else {
                    let (otherwise, again) = parse(tokens, pos, defines, file, true);
                    assert!(!again, "{file}: a second `else`");
                    otherwise
                } else {
                    Vec::new()
                };
                let p = rest.to_owned();
                nodes.push(if keyword == "if" {
                    Node::If(p, then, otherwise)
                } else {
                    Node::With(p, then, otherwise)
                });
            }
            "range" | "template" | "block" => {
                panic!("{file}: `{keyword}` is not supported here")
            }
            _ => nodes.push(Node::Output(action.clone())),
        }
    }
    assert!(!in_block, "{file}: a block without `end`");
    (nodes, false)
}

/// Every `.Values.…` path the templates read.
pub fn value_paths(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir.join("templates")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let path: String = text[i + 8..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            paths.push(path);
        }
    }
    paths.sort();
    paths.dedup();
    paths
}
