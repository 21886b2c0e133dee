//! Where settings come from: defaults < TOML file < `HERALD_*` environment < flags, layered
//! by figment, which remembers for every value the layer that set it. That is what
//! `herald serve --print-config` shows, and what lets an error name the file, the
//! environment variable or the flag that holds a bad value.
//!
//! Every setting has one key (`listen`, `cluster.node_id`), one environment variable by
//! one rule ([`env_name`]) and one flag, except the file-only ones ([`FILE_ONLY`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Serialize;

use super::{Config, ConfigError};
use crate::cluster::ClusterSettings;

/// Settings only the file can set: `tokens` is a list of tables (principal and hash),
/// which no single flag or variable spells well.
pub const FILE_ONLY: &[&str] = &["tokens"];

/// Variable names from before the one rule. Each still works; when the rule's name is
/// also set, the rule's name wins.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("tls_cert_file", "HERALD_TLS_CERT"),
    ("tls_key_file", "HERALD_TLS_KEY"),
    ("tls_client_ca_file", "HERALD_TLS_CLIENT_CA"),
    ("cluster.node_id", "HERALD_NODE_ID"),
    ("cluster.peer_listen", "HERALD_PEER_LISTEN"),
    ("cluster.initial_members", "HERALD_INITIAL_MEMBERS"),
    ("cluster.peer_tls_cert_file", "HERALD_PEER_TLS_CERT"),
    ("cluster.peer_tls_key_file", "HERALD_PEER_TLS_KEY"),
    ("cluster.peer_tls_ca_file", "HERALD_PEER_TLS_CA"),
];

// The names figment's metadata carries for each layer; `Origin` reads them back.
const DEFAULT: &str = "default";
const FILE: &str = "file";
const ENV: &str = "environment variable";
const FLAG: &str = "flag";

/// Every setting's key in declaration order, the cluster table's as `cluster.<field>`.
/// Read from the types' `Deserialize` impls, so a new field is a new key without a list
/// to keep.
pub fn setting_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for field in field_names::<Config>() {
        if *field == "cluster" {
            keys.extend(
                field_names::<ClusterSettings>()
                    .iter()
                    .map(|f| format!("cluster.{f}")),
            );
        } else {
            keys.push((*field).to_owned());
        }
    }
    keys
}

/// The environment variable of a setting: `HERALD_` and the key in upper snake case
/// (`HERALD_LISTEN`, `HERALD_CLUSTER_NODE_ID`).
pub fn env_name(key: &str) -> String {
    format!("HERALD_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Older variable names a setting also answers to.
pub fn env_aliases(key: &str) -> impl Iterator<Item = &'static str> + '_ {
    ENV_ALIASES
        .iter()
        .filter(move |(k, _)| *k == key)
        .map(|(_, name)| *name)
}

/// The default of a setting as a variable or flag spells it (`None`: unset by default).
pub fn default_value(key: &str) -> Option<String> {
    let defaults = toml::Value::try_from(Config::default()).ok()?;
    let value = key.split('.').try_fold(&defaults, |v, k| v.get(k))?;
    Some(match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    /// The variable's name.
    Env(String),
    /// The flag, with its dashes (`--listen`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

impl Origin {
    fn of(metadata: &Metadata, path: &[&str]) -> Origin {
        match metadata.name.as_ref() {
            FILE => Origin::File(
                metadata
                    .source
                    .as_ref()
                    .and_then(Source::file_path)
                    .map(Path::to_owned)
                    .unwrap_or_default(),
            ),
            ENV => Origin::Env(metadata.interpolate(&Profile::Default, path)),
            FLAG => Origin::Flag(metadata.interpolate(&Profile::Default, path)),
            _ => Origin::Default,
        }
    }
}

/// The flags' layer: the values given on the command line, and the flag of every setting
/// that has one (for errors that say how to set a missing value).
#[derive(Debug, Default)]
pub struct Flags {
    values: Dict,
    names: BTreeMap<String, String>,
}

impl Flags {
    /// `args` serializes to the configuration's shape (the cluster's flags as a `cluster`
    /// table), with `None` for each flag not given. `flag_of` names the flag of a field.
    pub fn new(
        args: &impl Serialize,
        flag_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Flags, ConfigError> {
        let value = Value::serialize(args)
            .map_err(|e| ConfigError::Invalid(format!("reading the flags: {e}")))?;
        let mut leaves = Vec::new();
        if let Some(dict) = value.into_dict() {
            flatten(&dict, "", &mut leaves);
        }
        let mut flags = Flags::default();
        for (key, value) in leaves {
            let field = key.rsplit('.').next().unwrap_or(&key);
            if let Some(flag) = flag_of(field) {
                flags.names.insert(key.clone(), flag);
            }
            if !matches!(value, Value::Empty(..)) {
                insert(&mut flags.values, &key, value);
            }
        }
        Ok(flags)
    }

    /// The flag of a setting.
    pub fn name(&self, key: &str) -> Option<&str> {
        self.names.get(key).map(String::as_str)
    }
}

/// The configuration with where each of its values came from.
pub struct Layered {
    /// Not yet validated: `--print-config` shows a configuration that `validate` refuses.
    pub config: Config,
    figment: Figment,
}

/// Reads the layers and extracts the configuration: defaults, then `file` (strict: a key
/// that is no setting is an error naming it), then the `HERALD_*` variables that `env`
/// finds (empty ones count as unset), then `flags`.
pub fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: Flags,
) -> Result<Layered, ConfigError> {
    let defaults = Value::serialize(Config::default())
        .ok()
        .and_then(Value::into_dict)
        .unwrap_or_default();
    let mut figment = Figment::new().merge(Layer {
        metadata: Metadata::named(DEFAULT),
        data: defaults,
    });
    if let Some(path) = file {
        figment = figment.merge(Layer {
            metadata: Metadata::from(FILE, Source::File(path.to_owned())),
            data: file_layer(path)?,
        });
    }

    let mut env_values = Dict::new();
    let mut env_used = BTreeMap::new();
    for key in setting_keys() {
        if FILE_ONLY.contains(&key.as_str()) {
            continue;
        }
        let names = std::iter::once(env_name(&key)).chain(env_aliases(&key).map(String::from));
        for name in names {
            if let Some(value) = env(&name).filter(|v| !v.is_empty()) {
                insert(&mut env_values, &key, Value::from(value));
                env_used.insert(key.clone(), name);
                break;
            }
        }
    }
    figment = figment.merge(Layer {
        metadata: named_by(ENV, env_used),
        data: env_values,
    });
    figment = figment.merge(Layer {
        metadata: named_by(FLAG, flags.names.clone()),
        data: flags.values.clone(),
    });

    // Lossy: environment values are strings, and become numbers and booleans where
    // the setting is one.
    let config = figment.extract_lossy::<Config>().map_err(|error| {
        let error = error.into_iter().next().unwrap_or_else(|| "invalid".into());
        let key = error.path.join(".");
        let message = match &error.kind {
            // Cluster mode needs all of its table: say where the missing part can come from.
            Kind::MissingField(field) if key == "cluster" => {
                let key = format!("{key}.{field}");
                let mut ways = vec![
                    format!("`{field}` in the file's [cluster] table"),
                    env_name(&key),
                ];
                ways.extend(flags.names.get(&key).cloned());
                return ConfigError::Invalid(format!(
                    "{key} is not set, and the other cluster settings are: set it too ({})",
                    ways.join(", ")
                ));
            }
            Kind::UnknownVariant(found, expected) => {
                format!("`{found}` is not one of {}", expected.join(", "))
            }
            kind => kind.to_string(),
        };
        let path: Vec<&str> = error.path.iter().map(String::as_str).collect();
        let origin = error
            .metadata
            .as_ref()
            .map_or(Origin::Default, |m| Origin::of(m, &path));
        ConfigError::Setting {
            origin,
            key,
            message,
        }
    })?;
    Ok(Layered { config, figment })
}

impl Layered {
    /// Where the value of `key` came from.
    pub fn origin(&self, key: &str) -> Origin {
        let path: Vec<&str> = key.split('.').collect();
        self.figment
            .find_metadata(key)
            .map_or(Origin::Default, |m| Origin::of(m, &path))
    }

    /// The configuration as TOML, each value followed by a comment saying where it came
    /// from; unset settings as comments. Token hashes are not shown.
    pub fn to_toml(&self) -> String {
        let table = toml::Value::try_from(&self.config)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut cluster = Vec::new();
        for key in setting_keys() {
            let (target, field, value) = match key.strip_prefix("cluster.") {
                Some(field) => (
                    &mut cluster,
                    field,
                    table.get("cluster").and_then(|c| c.get(field)),
                ),
                None => (&mut lines, key.as_str(), table.get(&key)),
            };
            if FILE_ONLY.contains(&field) {
                continue;
            }
            let origin = self.origin(&key).to_string();
            target.push(match value {
                Some(value) => (format!("{field} = {value}"), origin),
                None => (format!("# {field} is unset"), origin),
            });
        }
        let width = lines
            .iter()
            .chain(&cluster)
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(0)
            .min(56);
        let line = |(text, origin): &(String, String)| format!("{text:<width$}  # {origin}\n");
        let mut out = String::from(
            "# The effective configuration of `herald serve`: defaults < file < HERALD_* environment < flags.\n\
             # After each value, where it came from. Token hashes show as <hashed>.\n",
        );
        out.extend(lines.iter().map(line));
        let tokens_origin = self.origin("tokens");
        for token in &self.config.tokens {
            out.push_str(&format!("\n[[tokens]]  # {tokens_origin}\n"));
            out.push_str(&format!(
                "principal = {}\nhash = \"<hashed>\"\n",
                toml::Value::String(token.principal.clone())
            ));
        }
        if self.config.tokens.is_empty() {
            out.push_str(&format!("# no [[tokens]]  # {tokens_origin}\n"));
        }
        out.push_str(if self.config.cluster.is_some() {
            "\n[cluster]\n"
        } else {
            "\n# [cluster]: unset, a single node\n"
        });
        out.extend(cluster.iter().map(line));
        out
    }
}

/// One layer's values, under the metadata that names it.
struct Layer {
    metadata: Metadata,
    data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// Metadata whose interpolation of a key is the name it had in that layer (the variable
/// or the flag that set it).
fn named_by(layer: &'static str, names: BTreeMap<String, String>) -> Metadata {
    let names = Arc::new(names);
    Metadata::named(layer).interpolater(move |_: &Profile, path: &[&str]| {
        let key = path.join(".");
        names.get(&key).cloned().unwrap_or(key)
    })
}

/// The file's values, after checking that each key is a setting.
fn file_layer(path: &Path) -> Result<Dict, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|cause| ConfigError::Parse {
        path: path.to_owned(),
        cause: Box::new(cause),
    })?;
    let keys = setting_keys();
    let unknown = |key: String| ConfigError::UnknownKey {
        path: path.to_owned(),
        hint: closest(&key, &keys)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default(),
        key,
    };
    for (key, value) in &table {
        if key == "cluster" {
            for field in value.as_table().into_iter().flat_map(toml::Table::keys) {
                let key = format!("cluster.{field}");
                if !keys.contains(&key) {
                    return Err(unknown(key));
                }
            }
        } else if !keys.contains(key) {
            return Err(unknown(key.clone()));
        }
    }
    Value::serialize(&table)
        .ok()
        .and_then(Value::into_dict)
        .ok_or_else(|| ConfigError::Invalid(format!("{} is not a TOML table", path.display())))
}

/// The known key nearest to a misspelt one, if it is near (a few edits).
fn closest<'k>(key: &str, keys: &'k [String]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (above + 1)
                    .min(row[j] + 1)
                    .min(diagonal + usize::from(ca != *cb));
                diagonal = above;
            }
        }
        row[b.len()]
    }
    keys.iter()
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// The leaves of `dict` as dotted keys.
fn flatten(dict: &Dict, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (name, value) in dict {
        let key = format!("{prefix}{name}");
        match value {
            Value::Dict(_, inner) => flatten(inner, &format!("{key}."), out),
            _ => out.push((key, value.clone())),
        }
    }
}

/// Sets the dotted `key` in `dict`, making the tables on its way.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// The field names of a struct, as its derived `Deserialize` declares them.
pub(crate) fn field_names<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// A valid value of each setting other than its default, as an environment variable or a
/// flag spells it; `None` for a key it does not know, so a test walking the settings
/// fails on a new one until it has an example (and so a flag and a variable).
#[doc(hidden)]
pub fn example(key: &str) -> Option<&'static str> {
    Some(match key {
        "data_dir" => "/srv/herald",
        "listen" => "127.0.0.1:50061",
        "metrics_listen" => "127.0.0.1:9470",
        "fsync" => "interval",
        "fsync_interval_ms" => "250",
        "segment_bytes" => "8388608",
        "retention_ms" => "3600000",
        "retention_bytes" => "1073741824",
        "max_message_bytes" => "65536",
        "max_batch_bytes" => "524288",
        "max_batch_records" => "5000",
        "max_topics" => "7",
        "max_partitions" => "70",
        "max_streams_per_connection" => "64",
        "max_connections" => "32",
        "response_buffer_bytes" => "33554432",
        "idle_stream_timeout_ms" => "60000",
        "producer_idle_expiry_ms" => "3600000",
        "max_producers_per_partition" => "500",
        "dedup_window_ms" => "0",
        "log_json" => "true",
        "otlp_endpoint" => "http://127.0.0.1:4317",
        "tls_cert_file" => "/etc/herald/server.pem",
        "tls_key_file" => "/etc/herald/server.key",
        "tls_client_ca_file" => "/etc/herald/ca.pem",
        "tls_client_cert_optional" => "true",
        "insecure" => "true",
        "acl_file" => "/etc/herald/acl.toml",
        "cluster.node_id" => "2",
        "cluster.peer_listen" => "127.0.0.1:7002",
        "cluster.initial_members" => {
            "1=127.0.0.1:50051@127.0.0.1:7001,2=127.0.0.1:50061@127.0.0.1:7002"
        }
        "cluster.peer_tls_cert_file" => "/etc/herald/node2.pem",
        "cluster.peer_tls_key_file" => "/etc/herald/node2.key",
        "cluster.peer_tls_ca_file" => "/etc/herald/cluster-ca.pem",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    /// The flags' layer as the binary makes it: a struct with `None` for flags not given.
    #[derive(Serialize, Default)]
    struct TestFlags {
        listen: Option<String>,
        cluster: TestClusterFlags,
    }

    #[derive(Serialize, Default)]
    struct TestClusterFlags {
        node_id: Option<u64>,
    }

    fn flags(args: &TestFlags) -> Flags {
        Flags::new(args, |field| Some(format!("--{}", field.replace('_', "-")))).unwrap()
    }

    /// The value of `key` in `config`, as an environment variable would spell it.
    fn value_of(config: &Config, key: &str) -> Option<String> {
        let table = toml::Value::try_from(config).unwrap();
        let value = key.split('.').try_fold(&table, |v, k| v.get(k))?;
        Some(match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1001\"\nmax_topics = 3\n[cluster]\nnode_id = 1\npeer_listen = \"127.0.0.1:7001\"\ninitial_members = \"1=127.0.0.1:1@127.0.0.1:7001,2=127.0.0.1:2@127.0.0.1:7002\"\n",
        )
        .unwrap();
        let no_env = env_of(&[]);

        // Defaults alone.
        let layered = load(None, &no_env, Flags::default()).unwrap();
        assert_eq!(layered.config, Config::default());
        assert_eq!(layered.origin("listen"), Origin::Default);

        // The file over the defaults.
        let layered = load(Some(&file), &no_env, Flags::default()).unwrap();
        assert_eq!(layered.config.listen.port(), 1001);
        assert_eq!(layered.origin("listen"), Origin::File(file.clone()));
        assert_eq!(layered.origin("max_topics"), Origin::File(file.clone()));
        assert_eq!(layered.origin("fsync"), Origin::Default);
        assert_eq!(layered.config.cluster.as_ref().unwrap().node_id, 1);

        // The environment over the file.
        let env = env_of(&[
            ("HERALD_LISTEN", "127.0.0.1:1002"),
            ("HERALD_CLUSTER_NODE_ID", "2"),
        ]);
        let layered = load(Some(&file), &env, Flags::default()).unwrap();
        assert_eq!(layered.config.listen.port(), 1002);
        assert_eq!(
            layered.origin("listen"),
            Origin::Env("HERALD_LISTEN".into())
        );
        assert_eq!(layered.config.max_topics, 3);
        assert_eq!(layered.config.cluster.as_ref().unwrap().node_id, 2);
        assert_eq!(
            layered.origin("cluster.node_id"),
            Origin::Env("HERALD_CLUSTER_NODE_ID".into())
        );
        assert_eq!(
            layered.origin("cluster.peer_listen"),
            Origin::File(file.clone())
        );

        // Flags over the environment.
        let args = TestFlags {
            listen: Some("127.0.0.1:1003".into()),
            cluster: TestClusterFlags { node_id: Some(1) },
        };
        let layered = load(Some(&file), &env, flags(&args)).unwrap();
        assert_eq!(layered.config.listen.port(), 1003);
        assert_eq!(layered.origin("listen"), Origin::Flag("--listen".into()));
        assert_eq!(layered.config.cluster.as_ref().unwrap().node_id, 1);
        assert_eq!(
            layered.origin("cluster.node_id"),
            Origin::Flag("--node-id".into())
        );
        layered.config.validate().unwrap();

        // A flag not given leaves the layers below as they were.
        let layered = load(Some(&file), &env, flags(&TestFlags::default())).unwrap();
        assert_eq!(layered.config.listen.port(), 1002);
    }

    /// Every setting but the file-only ones can be set by its `HERALD_*` variable. The
    /// keys are read from the types, so a new field fails here until it has an example
    /// value (and then it has a variable by the rule).
    #[test]
    fn every_setting_is_reachable_by_its_environment_variable() {
        let keys = setting_keys();
        assert!(keys.contains(&"cluster.node_id".to_owned()), "{keys:?}");
        assert!(keys.contains(&"tokens".to_owned()), "{keys:?}");
        for key in keys.iter().filter(|k| !FILE_ONLY.contains(&k.as_str())) {
            let value = example(key).unwrap_or_else(|| {
                panic!("setting {key} has no example: give it one, and a flag in `herald serve`")
            });
            let name = env_name(key);
            let mut vars = vec![(name.as_str(), value)];
            // A cluster setting alone is refused: the other cluster settings are set by
            // their variables too.
            let others: Vec<(String, &str)> = keys
                .iter()
                .filter(|k| k.starts_with("cluster.") && key.starts_with("cluster.") && *k != key)
                .map(|k| (env_name(k), example(k).unwrap()))
                .collect();
            vars.extend(others.iter().map(|(n, v)| (n.as_str(), *v)));
            let layered = load(None, &env_of(&vars), Flags::default())
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            assert_eq!(layered.origin(key), Origin::Env(name.clone()), "{key}");
            assert_eq!(
                value_of(&layered.config, key).as_deref(),
                Some(value),
                "{name}={value}"
            );
            assert_ne!(
                value_of(&Config::default(), key).as_deref(),
                Some(value),
                "the example of {key} is its default: it shows no change"
            );
        }
    }

    #[test]
    fn the_older_variable_names_still_work_and_the_rule_wins() {
        let env = env_of(&[("HERALD_TLS_CERT", "a.pem"), ("HERALD_TLS_KEY", "a.key")]);
        let layered = load(None, &env, Flags::default()).unwrap();
        assert_eq!(layered.config.tls_cert_file, Some("a.pem".into()));
        assert_eq!(
            layered.origin("tls_cert_file"),
            Origin::Env("HERALD_TLS_CERT".into())
        );
        let env = env_of(&[
            ("HERALD_TLS_CERT", "a.pem"),
            ("HERALD_TLS_CERT_FILE", "b.pem"),
            ("HERALD_NODE_ID", "1"),
            ("HERALD_PEER_LISTEN", "127.0.0.1:7001"),
            ("HERALD_INITIAL_MEMBERS", "1=127.0.0.1:1@127.0.0.1:7001"),
        ]);
        let layered = load(None, &env, Flags::default()).unwrap();
        assert_eq!(layered.config.tls_cert_file, Some("b.pem".into()));
        assert_eq!(layered.config.cluster.as_ref().unwrap().node_id, 1);
        assert_eq!(
            layered.origin("cluster.initial_members"),
            Origin::Env("HERALD_INITIAL_MEMBERS".into())
        );
        // Empty counts as unset.
        let env = env_of(&[("HERALD_LISTEN", "")]);
        assert_eq!(
            load(None, &env, Flags::default()).unwrap().config,
            Config::default()
        );
    }

    #[test]
    fn a_bad_value_names_where_it_came_from() {
        let error = load(
            None,
            &env_of(&[("HERALD_MAX_TOPICS", "many")]),
            Flags::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.starts_with("in environment variable HERALD_MAX_TOPICS: max_topics: "),
            "{error}"
        );
        let error = load(None, &env_of(&[("HERALD_NODE_ID", "x")]), Flags::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("environment variable HERALD_NODE_ID"),
            "{error}"
        );
        let error = load(
            None,
            &env_of(&[("HERALD_CLUSTER_NODE_ID", "1")]),
            Flags::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("cluster.peer_listen is not set")
                && error.contains("HERALD_CLUSTER_PEER_LISTEN"),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "fsync = \"sometimes\"\n").unwrap();
        let error = load(Some(&file), &env_of(&[]), Flags::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains(&format!(
                "in file {}: fsync: `sometimes` is not one of always, interval, never",
                file.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn the_file_stays_strict_about_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        let refused = |text: &str| {
            std::fs::write(&file, text).unwrap();
            load(Some(&file), &env_of(&[]), Flags::default())
                .err()
                .expect("refused")
                .to_string()
        };
        let error = refused("lisen = \"127.0.0.1:1\"\n");
        assert!(
            error.contains("unknown key `lisen` (did you mean `listen`?)"),
            "{error}"
        );
        let error = refused("[cluster]\nnode = 1\n");
        assert!(error.contains("unknown key `cluster.node`"), "{error}");
        let error = refused("[[tokens]]\nprincipal = \"a\"\nhash = \"sha256:00\"\nsalt = 1\n");
        assert!(error.contains("salt"), "{error}");
        // No variable but the settings' own is read: the clients' HERALD_SERVER and
        // HERALD_TOKEN live in the same environment.
        let env = env_of(&[("HERALD_SERVER", "x"), ("HERALD_TOKEN", "y")]);
        assert_eq!(
            load(None, &env, Flags::default()).unwrap().config,
            Config::default()
        );
    }

    #[test]
    fn print_config_shows_origins_and_hides_token_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        let hash = crate::auth::token::hash("secret");
        std::fs::write(
            &file,
            format!("fsync = \"never\"\n[[tokens]]\nprincipal = \"alice\"\nhash = \"{hash}\"\n"),
        )
        .unwrap();
        let env = env_of(&[("HERALD_MAX_TOPICS", "9")]);
        let args = TestFlags {
            listen: Some("127.0.0.1:1003".into()),
            ..TestFlags::default()
        };
        let layered = load(Some(&file), &env, flags(&args)).unwrap();
        let text = layered.to_toml();
        assert!(!text.contains(&hash), "{text}");
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in {text}"))
        };
        assert!(line("fsync").ends_with(&format!("# file {}", file.display())));
        assert!(line("max_topics").ends_with("# environment variable HERALD_MAX_TOPICS"));
        assert!(line("listen").ends_with("# flag --listen"));
        assert!(line("data_dir").ends_with("# default"));
        // It reads back as the same configuration, but for the hidden hashes.
        let mut read: Config = toml::from_str(&text).unwrap();
        assert_eq!(read.tokens[0].hash, "<hashed>");
        read.tokens = layered.config.tokens.clone();
        assert_eq!(read, layered.config);
    }
}
