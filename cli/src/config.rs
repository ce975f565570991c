//! `urlfleet.toml`: a configuration file whose keys are the long flags of the command run, so that
//! the clap definitions are the one description of every setting (as lychee's one struct for both).
//! The file's settings become command-line arguments placed before the user's own: a flag given on
//! the command line or in the environment wins, a default loses. Keys at the top level apply to any
//! command that has the flag; a `[check]`, `[submit]`, … table applies to that command only and wins
//! over the top level; `[hosts."example.com"]` tables (`concurrency`, `interval`) become
//! `--host-policy` flags. A key no command knows is an error naming it.
//!
//! ```toml
//! concurrency = 64
//! timeout = "10s"
//! allow = ["127.0.0.0/8"]
//! format = "json"
//!
//! [hosts."www.example.com"]
//! concurrency = 4
//! interval = "250ms"
//! ```

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap::parser::ValueSource;

use crate::Cli;

/// The file looked for in the working directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "urlfleet.toml";

/// `argv` with the configuration file's settings inserted after the command's name.
pub fn argv_with_config(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let root = Cli::command();
    // An argument list clap refuses is left for clap to explain.
    let Ok(matches) = root.clone().try_get_matches_from(&argv) else { return Ok(argv) };
    let path = match matches.get_one::<PathBuf>("config") {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(DEFAULT_FILE);
            if !p.exists() {
                return Ok(argv);
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let Some((name, sub_matches)) = matches.subcommand() else { return Ok(argv) };
    let sub = root.find_subcommand(name).expect("a matched subcommand exists").clone();
    let commands: Vec<String> = root.get_subcommands().map(|c| c.get_name().to_string()).collect();

    // Top-level keys first, then the command's own table, which wins.
    let mut settings: Vec<(String, toml::Value)> = Vec::new();
    for (key, value) in &table {
        if commands.contains(key) {
            continue;
        }
        settings.push((key.clone(), value.clone()));
    }
    if let Some(own) = table.get(name) {
        let own = own.as_table().with_context(|| format!("{}: [{name}] must be a table", path.display()))?;
        for (key, value) in own {
            settings.retain(|(k, _)| normalize(k) != normalize(key));
            settings.push((key.clone(), value.clone()));
        }
    }

    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in settings {
        if key == "hosts" {
            if sub.get_arguments().any(|a| a.get_long() == Some("host-policy")) {
                extra.extend(host_policies(&value).with_context(|| format!("{}: [hosts]", path.display()))?);
            }
            continue;
        }
        let long = normalize(&key);
        let arg = sub.get_arguments().find(|a| a.get_long() == Some(long.as_str()));
        let Some(arg) = arg else {
            let known = root.get_subcommands().any(|c| c.get_arguments().any(|a| a.get_long() == Some(long.as_str())))
                || root.get_arguments().any(|a| a.get_long() == Some(long.as_str()));
            if !known {
                bail!("{}: unknown key {key:?} (the keys are the commands' long flags)", path.display());
            }
            continue;
        };
        if long == "config" {
            bail!("{}: a configuration file cannot name another", path.display());
        }
        let given = matches!(
            sub_matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match &value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) if !takes_value => extra.push(format!("--{long}").into()),
                toml::Value::Boolean(false) if !takes_value => {}
                toml::Value::String(s) => extra.push(format!("--{long}={s}").into()),
                toml::Value::Integer(n) => extra.push(format!("--{long}={n}").into()),
                toml::Value::Float(n) => extra.push(format!("--{long}={n}").into()),
                toml::Value::Boolean(b) => extra.push(format!("--{long}={b}").into()),
                other => bail!("{}: {key} cannot be {}", path.display(), other.type_str()),
            }
        }
    }
    if extra.is_empty() {
        return Ok(argv);
    }
    // After the command's name: the first argument equal to it that is not a global option's value.
    let at = argv.iter().position(|a| a.to_str() == Some(name)).map_or(argv.len(), |i| i + 1);
    let mut out = argv[..at].to_vec();
    out.extend(extra);
    out.extend_from_slice(&argv[at..]);
    Ok(out)
}

/// A key as a long flag: `no_store` and `no-store` are both `no-store`.
fn normalize(key: &str) -> String {
    key.replace('_', "-")
}

/// `[hosts."example.com"] concurrency = 4, interval = "250ms"` as `--host-policy` flags.
fn host_policies(value: &toml::Value) -> Result<Vec<OsString>> {
    let hosts = value.as_table().context("must be a table of hosts")?;
    let mut out = Vec::new();
    for (host, policy) in hosts {
        let policy = policy.as_table().with_context(|| format!("{host}: must be a table"))?;
        let mut concurrency = String::new();
        let mut interval = String::new();
        for (k, v) in policy {
            match (normalize(k).as_str(), v) {
                ("concurrency", toml::Value::Integer(n)) => concurrency = n.to_string(),
                ("interval", toml::Value::String(s)) => interval = s.clone(),
                ("interval", toml::Value::Integer(ms)) => interval = format!("{ms}ms"),
                _ => bail!("{host}: unknown or mistyped key {k:?} (concurrency: a number, interval: \"250ms\")"),
            }
        }
        out.push(OsString::from("--host-policy"));
        out.push(OsString::from(format!("{host}={concurrency}/{interval}")));
    }
    Ok(out)
}
