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

/// The arguments `file` adds to `run`'s command line: one `--key=value` per value
/// of each key that neither the command line nor the environment set (`matches`).
pub fn arguments(
    run: &Command,
    matches: &ArgMatches,
    file: &Path,
) -> Result<Vec<OsString>, ConfigError> {
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
        yaml_serde::Value::Null => return Ok(Vec::new()),
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
        let pos = key_position(&text, &key);
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
        let values = scalars(&value).map_err(|m| at(pos, format!("{key}: {m}")))?;
        let takes_many = matches!(arg.get_action(), ArgAction::Append);
        if values.len() > 1 && !takes_many {
            return Err(at(pos, format!("{key}: takes one value, not a list")));
        }
        let set_elsewhere = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let args = as_arguments(arg, &key, &values).map_err(|m| at(pos, m))?;
        if !set_elsewhere {
            extra.extend(args);
        }
    }
    Ok(extra)
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
    check.try_get_matches_from(&args).map_err(|e| {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let why = first.strip_prefix("error: ").unwrap_or(first);
        format!("{key}: {why}")
    })?;
    Ok(args)
}

/// Line and column of a top-level `key:` in the file (1, 1 when not found).
fn key_position(text: &str, key: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find(|(_, l)| {
            let l = l.trim_start_matches(['"', '\'']);
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start_matches(['"', '\'']).starts_with(':'))
        })
        .map_or((1, 1), |(i, _)| (i + 1, 1))
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
        let extra = result?;
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
                ":3:1: capture-budget: invalid value 'lots' for '--capture-budget <CAPTURE_BUDGET>'",
            ),
            (
                "format: yaml\n",
                ":1:1: format: invalid value 'yaml' for '--format <FORMAT>'",
            ),
            (
                "listen: [a, b]\n",
                ":1:1: listen: takes one value, not a list",
            ),
            (
                "events-all: maybe\n",
                ":1:1: events-all: expected true or false",
            ),
            ("output:\n", ":1:1: output: has no value"),
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
