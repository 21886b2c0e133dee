//! Access control lists: which principal may do what on which resource.
//!
//! A rule names a principal (or `*`, any authenticated one), an effect (allow or deny),
//! operations, and a resource: a topic, a consumer group (by group name, whatever its
//! topic) or the cluster, matched by literal name or by prefix. A request is allowed when
//! a rule allows it and none denies it (deny wins); with no matching rule it is denied.
//! Superusers may do everything. The rules live in a TOML file (`acl_file`) that the
//! broker reads at start and again on SIGHUP:
//!
//! ```toml
//! superusers = ["admin"]
//!
//! [[rule]]
//! principal = "orders-service"
//! operations = ["publish", "describe"]
//! resource = "topic"
//! name = "orders."
//! pattern = "prefix"
//!
//! [[rule]]
//! principal = "*"
//! effect = "deny"
//! operations = ["delete"]
//! resource = "topic"
//! name = "audit"
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Publish,
    Fetch,
    Consume,
    Describe,
    Create,
    Delete,
    Alter,
    Seek,
    Redrive,
    /// Every operation (in a rule only; no request asks for it).
    All,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Fetch => "fetch",
            Operation::Consume => "consume",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Seek => "seek",
            Operation::Redrive => "redrive",
            Operation::All => "all",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of resource a rule protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Topic,
    /// A consumer group, by its name (the same rule covers the name on every topic).
    Group,
    /// The broker as a whole: server reflection.
    Cluster,
}

/// The resource a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    /// With `name` [`ANY_NAME`]: some resource of this kind (see [`Acl::allows`]).
    pub kind: ResourceKind,
    pub name: &'a str,
}

impl<'a> Resource<'a> {
    pub fn topic(name: &'a str) -> Resource<'a> {
        Resource {
            kind: ResourceKind::Topic,
            name,
        }
    }
    pub fn group(name: &'a str) -> Resource<'a> {
        Resource {
            kind: ResourceKind::Group,
            name,
        }
    }
    /// Some topic: what a request asks when it needs a right on at least one topic,
    /// whichever (InitProducer: a producer id is useful only to a principal that may
    /// publish somewhere).
    pub fn any_topic() -> Resource<'static> {
        Resource {
            kind: ResourceKind::Topic,
            name: ANY_NAME,
        }
    }
    pub fn cluster() -> Resource<'static> {
        Resource {
            kind: ResourceKind::Cluster,
            name: "",
        }
    }
}

/// The name of [`Resource::any_topic`]: not a valid topic name, so no literal rule names
/// it by accident.
pub const ANY_NAME: &str = "\0any";

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == ANY_NAME {
            return f.write_str("any topic");
        }
        match self.kind {
            ResourceKind::Topic => write!(f, "topic {}", crate::error::shown(self.name)),
            ResourceKind::Group => write!(f, "group {}", crate::error::shown(self.name)),
            ResourceKind::Cluster => f.write_str("the cluster"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// How a rule's `name` matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// The resource's name is `name` (`*` matches every name).
    #[default]
    Literal,
    /// The resource's name starts with `name` (an empty prefix matches every name).
    Prefix,
}

/// One rule of the ACL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A principal, or `*` for every authenticated principal.
    pub principal: String,
    #[serde(default)]
    pub effect: Effect,
    pub operations: Vec<Operation>,
    pub resource: ResourceKind,
    /// The resource name or prefix; unused for the cluster.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub pattern: PatternKind,
}

impl Rule {
    fn matches(&self, principal: &str, operation: Operation, resource: Resource<'_>) -> bool {
        (self.principal == "*" || self.principal == principal)
            && self.resource == resource.kind
            && self
                .operations
                .iter()
                .any(|o| *o == Operation::All || *o == operation)
            && match (resource.kind, self.pattern) {
                (ResourceKind::Cluster, _) => true,
                // Some name: any allow rule of the kind will do; a deny rule on some names
                // leaves others.
                _ if resource.name == ANY_NAME => self.effect == Effect::Allow,
                (_, PatternKind::Literal) => self.name == "*" || self.name == resource.name,
                (_, PatternKind::Prefix) => resource.name.starts_with(&self.name),
            }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let operations: Vec<&str> = self.operations.iter().map(|o| o.name()).collect();
        let resource = match (self.resource, self.pattern) {
            (ResourceKind::Cluster, _) => "cluster".to_owned(),
            (kind, PatternKind::Literal) => format!("{} {:?}", kind_name(kind), self.name),
            (kind, PatternKind::Prefix) => format!("{} prefix {:?}", kind_name(kind), self.name),
        };
        write!(
            f,
            "{effect} {:?} {} on {resource}",
            self.principal,
            operations.join(",")
        )
    }
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Topic => "topic",
        ResourceKind::Group => "group",
        ResourceKind::Cluster => "cluster",
    }
}

/// The rules in force: superusers and rules, as the file says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default)]
    pub superusers: BTreeSet<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl Acl {
    /// Parses and checks the text of an ACL file.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let acl: Acl = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, rule) in acl.rules.iter().enumerate() {
            let place = format!("rule {} ({rule})", i + 1);
            if rule.principal.trim().is_empty() {
                return Err(format!("{place}: the principal is empty"));
            }
            if rule.operations.is_empty() {
                return Err(format!("{place}: no operations"));
            }
            if rule.resource != ResourceKind::Cluster
                && rule.pattern == PatternKind::Literal
                && rule.name.is_empty()
            {
                return Err(format!(
                    "{place}: a literal rule needs a name (\"*\" for every name)"
                ));
            }
        }
        Ok(acl)
    }

    /// Reads and checks an ACL file.
    pub fn load(path: &Path) -> Result<Acl, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Acl::parse(&text)
            .map_err(|e| ConfigError::Invalid(format!("ACL file {}: {e}", path.display())))
    }

    /// Whether `principal` may do `operation` on `resource`: a superuser may; otherwise
    /// some rule must allow it and none deny it.
    pub fn allows(&self, principal: &str, operation: Operation, resource: Resource<'_>) -> bool {
        if self.superusers.contains(principal) {
            return true;
        }
        let mut allowed = false;
        for rule in &self.rules {
            if rule.matches(principal, operation, resource) {
                match rule.effect {
                    Effect::Deny => return false,
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
superusers = ["admin"]

[[rule]]
principal = "orders"
operations = ["publish", "describe"]
resource = "topic"
name = "orders."
pattern = "prefix"

[[rule]]
principal = "orders"
effect = "deny"
operations = ["publish"]
resource = "topic"
name = "orders.audit"

[[rule]]
principal = "*"
operations = ["describe"]
resource = "group"
name = "*"

[[rule]]
principal = "billing"
operations = ["all"]
resource = "group"
name = "billing"

[[rule]]
principal = "billing"
operations = ["publish"]
resource = "cluster"
"#;

    #[test]
    fn prefix_literal_wildcard_all_and_deny_over_allow() {
        let acl = Acl::parse(FILE).unwrap();
        let (t, g) = (Resource::topic, Resource::group);
        assert!(acl.allows("orders", Operation::Publish, t("orders.created")));
        assert!(acl.allows("orders", Operation::Describe, t("orders.audit")));
        assert!(!acl.allows("orders", Operation::Publish, t("orders.audit")));
        assert!(!acl.allows("orders", Operation::Publish, t("payments")));
        assert!(!acl.allows("orders", Operation::Delete, t("orders.created")));
        assert!(acl.allows("anyone", Operation::Describe, g("x")));
        assert!(!acl.allows("anyone", Operation::Consume, g("x")));
        assert!(acl.allows("billing", Operation::Consume, g("billing")));
        assert!(acl.allows("billing", Operation::Seek, g("billing")));
        assert!(!acl.allows("billing", Operation::Consume, g("billing2")));
        assert!(acl.allows("billing", Operation::Publish, Resource::cluster()));
        assert!(!acl.allows("orders", Operation::Publish, Resource::cluster()));
        // A group rule never covers a topic of the same name, nor the reverse.
        assert!(!acl.allows("billing", Operation::Consume, t("billing")));
        assert!(acl.allows("admin", Operation::Delete, t("anything")));
        assert!(acl.allows("orders", Operation::Publish, Resource::any_topic()));
        assert!(!acl.allows("billing", Operation::Publish, Resource::any_topic()));
        assert!(!acl.allows("orders", Operation::Fetch, Resource::any_topic()));
        assert!(!Acl::default().allows("admin", Operation::Describe, t("a")));
    }

    #[test]
    fn bad_files_are_refused_with_the_rule_named() {
        for (text, says) in [
            (
                "[[rule]]\nprincipal = \"\"\noperations = [\"fetch\"]\nresource = \"topic\"\nname = \"a\"",
                "principal is empty",
            ),
            (
                "[[rule]]\nprincipal = \"p\"\noperations = []\nresource = \"topic\"\nname = \"a\"",
                "no operations",
            ),
            (
                "[[rule]]\nprincipal = \"p\"\noperations = [\"fetch\"]\nresource = \"topic\"",
                "needs a name",
            ),
            (
                "[[rule]]\nprincipal = \"p\"\noperations = [\"steal\"]\nresource = \"topic\"\nname = \"a\"",
                "unknown variant",
            ),
            (
                "[[rule]]\nprincipal = \"p\"\noperations = [\"fetch\"]\nresource = \"disk\"\nname = \"a\"",
                "unknown variant",
            ),
            ("superuser = [\"a\"]", "unknown field"),
        ] {
            let error = Acl::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn rules_print_as_herald_acl_list_shows_them() {
        let acl = Acl::parse(FILE).unwrap();
        let shown: Vec<String> = acl.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown[0],
            "allow \"orders\" publish,describe on topic prefix \"orders.\""
        );
        assert_eq!(
            shown[1],
            "deny \"orders\" publish on topic \"orders.audit\""
        );
        assert_eq!(shown[4], "allow \"billing\" publish on cluster");
    }
}
