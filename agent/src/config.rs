//! The agent's config file (`mtls-auditor run --config FILE`).
//!
//! A flat YAML mapping whose keys are the long names of `run`'s flags (and the
//! global `log-level` / `log-format`), e.g. `capture-budget: 8192` or
//! `policy: [/etc/mtls-auditor/policy]`. What the command line or an
//! `MTLS_AUDITOR_*` variable sets wins over the file; the file wins over the
//! built-in default. `examples/mtls-auditor.yaml` lists every key with its default.
//!
//! The file's values become extra command-line arguments, checked one by one with
//! the flag's own parser, so the file accepts exactly what the flags accept and a
//! bad value is reported at its line in the file.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, ArgMatches, Command, parser::ValueSource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}")]
    Read(crate::input::InputError),
    #[error("config file {}:{line}:{column}: {message}", file.display())]
    At {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Keys a config file may not set: they say where the file is, or are actions.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// The keys a config file accepts for `run` (a built command, so that global
/// flags are among its arguments).
pub fn keys(run: &Command) -> Vec<&Arg> {
    run.get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_IN_FILE.contains(&l)))
        .collect()
}

/// What a config file adds to `run`'s command line.
#[derive(Debug, Default)]
pub struct FileArguments {
    /// One `--key=value` per value of each key that neither the command line nor
    /// the environment set.
    pub args: Vec<OsString>,
    /// What to log once logging is set up (e.g. an empty file).
    pub warnings: Vec<String>,
}

/// The arguments `file` adds to `run`'s command line (see [`FileArguments`]);
/// `matches` says what the command line and the environment set.
pub fn arguments(
    run: &Command,
    matches: &ArgMatches,
    file: &Path,
) -> Result<FileArguments, ConfigError> {
    let text =
        crate::input::read_text(file, crate::input::MAX_TEXT_FILE).map_err(ConfigError::Read)?;
    let at = |(line, column): (usize, usize), message: String| ConfigError::At {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let doc: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| {
        let pos = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        at(pos, e.to_string())
    })?;
    let map = match doc {
        yaml_serde::Value::Null => {
            return Ok(FileArguments {
                args: Vec::new(),
                warnings: vec![format!(
                    "config file {} has no settings (it is empty or only comments): every setting keeps its default",
                    file.display()
                )],
            });
        }
        yaml_serde::Value::Mapping(m) => m,
        _ => {
            return Err(at(
                (1, 1),
                "expected a mapping of flag names to values, e.g. `capture-budget: 8192`".into(),
            ));
        }
    };
    let keys = keys(run);
    let mut extra = Vec::new();
    for (key, value) in map {
        let yaml_serde::Value::String(key) = key else {
            return Err(at((1, 1), format!("key {key:?} is not a flag name")));
        };
        let (pos, value_pos) = key_position(&text, &key);
        let Some(arg) = keys.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            let allowed: Vec<_> = keys.iter().filter_map(|a| a.get_long()).collect();
            return Err(at(
                pos,
                format!(
                    "unknown key `{key}`; the keys are the long names of `run`'s flags: {}",
                    allowed.join(", ")
                ),
            ));
        };
        let values = scalars(&value).map_err(|m| at(value_pos, format!("{key}: {m}")))?;
        let takes_many = matches!(arg.get_action(), ArgAction::Append);
        if values.len() > 1 && !takes_many {
            return Err(at(value_pos, format!("{key}: takes one value, not a list")));
        }
        let set_elsewhere = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let args = as_arguments(arg, &key, &values).map_err(|m| at(value_pos, m))?;
        if !set_elsewhere {
            extra.extend(args);
        }
    }
    Ok(FileArguments {
        args: extra,
        warnings: Vec::new(),
    })
}

/// A key's value as strings: a scalar, or a list of scalars.
fn scalars(value: &yaml_serde::Value) -> Result<Vec<String>, String> {
    fn scalar(v: &yaml_serde::Value) -> Result<String, String> {
        match v {
            yaml_serde::Value::String(s) => Ok(s.clone()),
            yaml_serde::Value::Number(n) => Ok(n.to_string()),
            yaml_serde::Value::Bool(b) => Ok(b.to_string()),
            yaml_serde::Value::Null => Err("has no value".into()),
            _ => Err("expected a string, a number, a boolean or a list of them".into()),
        }
    }
    match value {
        yaml_serde::Value::Sequence(items) => items.iter().map(scalar).collect(),
        v => scalar(v).map(|s| vec![s]),
    }
}

/// The command-line arguments for `values` of `arg`, each checked with the flag's
/// own parser (without its environment variable, which was looked at already).
fn as_arguments(arg: &Arg, key: &str, values: &[String]) -> Result<Vec<OsString>, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match values {
            [v] if v == "true" => Ok(vec![format!("--{key}").into()]),
            [v] if v == "false" => Ok(Vec::new()),
            _ => Err(format!("{key}: expected true or false")),
        };
    }
    let check = Command::new("config")
        .no_binary_name(true)
        .arg(arg.clone().env(None).required(false));
    let args: Vec<OsString> = values
        .iter()
        .map(|v| format!("--{key}={v}").into())
        .collect();
    check
        .try_get_matches_from(&args)
        .map_err(|e| match BadValue::of(&e) {
            Some(bad) => format!("{key} {}: {}", crate::text::escape(&bad.value), bad.why),
            None => {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let why = first.strip_prefix("error: ").unwrap_or(first);
                format!("{key}: {why}")
            }
        })?;
    Ok(args)
}

/// Line and column of a top-level `key:` in the file, and of its value (the first
/// character after the colon, or of the next line for a block value); (1, 1) when
/// not found.
fn key_position(text: &str, key: &str) -> ((usize, usize), (usize, usize)) {
    let lines: Vec<&str> = text.lines().collect();
    let Some((i, rest)) = lines.iter().enumerate().find_map(|(i, l)| {
        let l = l.trim_start_matches(['"', '\'']);
        let rest = l.strip_prefix(key)?.trim_start_matches(['"', '\'']);
        rest.strip_prefix(':').map(|r| (i, r))
    }) else {
        return ((1, 1), (1, 1));
    };
    let line = lines[i];
    let key_pos = (i + 1, 1);
    let column_of = |l: &str, tail: &str| l[..l.len() - tail.len()].chars().count() + 1;
    let value = rest.trim_start();
    if !value.is_empty() && !value.starts_with('#') {
        return (key_pos, (i + 1, column_of(line, value)));
    }
    // A block value: the next line that is neither blank nor a comment.
    let next = lines.iter().enumerate().skip(i + 1).find_map(|(j, l)| {
        let t = l.trim_start();
        (!t.is_empty() && !t.starts_with('#')).then(|| (j + 1, column_of(l, t)))
    });
    (key_pos, next.unwrap_or(key_pos))
}

/// A value that a flag's parser refused: which flag, what value, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// `--ring-bytes`
    pub flag: String,
    pub value: String,
    pub why: String,
}

impl BadValue {
    /// The refused value of a clap error about a value; `None` for other errors
    /// (unknown flags, missing values...).
    pub fn of(e: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let string = |k| match e.get(k) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let flag = string(ContextKind::InvalidArg)?
            .split_whitespace()
            .next()?
            .to_owned();
        let value = string(ContextKind::InvalidValue)?;
        let why = match e.kind() {
            ErrorKind::ValueValidation => std::error::Error::source(e)
                .map_or_else(|| "invalid value".to_owned(), ToString::to_string),
            ErrorKind::InvalidValue => match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => format!("expected one of {}", v.join(", ")),
                _ => "invalid value".to_owned(),
            },
            _ => return None,
        };
        Some(Self { flag, value, why })
    }
}

/// A clap error about a flag's value, said as where the value came from: the
/// command line (`--listen 12: ...`) or its `MTLS_AUDITOR_*` variable
/// (`MTLS_AUDITOR_LISTEN=12 (--listen): ...`). `None` for other errors, which clap
/// reports itself.
pub fn describe_value_error(cmd: &Command, e: &clap::Error, argv: &[OsString]) -> Option<String> {
    let bad = BadValue::of(e)?;
    let long = bad.flag.strip_prefix("--")?;
    let arg = find_arg(cmd, long)?;
    let short = arg.get_short().map(|c| format!("-{c}"));
    let on_command_line = argv.iter().filter_map(|a| a.to_str()).any(|a| {
        a == bad.flag
            || a.strip_prefix(bad.flag.as_str())
                .is_some_and(|r| r.starts_with('='))
            || short
                .as_deref()
                .is_some_and(|s| a.starts_with(s) && !a.starts_with("--"))
    });
    let value = crate::text::escape(&bad.value);
    let env = arg
        .get_env()
        .filter(|name| std::env::var_os(name).is_some());
    Some(match env {
        Some(name) if !on_command_line => format!(
            "{}={value} ({}): {}",
            name.to_string_lossy(),
            bad.flag,
            bad.why
        ),
        _ => format!("{} {value}: {}", bad.flag, bad.why),
    })
}

/// The argument of `cmd` or of one of its subcommands whose long name is `long`.
fn find_arg<'a>(cmd: &'a Command, long: &str) -> Option<&'a Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .or_else(|| cmd.get_subcommands().find_map(|c| find_arg(c, long)))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;
    use crate::cli::{Cli, Command as Sub, RunArgs};

    fn run_with(argv: &[&str], yaml: &str) -> Result<RunArgs, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "mtls-auditor-config-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("agent.yaml");
        std::fs::write(&file, yaml).expect("write config");
        let mut cmd = Cli::command();
        cmd.build();
        let m = cmd.clone().try_get_matches_from(argv).expect("argv parses");
        let run = cmd.find_subcommand("run").expect("run");
        let result = arguments(run, m.subcommand_matches("run").expect("run"), &file);
        std::fs::remove_dir_all(&dir).ok();
        let extra = result?.args;
        let full: Vec<OsString> = argv.iter().map(OsString::from).chain(extra).collect();
        let cli = Cli::from_arg_matches(&Cli::command().try_get_matches_from(full).expect("full"))
            .expect("cli");
        match cli.command {
            Sub::Run(r) => Ok(r),
            _ => unreachable!("the test runs `run`"),
        }
    }

    #[test]
    fn file_values_apply_and_the_command_line_wins() {
        let r = run_with(
            &["mtls-auditor", "run", "--listen", "127.0.0.1:1"],
            "capture-budget: 4096\nlisten: 0.0.0.0:9\npolicy: [/a, /b]\nevents-all: true\nlog-level: debug\n",
        )
        .expect("valid file");
        assert_eq!(r.capture_budget, 4096);
        assert_eq!(r.listen, "127.0.0.1:1");
        assert_eq!(r.policy, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(r.events_all);
    }

    #[test]
    fn bad_files_name_line_column_and_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "listen: 127.0.0.1:1\ncapture-bugdet: 4096\n",
                ":2:1: unknown key `capture-bugdet`; the keys are the long names of `run`'s flags: capture-budget,",
            ),
            (
                "\n\ncapture-budget: lots\n",
                ":3:17: capture-budget lots: invalid digit found in string",
            ),
            (
                "format: yaml\n",
                ":1:9: format yaml: expected one of json, table",
            ),
            (
                "listen: [a, b]\n",
                ":1:9: listen: takes one value, not a list",
            ),
            (
                "events-all: maybe\n",
                ":1:13: events-all: expected true or false",
            ),
            ("output:\n", ":1:1: output: has no value"),
            (
                "policy:\n  # two\n  - /a\nring-bytes: [1000]\n",
                ":4:13: ring-bytes 1000: not a power of two of at least 4096",
            ),
            (
                "policy:\n\n  - /a\n  - [x]\n",
                ":3:3: policy: expected a string, a number, a boolean or a list of them",
            ),
            (
                "- capture-budget\n",
                ":1:1: expected a mapping of flag names",
            ),
            ("listen: [unclosed\n", "did not find expected"),
        ];
        for (yaml, want) in cases {
            let err = run_with(&["mtls-auditor", "run"], yaml)
                .expect_err(yaml)
                .to_string();
            assert!(err.contains("agent.yaml"), "{err}");
            assert!(err.contains(want), "for {yaml:?}: {err}\n  wants {want}");
        }
    }

    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mtls-auditor.yaml");
        let text = std::fs::read_to_string(example).expect("examples/mtls-auditor.yaml");
        let mut cmd = Cli::command();
        cmd.build();
        let run = cmd.find_subcommand("run").expect("run");
        for arg in keys(run) {
            let long = arg.get_long().expect("long");
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{long}:"))),
                "examples/mtls-auditor.yaml does not list `{long}`"
            );
        }
        // The file sets the defaults, so it changes nothing.
        let with_file = run_with(&["mtls-auditor", "run"], &text).expect("the example loads");
        let without = run_with(&["mtls-auditor", "run"], "").expect("empty file");
        assert_eq!(format!("{with_file:?}"), format!("{without:?}"));
    }
}
