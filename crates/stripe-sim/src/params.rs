//! Declarative parameter schemas per endpoint, validated like Stripe validates them, and typed accessors.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::{path_name, Node};

/// The expected shape of one parameter.
#[derive(Debug)]
pub enum Spec {
    /// A string.
    Str,
    /// An integer (Stripe rejects `1.5` and `abc`).
    Int,
    /// `true` or `false`.
    Bool,
    /// A metadata hash of strings, or `""` to clear it.
    Meta,
    /// Anything; for parameters the simulator accepts but ignores in detail.
    Any,
    /// A hash with these keys only, or `""` to unset.
    Obj(&'static [(&'static str, Spec)]),
    /// An array of elements of this shape.
    Arr(&'static Spec),
    /// An integer or a range hash `{gt, gte, lt, lte}` (list filters such as `created`).
    Range,
    /// A string or a hash of these keys (e.g. `trial_end=now` vs integers, `billing_cycle_anchor`).
    StrOr(&'static [(&'static str, Spec)]),
}

/// Range filter keys.
const RANGE: &[(&str, Spec)] = &[
    ("gt", Spec::Int),
    ("gte", Spec::Int),
    ("lt", Spec::Int),
    ("lte", Spec::Int),
];

/// Parameters every list endpoint accepts.
pub const LIST: &[(&str, Spec)] = &[
    ("limit", Spec::Int),
    ("starting_after", Spec::Str),
    ("ending_before", Spec::Str),
    ("created", Spec::Range),
];

/// Checks a request's parameters against endpoint schemas (several slices are concatenated), plus `expand`.
pub fn validate(root: &Node, specs: &[&[(&'static str, Spec)]]) -> ApiResult<()> {
    let Node::Map(map) = root else {
        return Ok(());
    };
    for (key, node) in map {
        if key == "expand" {
            check(node, &Spec::Arr(&Spec::Str), std::slice::from_ref(key))?;
            continue;
        }
        let spec = specs
            .iter()
            .flat_map(|s| s.iter())
            .find(|(k, _)| k == key)
            .map(|(_, s)| s)
            .ok_or_else(|| ApiError::unknown_param(key))?;
        check(node, spec, std::slice::from_ref(key))?;
    }
    Ok(())
}

fn check(node: &Node, spec: &Spec, path: &[String]) -> ApiResult<()> {
    let name = || path_name(path);
    let child = |k: &str| {
        let mut p = path.to_vec();
        p.push(k.to_owned());
        p
    };
    match spec {
        Spec::Any => Ok(()),
        Spec::Str => match node {
            Node::Str(_) => Ok(()),
            _ => Err(ApiError::invalid(
                format!("Invalid string: {}", describe(node)),
                Some(&name()),
            )),
        },
        Spec::Int => match node {
            Node::Str(s) if s.is_empty() || s.parse::<i64>().is_ok() => Ok(()),
            Node::Str(s) => Err(ApiError::invalid_integer(&name(), s)),
            _ => Err(ApiError::invalid_integer(&name(), &describe(node))),
        },
        Spec::Bool => match node {
            Node::Str(s) if s.is_empty() || s == "true" || s == "false" => Ok(()),
            _ => Err(ApiError::invalid(
                format!("Invalid boolean: {}", describe(node)),
                Some(&name()),
            )),
        },
        Spec::Range => match node {
            Node::Str(_) => check(node, &Spec::Int, path),
            _ => check(node, &Spec::Obj(RANGE), path),
        },
        Spec::StrOr(keys) => match node {
            Node::Str(_) => Ok(()),
            _ => check(node, &Spec::Obj(keys), path),
        },
        Spec::Meta => match node {
            Node::Str(s) if s.is_empty() => Ok(()),
            Node::Map(m) => {
                if m.len() > 50 {
                    return Err(ApiError::invalid(
                        "Metadata can have up to 50 keys, but you passed in more than 50 keys.",
                        Some(&name()),
                    ));
                }
                for (k, v) in m {
                    let p = path_name(&child(k));
                    if k.chars().count() > 40 {
                        return Err(ApiError::invalid(
                            format!("Metadata keys can have up to 40 characters, but you passed in a key that is {} characters.", k.chars().count()),
                            Some(&p),
                        ));
                    }
                    match v {
                        Node::Str(s) if s.chars().count() > 500 => {
                            return Err(ApiError::invalid(
                                format!("Metadata values can have up to 500 characters, but you passed in a value that is {} characters.", s.chars().count()),
                                Some(&p),
                            ))
                        }
                        Node::Str(_) => {}
                        _ => {
                            return Err(ApiError::invalid(
                                format!("Invalid value type: {} must be a string", describe(v)),
                                Some(&p),
                            ))
                        }
                    }
                }
                Ok(())
            }
            _ => Err(ApiError::invalid(
                format!("Invalid metadata: {} must be a hash", describe(node)),
                Some(&name()),
            )),
        },
        Spec::Obj(keys) => match node {
            Node::Str(s) if s.is_empty() => Ok(()),
            Node::Map(m) => {
                for (k, v) in m {
                    let Some((_, s)) = keys.iter().find(|(key, _)| key == k) else {
                        return Err(ApiError::unknown_param(&path_name(&child(k))));
                    };
                    check(v, s, &child(k))?;
                }
                Ok(())
            }
            _ => Err(ApiError::invalid(
                format!("Invalid hash: {}", describe(node)),
                Some(&name()),
            )),
        },
        Spec::Arr(elem) => match node {
            Node::Str(s) if s.is_empty() => Ok(()),
            Node::List(_) => {
                for (i, n) in node.elements() {
                    check(n, elem, &child(&i))?;
                }
                Ok(())
            }
            Node::Map(m) => {
                if m.keys().any(|k| k.parse::<u32>().is_err()) {
                    return Err(ApiError::invalid(
                        format!("Invalid array: {}", describe(node)),
                        Some(&name()),
                    ));
                }
                for (i, n) in node.elements() {
                    check(n, elem, &child(&i))?;
                }
                Ok(())
            }
            Node::Str(s) => Err(ApiError::invalid(
                format!("Invalid array: {s}"),
                Some(&name()),
            )),
        },
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Str(s) => s.clone(),
        other => other.to_json().to_string(),
    }
}

/// A change to a metadata hash: Stripe merges keys, `metadata[k]=` deletes one, `metadata=` clears all.
pub enum MetaUpdate {
    /// `metadata=`.
    Clear,
    /// Per-key values; `None` deletes the key.
    Set(Vec<(String, Option<String>)>),
}

impl MetaUpdate {
    /// Applies the change to an object's `metadata` field.
    pub fn apply(&self, obj: &mut Value) {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = Value::Object(Map::new());
        }
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        match self {
            MetaUpdate::Clear => meta.clear(),
            MetaUpdate::Set(kv) => {
                for (k, v) in kv {
                    match v {
                        Some(v) => {
                            meta.insert(k.clone(), Value::String(v.clone()));
                        }
                        None => {
                            meta.remove(k);
                        }
                    }
                }
            }
        }
    }
}

/// Typed reads over a validated parameter tree.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    /// The node these accessors read from (the request root, or a nested hash).
    pub node: &'a Node,
    /// Bracket path of `node`, for error messages (empty at the root).
    pub prefix: &'a str,
}

impl<'a> Params<'a> {
    /// Accessors over the request root.
    pub fn root(node: &'a Node) -> Self {
        Params { node, prefix: "" }
    }

    /// Full bracket name of a key under this node.
    pub fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}[{key}]", self.prefix)
        }
    }

    /// Whether the key was sent at all.
    pub fn has(&self, key: &str) -> bool {
        self.node.get(key).is_some()
    }

    /// The raw node of a key.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.node.get(key)
    }

    /// A string parameter as sent (possibly empty).
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.node.get(key).and_then(Node::as_str)
    }

    /// A string parameter, `None` when absent or empty.
    pub fn nonempty(&self, key: &str) -> Option<&'a str> {
        self.str(key).filter(|s| !s.is_empty())
    }

    /// A required, non-empty string.
    pub fn req(&self, key: &str) -> ApiResult<&'a str> {
        match self.node.get(key) {
            None => Err(ApiError::missing_param(&self.name(key))),
            Some(Node::Str(s)) if s.is_empty() => Err(ApiError::empty_param(&self.name(key))),
            Some(Node::Str(s)) => Ok(s),
            Some(_) => Err(ApiError::invalid(
                format!("Invalid string for {}", self.name(key)),
                Some(&self.name(key)),
            )),
        }
    }

    /// An integer parameter (already validated), `None` when absent or empty.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.nonempty(key).and_then(|s| s.parse().ok())
    }

    /// A boolean parameter, `None` when absent or empty.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.nonempty(key).map(|s| s == "true")
    }

    /// An enum parameter checked against its allowed values.
    pub fn one_of(&self, key: &str, allowed: &[&str]) -> ApiResult<Option<&'a str>> {
        match self.nonempty(key) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v)),
            Some(_) => Err(ApiError::invalid_enum(&self.name(key), allowed)),
        }
    }

    /// A nested hash as its own accessor.
    pub fn obj(&self, key: &str, prefix: &'a mut String) -> Option<Params<'a>> {
        let node = self.node.get(key)?;
        if !matches!(node, Node::Map(_)) {
            return None;
        }
        *prefix = self.name(key);
        Some(Params {
            node,
            prefix: prefix.as_str(),
        })
    }

    /// A string at a nested path (`["trial_settings", "end_behavior", "missing_payment_method"]`).
    pub fn path_str(&self, path: &[&str]) -> Option<&'a str> {
        let mut n = self.node;
        for p in path {
            n = n.get(p)?;
        }
        n.as_str()
    }

    /// The elements of an array parameter with their bracket names.
    pub fn array(&self, key: &str) -> Vec<(String, &'a Node)> {
        match self.node.get(key) {
            Some(n) => n
                .elements()
                .into_iter()
                .map(|(i, n)| (format!("{}[{i}]", self.name(key)), n))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The strings of a scalar array parameter (`expand[]`, `lookup_keys[]`, `enabled_events[]`).
    pub fn strings(&self, key: &str) -> Vec<String> {
        self.array(key)
            .into_iter()
            .filter_map(|(_, n)| n.as_str().map(str::to_owned))
            .collect()
    }

    /// The metadata change carried by a parameter, if it was sent.
    pub fn metadata(&self, key: &str) -> Option<MetaUpdate> {
        match self.node.get(key)? {
            Node::Str(_) => Some(MetaUpdate::Clear),
            Node::Map(m) => Some(MetaUpdate::Set(
                m.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().unwrap_or_default();
                        (k.clone(), (!v.is_empty()).then(|| v.to_owned()))
                    })
                    .collect(),
            )),
            Node::List(_) => None,
        }
    }
}

/// Reads a string out of a nested node (`items[0][price]`).
pub fn node_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.get(key)
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
}

/// Reads an integer out of a nested node.
pub fn node_int(node: &Node, key: &str) -> Option<i64> {
    node_str(node, key).and_then(|s| s.parse().ok())
}
