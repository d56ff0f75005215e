//! Decoding of Stripe's form encoding (`a[b][0][c]=v`, `expand[]=x`) from bodies and query strings into a tree.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// A decoded parameter tree. Maps keep numeric-keyed arrays (`items[0]`) until a handler reads them as arrays.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar value, always a string on the wire.
    Str(String),
    /// A hash (`a[b]=...`), or an array written with explicit indexes.
    Map(BTreeMap<String, Node>),
    /// An array written with empty brackets (`a[]=...`).
    List(Vec<Node>),
}

impl Node {
    /// An empty hash, the root of every request.
    pub fn empty() -> Node {
        Node::Map(BTreeMap::new())
    }

    /// The value of a key of a hash.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The string, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array, in index order, whether written `a[]` or `a[0]`.
    pub fn elements(&self) -> Vec<(String, &Node)> {
        match self {
            Node::List(v) => v
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n))
                .collect(),
            Node::Map(m) => {
                let mut v: Vec<(u64, &String, &Node)> = m
                    .iter()
                    .map(|(k, n)| (k.parse::<u64>().unwrap_or(u64::MAX), k, n))
                    .collect();
                v.sort_by_key(|(i, _, _)| *i);
                v.into_iter().map(|(_, k, n)| (k.clone(), n)).collect()
            }
            Node::Str(_) => Vec::new(),
        }
    }

    /// A canonical JSON rendering, key-order insensitive, used to compare idempotent requests.
    pub fn to_json(&self) -> Value {
        match self {
            Node::Str(s) => Value::String(s.clone()),
            Node::List(v) => Value::Array(v.iter().map(Node::to_json).collect()),
            Node::Map(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Merges another decoded tree into this one; keys of `other` win.
    pub fn merge(&mut self, other: Node) {
        if let (Node::Map(a), Node::Map(b)) = (&mut *self, other) {
            for (k, v) in b {
                a.insert(k, v);
            }
        }
    }
}

/// Percent-decodes one component (`+` is a space), rejecting invalid UTF-8 as Stripe does.
fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(raw[i + 1]), hex(raw[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::invalid(
            "Invalid request: the request body or query string contains invalid UTF-8.",
            None,
        )
    })
}

/// Splits `a[b][]` into `["a", "b", ""]`; `None` when the brackets are unbalanced.
fn split_key(key: &str) -> Option<Vec<String>> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => return Some(vec![key.to_owned()]),
    };
    let mut parts = vec![head.to_owned()];
    while !rest.is_empty() {
        if !rest.starts_with('[') {
            return None;
        }
        let close = rest.find(']')?;
        parts.push(rest[1..close].to_owned());
        rest = &rest[close + 1..];
    }
    if head.is_empty() {
        return None;
    }
    Some(parts)
}

/// Pretty name of a path for error messages: `items[0][price]`.
pub fn path_name(parts: &[String]) -> String {
    let mut s = parts[0].clone();
    for p in &parts[1..] {
        s.push('[');
        s.push_str(p);
        s.push(']');
    }
    s
}

fn invalid_shape(parts: &[String]) -> ApiError {
    let name = path_name(parts);
    ApiError::invalid(
        format!("Invalid value for {name}: it was sent both as a scalar and as a hash or array."),
        Some(&name),
    )
}

/// Inserts one `key=value` pair at its path.
fn insert(root: &mut Node, parts: &[String], value: String) -> Result<(), ApiError> {
    let mut node = root;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        if part.is_empty() {
            // `a[]`: append to an array; `a[][k]` starts a new element when `k` is already set.
            if let Node::Map(m) = node {
                if m.is_empty() {
                    *node = Node::List(Vec::new());
                }
            }
            let Node::List(list) = node else {
                return Err(invalid_shape(&parts[..=depth]));
            };
            if last {
                list.push(Node::Str(value));
                return Ok(());
            }
            let next_key = &parts[depth + 1];
            let reuse = matches!(list.last(), Some(Node::Map(m)) if !m.contains_key(next_key));
            if !reuse {
                list.push(Node::empty());
            }
            node = list.last_mut().expect("just ensured an element");
            continue;
        }
        let Node::Map(map) = node else {
            return Err(invalid_shape(&parts[..=depth]));
        };
        if last {
            if matches!(map.get(part), Some(Node::Map(_)) | Some(Node::List(_))) {
                return Err(invalid_shape(parts));
            }
            map.insert(part.clone(), Node::Str(value));
            return Ok(());
        }
        let entry = map.entry(part.clone()).or_insert_with(Node::empty);
        if let Node::Str(_) = entry {
            return Err(invalid_shape(&parts[..=depth]));
        }
        node = entry;
    }
    Ok(())
}

/// Decodes a whole `application/x-www-form-urlencoded` body or query string.
pub fn parse(raw: &[u8]) -> Result<Node, ApiError> {
    let mut root = Node::empty();
    for pair in raw.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = decode_component(k)?;
        let value = decode_component(v)?;
        let parts = split_key(&key).ok_or_else(|| {
            ApiError::invalid(format!("Invalid parameter name: {key}"), Some(&key))
        })?;
        insert(&mut root, &parts, value)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_brackets_and_arrays_decode_to_a_tree() {
        let n = parse(
            b"items[0][price]=p1&items[1][price]=p2&expand[]=a&expand[]=b&metadata[k]=v%20w+x",
        )
        .unwrap();
        let items = n.get("items").unwrap().elements();
        assert_eq!(items[1].1.get("price").unwrap().as_str(), Some("p2"));
        assert_eq!(n.get("expand").unwrap().elements().len(), 2);
        assert_eq!(
            n.get("metadata").unwrap().get("k").unwrap().as_str(),
            Some("v w x")
        );
    }

    #[test]
    fn invalid_utf8_and_conflicting_shapes_are_rejected() {
        assert!(parse(b"name=%ff%fe").is_err());
        assert!(parse(b"a=1&a[b]=2").is_err());
        assert!(parse(b"a[b]=1&a=2").is_err());
        assert!(parse(b"a[b=1").is_err());
    }

    #[test]
    fn truncated_percent_escapes_are_kept_literally() {
        let n = parse(b"a=%4&b=%").unwrap();
        assert_eq!(n.get("a").unwrap().as_str(), Some("%4"));
        assert_eq!(n.get("b").unwrap().as_str(), Some("%"));
    }
}
