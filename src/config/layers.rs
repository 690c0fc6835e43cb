//! The layers of the configuration, bottom to top: the defaults (the clap `default_value`s of
//! `options.rs`), the TOML file, and the command line with its `EPPMUX_*` variables. They are
//! merged key by key as TOML tables by code that knows no option by name, so that adding a field
//! to `options.rs` is all an option takes. Also found here: the file's unknown keys (refused with
//! their line), and where each value came from, for error messages.
//!
//! Why not a layered-configuration crate (figment, config): both would bring a second TOML parser
//! and their own idea of environment variables, while clap already reads the flags and variables
//! (with `--help` showing both) and serde already reads the file; what remains is a merge of two
//! tables and a lookup of where a key came from, a page of code.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use toml::{Table, Value};

use super::options::{Options, ProcessOptions, RegistryOptions};
use super::ConfigError;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(String),
    Env(String),
    /// Set by the program itself (the demo, tests).
    Caller,
    File {
        path: PathBuf,
        line: Option<usize>,
    },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
            Origin::Env(var) => write!(f, "variable {var}"),
            Origin::Caller => f.write_str("set by the program"),
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// What the command line (or a caller) set explicitly, with where each key came from.
#[derive(Debug, Clone, Default)]
pub struct Explicit {
    pub options: Options,
    origins: HashMap<String, Origin>,
}

impl Explicit {
    /// From a clap parse of `options`: keeps the values given by a flag or a variable only, since
    /// the defaults have their own layer under the file.
    pub fn from_matches(options: &Options, matches: &ArgMatches) -> Result<Explicit, ConfigError> {
        let command = options_command();
        let mut table = to_table(options)?;
        let mut origins = HashMap::new();
        table.retain(|key: &str, _| {
            let arg = command.get_arguments().find(|a| a.get_id() == key);
            let origin = match (matches.value_source(key), arg) {
                (Some(ValueSource::CommandLine), Some(arg)) => {
                    Origin::Flag(arg.get_long().unwrap_or(key).to_string())
                }
                (Some(ValueSource::EnvVariable), Some(arg)) => Origin::Env(
                    arg.get_env()
                        .map_or_else(|| key.to_string(), |v| v.to_string_lossy().into_owned()),
                ),
                _ => return false,
            };
            origins.insert(key.to_string(), origin);
            true
        });
        Ok(Explicit {
            options: from_table(table, &Origin::Caller)?,
            origins,
        })
    }

    /// Everything set in `options` counts as set by the program.
    pub fn from_caller(options: Options) -> Explicit {
        Explicit {
            options,
            origins: HashMap::new(),
        }
    }

    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Caller)
    }
}

/// The options in effect, and where each came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Every key given anywhere, defaults included: what `--print-config` shows.
    pub options: Options,
    pub(super) origins: Origins,
}

/// Where the values of a [`Resolved`] came from.
#[derive(Debug, Clone, Default)]
pub(super) struct Origins {
    explicit: Explicit,
    /// Keys the explicit layer set.
    explicit_keys: HashSet<String>,
    file: Option<FileLines>,
}

/// The file, and the line of every key in it, by path (`["registry", "1", "queue_wait"]`).
#[derive(Debug, Clone, Default)]
struct FileLines {
    path: PathBuf,
    lines: HashMap<Vec<String>, usize>,
}

impl Origins {
    /// Where the value at `path` came from (`path` as in the file: `["account", "0", "clid"]`).
    pub(super) fn of(&self, path: &[String]) -> Origin {
        if let [key] = path {
            if self.explicit_keys.contains(key) {
                return self.explicit.origin(key);
            }
        }
        match &self.file {
            Some(file) if file.lines.contains_key(path) => Origin::File {
                path: file.path.clone(),
                line: file.lines.get(path).copied(),
            },
            _ => Origin::Default,
        }
    }

    /// The directory relative paths in the file are relative to, if `path` came from the file.
    pub(super) fn base_dir(&self, path: &[String]) -> Option<&Path> {
        match self.of(path) {
            Origin::File { .. } => self.file.as_ref().and_then(|f| f.path.parent()),
            _ => None,
        }
    }
}

/// Stacks the defaults, the file (if any) and the explicit values.
pub fn resolve(explicit: &Explicit, file: Option<&Path>) -> Result<Resolved, ConfigError> {
    let defaults = defaults()?;
    let top = to_table(&explicit.options)?;
    let (file_table, lines) = match file {
        Some(path) => read_file(path)?,
        None => (Table::new(), FileLines::default()),
    };
    let registry_keys = arg_ids::<RegistryOptions>();
    let mut merged;
    if let Some(named) = file_table.get("registry") {
        if let Some(key) = file_table
            .keys()
            .find(|k| registry_keys.contains(k.as_str()))
        {
            return Err(ConfigError::invalid(
                key,
                Origin::File {
                    path: lines.path.clone(),
                    line: lines.lines.get(&vec![key.clone()]).copied(),
                },
                "a registry option in the flat form beside [[registry]] tables: set it in each [[registry]] table",
            ));
        }
        if let Some(key) = top.keys().find(|k| registry_keys.contains(k.as_str())) {
            return Err(ConfigError::invalid(
                key,
                explicit.origin(key),
                "flags and variables set the flat form only, and the file has [[registry]] tables: set it in each [[registry]] table",
            ));
        }
        let process_keys = arg_ids::<ProcessOptions>();
        merged = pick(&defaults, &process_keys);
        overlay(&mut merged, &file_table);
        let mut registries = Vec::new();
        for table in named.as_array().into_iter().flatten() {
            let mut registry = pick(&defaults, &registry_keys);
            if let Some(table) = table.as_table() {
                overlay(&mut registry, table);
            }
            registries.push(Value::Table(registry));
        }
        merged.insert("registry".into(), Value::Array(registries));
    } else {
        merged = defaults;
        overlay(&mut merged, &file_table);
    }
    overlay(&mut merged, &top);
    let file_origin = Origin::File {
        path: lines.path.clone(),
        line: None,
    };
    Ok(Resolved {
        options: from_table(merged, &file_origin)?,
        origins: Origins {
            explicit_keys: top.keys().cloned().collect(),
            explicit: explicit.clone(),
            file: file.map(|_| lines),
        },
    })
}

/// The defaults layer: every option with a clap default, read through clap itself (so a default
/// is parsed exactly as the same text given as a flag would be).
fn defaults() -> Result<Table, ConfigError> {
    // Variables must not leak into the defaults: this parse sees the defaults only.
    let command = options_command().mut_args(|arg| arg.env(None));
    let mut argv = vec!["eppmux".to_string()];
    let mut keys = HashSet::new();
    for arg in command.get_arguments() {
        let (Some(long), Some(default)) = (arg.get_long(), arg.get_default_values().first()) else {
            continue;
        };
        argv.push(format!("--{long}={}", default.to_string_lossy()));
        keys.insert(arg.get_id().to_string());
    }
    let internal = |e: String| ConfigError::invalid("defaults", Origin::Default, e);
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| internal(e.to_string()))?;
    let options = Options::from_arg_matches(&matches).map_err(|e| internal(e.to_string()))?;
    let mut table = to_table(&options)?;
    table.retain(|key: &str, _| keys.contains(key));
    Ok(table)
}

/// The clap command that `Options` declares, for its argument metadata.
fn options_command() -> clap::Command {
    Options::augment_args(clap::Command::new("eppmux"))
}

/// The keys (argument ids, which are the field names) that `T` declares.
fn arg_ids<T: Args>() -> HashSet<String> {
    T::augment_args(clap::Command::new("eppmux"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .chain(["account".to_string()])
        .collect()
}

fn to_table(options: &Options) -> Result<Table, ConfigError> {
    match Value::try_from(options) {
        Ok(Value::Table(table)) => Ok(table),
        Ok(_) => Ok(Table::new()),
        Err(e) => Err(ConfigError::invalid(
            "options",
            Origin::Caller,
            e.to_string(),
        )),
    }
}

fn from_table(table: Table, origin: &Origin) -> Result<Options, ConfigError> {
    Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::invalid("options", origin.clone(), e.message()))
}

fn pick(table: &Table, keys: &HashSet<String>) -> Table {
    table
        .iter()
        .filter(|(k, _)| keys.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `upper`'s keys replace `base`'s; tables merge key by key, anything else (arrays included) is
/// replaced whole.
fn overlay(base: &mut Table, upper: &Table) {
    for (key, value) in upper {
        match (base.get_mut(key), value) {
            (Some(Value::Table(below)), Value::Table(above)) => overlay(below, above),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Reads and checks the file: its syntax and types (serde's errors carry the line), its unknown
/// keys, and the line of every key.
fn read_file(path: &Path) -> Result<(Table, FileLines), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.into(),
        source,
    })?;
    let parse = |message: String| ConfigError::ParseFile {
        path: path.into(),
        message,
    };
    let typed: Options = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
    let table: Table = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
    let lines = FileLines {
        path: path.to_path_buf(),
        lines: key_lines(&text),
    };
    let known = to_table(&typed)?;
    if let Some(unknown) = unknown_key(&table, &known, &mut Vec::new()) {
        let line = lines.lines.get(&unknown).copied();
        let key = unknown.join(".");
        return Err(ConfigError::invalid(
            &key,
            Origin::File {
                path: path.into(),
                line,
            },
            "unknown key",
        ));
    }
    Ok((table, lines))
}

/// The first key of `given` that reading it as options dropped: serde ignores unknown keys
/// where structures are flattened, so they are found by reading back what was understood.
fn unknown_key(given: &Table, known: &Table, path: &mut Vec<String>) -> Option<Vec<String>> {
    for (key, value) in given {
        path.push(key.clone());
        let found = match (value, known.get(key)) {
            (Value::Array(a), None) if a.is_empty() => None,
            (_, None) => Some(path.clone()),
            (Value::Table(g), Some(Value::Table(k))) => unknown_key(g, k, path),
            (Value::Array(g), Some(Value::Array(k))) => {
                g.iter()
                    .zip(k)
                    .enumerate()
                    .find_map(|(i, pair)| match pair {
                        (Value::Table(g), Value::Table(k)) => {
                            path.push(i.to_string());
                            let found = unknown_key(g, k, path);
                            path.pop();
                            found
                        }
                        _ => None,
                    })
            }
            _ => None,
        };
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The line of every key of the file, by path; arrays of tables are numbered from 0.
fn key_lines(text: &str) -> HashMap<Vec<String>, usize> {
    let mut out = HashMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk(text, table.get_ref(), &mut Vec::new(), &mut out);
    }
    out
}

fn walk(
    text: &str,
    table: &toml::de::DeTable<'_>,
    path: &mut Vec<String>,
    out: &mut HashMap<Vec<String>, usize>,
) {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        let line = text[..key.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1;
        out.insert(path.clone(), line);
        match value.get_ref() {
            toml::de::DeValue::Table(t) => walk(text, t, path, out),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        path.push(i.to_string());
                        walk(text, t, path, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}
