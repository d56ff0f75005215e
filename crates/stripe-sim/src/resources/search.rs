//! The subset of Stripe's search query language the simulator understands (`metadata['k']:'v'`, `email:'x'`, `-`, `~`, numeric comparisons, `AND`/`OR`), and search result pages.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::{expand_all, limit};
use crate::state::State;
use crate::store::OrderKey;

/// Parameters of every search endpoint.
const SEARCH: &[(&str, Spec)] = &[
    ("query", Spec::Str),
    ("limit", Spec::Int),
    ("page", Spec::Str),
];

#[derive(Debug, PartialEq)]
enum Op {
    Eq,
    Contains,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug)]
struct Clause {
    negate: bool,
    /// `None` for metadata, with the key in `meta_key`.
    field: String,
    meta_key: Option<String>,
    op: Op,
    value: String,
}

fn bad_query(msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg, Some("query"))
}

/// Parses a quoted string at the start of `s`, returning it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            if let Some((_, n)) = chars.next() {
                out.push(n);
            }
        } else if c == q {
            return Some((out, &s[1 + i + 1..]));
        } else {
            out.push(c);
        }
    }
    None
}

fn parse_clause<'a>(mut s: &'a str, fields: &[&str]) -> ApiResult<(Clause, &'a str)> {
    s = s.trim_start();
    let negate = s.starts_with('-');
    if negate {
        s = &s[1..];
    }
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    let field = s[..name_end].to_owned();
    s = &s[name_end..];
    let mut meta_key = None;
    if field == "metadata" {
        let rest = s
            .strip_prefix('[')
            .ok_or_else(|| bad_query("Expected metadata['key'] in the search query."))?;
        let (k, rest) = quoted(rest).ok_or_else(|| bad_query("Expected a quoted metadata key."))?;
        s = rest
            .strip_prefix(']')
            .ok_or_else(|| bad_query("Expected ']' after the metadata key."))?;
        meta_key = Some(k);
    } else if !fields.contains(&field.as_str()) {
        return Err(bad_query(format!(
            "Field '{field}' is an unsupported search field for this resource. Supported fields: {}.",
            fields.join(", ")
        )));
    }
    let (op, rest) = [
        (">=", Op::Gte),
        ("<=", Op::Lte),
        (">", Op::Gt),
        ("<", Op::Lt),
        (":", Op::Eq),
        ("~", Op::Contains),
    ]
    .into_iter()
    .find_map(|(tok, op)| s.strip_prefix(tok).map(|r| (op, r)))
    .ok_or_else(|| {
        bad_query(format!(
            "Expected an operator after '{field}' in the search query."
        ))
    })?;
    let rest = rest.trim_start();
    let (value, rest) = match quoted(rest) {
        Some(x) => x,
        None => {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if end == 0 {
                return Err(bad_query("Expected a value in the search query."));
            }
            (rest[..end].to_owned(), &rest[end..])
        }
    };
    Ok((
        Clause {
            negate,
            field,
            meta_key,
            op,
            value,
        },
        rest,
    ))
}

/// A parsed query: clauses and whether they are joined by `OR`.
struct Query {
    clauses: Vec<Clause>,
    any: bool,
}

fn parse_query(q: &str, fields: &[&str]) -> ApiResult<Query> {
    let mut clauses = Vec::new();
    let mut joiner: Option<bool> = None;
    let mut rest = q.trim();
    if rest.is_empty() {
        return Err(bad_query("The search query cannot be empty."));
    }
    loop {
        let (c, r) = parse_clause(rest, fields)?;
        clauses.push(c);
        let r = r.trim_start();
        if r.is_empty() {
            break;
        }
        let (is_or, r) = if let Some(r) = r.strip_prefix("AND ") {
            (false, r)
        } else if let Some(r) = r.strip_prefix("OR ") {
            (true, r)
        } else {
            return Err(bad_query(format!(
                "Could not parse the search query near '{r}'."
            )));
        };
        if joiner.is_some_and(|j| j != is_or) {
            return Err(bad_query("Search queries cannot mix AND and OR."));
        }
        joiner = Some(is_or);
        rest = r;
    }
    Ok(Query {
        clauses,
        any: joiner == Some(true),
    })
}

fn matches(c: &Clause, v: &Value) -> bool {
    let target = match &c.meta_key {
        Some(k) => &v["metadata"][k],
        None => &v[c.field.as_str()],
    };
    let hit = match (&c.op, target) {
        (Op::Eq, Value::String(s)) => *s == c.value,
        (Op::Eq, Value::Bool(b)) => b.to_string() == c.value,
        (Op::Eq, Value::Number(n)) => n.to_string() == c.value,
        (Op::Eq, Value::Null) => c.value.is_empty() || c.value == "null",
        (Op::Contains, Value::String(s)) => s.to_lowercase().contains(&c.value.to_lowercase()),
        (op, Value::Number(n)) => {
            let (Some(a), Ok(b)) = (n.as_i64(), c.value.parse::<i64>()) else {
                return false;
            };
            match op {
                Op::Gt => a > b,
                Op::Gte => a >= b,
                Op::Lt => a < b,
                Op::Lte => a <= b,
                _ => false,
            }
        }
        _ => false,
    };
    hit != c.negate
}

/// Runs a search over one object type. Unlike Stripe, new objects are searchable at once (no indexing delay).
pub fn search(
    state: &State,
    kind: &str,
    params: &Node,
    url: &str,
    fields: &[&str],
    visible: impl Fn(&Value) -> bool,
) -> ApiResult<Value> {
    validate(params, &[SEARCH])?;
    let p = Params::root(params);
    let query = parse_query(p.req("query")?, fields)?;
    let limit = limit(&p)?;
    let empty = std::collections::BTreeMap::new();
    let index = state.store.by_created(kind).unwrap_or(&empty);
    // Newest first, as lists; the page token is the position (`created`, insertion number) of the last hit.
    let older: Box<dyn Iterator<Item = (&OrderKey, &String)>> = match p.nonempty("page") {
        Some(page) => {
            let key: OrderKey = page
                .strip_prefix("page_")
                .and_then(|s| s.split_once('_'))
                .and_then(|(c, s)| Some((c.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| {
                    ApiError::invalid("Invalid page: the page token is not valid.", Some("page"))
                })?;
            Box::new(index.range(..key).rev())
        }
        None => Box::new(index.iter().rev()),
    };
    let mut hits: Vec<(OrderKey, Value)> = older
        .filter_map(|(key, id)| state.store.get(id).map(|v| (*key, v)))
        .filter(|(_, v)| visible(v))
        .filter(|(_, v)| {
            if query.any {
                query.clauses.iter().any(|c| matches(c, v))
            } else {
                query.clauses.iter().all(|c| matches(c, v))
            }
        })
        .take(limit + 1)
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let has_more = hits.len() > limit;
    hits.truncate(limit);
    let next_page = if has_more {
        hits.last().map(|((c, s), _)| format!("page_{c}_{s}"))
    } else {
        None
    };
    let data: Vec<Value> = hits.into_iter().map(|(_, v)| v).collect();
    let mut out = json!({
        "object": "search_result",
        "data": data,
        "has_more": has_more,
        "next_page": next_page,
        "url": url,
    });
    expand_all(state, &mut out, params)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_field_clauses_parse_and_match() {
        let q = parse_query(
            "metadata['business_id']:'b1' AND -email:\"x@y\"",
            &["email"],
        )
        .unwrap();
        let v = json!({"metadata": {"business_id": "b1"}, "email": "z@y"});
        assert!(q.clauses.iter().all(|c| matches(c, &v)));
        assert!(parse_query("email:'a' AND email:'b' OR email:'c'", &["email"]).is_err());
        assert!(parse_query("nope:'a'", &["email"]).is_err());
        let q = parse_query("created>=10", &["created"]).unwrap();
        assert!(matches(&q.clauses[0], &json!({"created": 10})));
    }
}
