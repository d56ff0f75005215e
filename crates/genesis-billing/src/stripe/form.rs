//! Stripe's `application/x-www-form-urlencoded` encoding with bracket notation (`metadata[k]=v`).

/// An ordered list of form parameters; nested keys are spelled out with brackets by the caller's helpers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key=value`.
    pub fn add(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.pairs.push((key.into(), value.into()));
        self
    }

    /// Adds `key=value` when the value is present.
    pub fn add_opt(self, key: impl Into<String>, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.add(key, v),
            None => self,
        }
    }

    /// Adds `parent[k]=v` for every entry, as Stripe's metadata and nested hashes expect.
    pub fn add_map<'a>(
        mut self,
        parent: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        for (k, v) in entries {
            self.pairs.push((format!("{parent}[{k}]"), v.to_owned()));
        }
        self
    }

    /// Adds `parent[]=v` for every value (Stripe's scalar array form).
    pub fn add_list<'a>(mut self, parent: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        for v in values {
            self.pairs.push((format!("{parent}[]"), v.to_owned()));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The percent-encoded body or query string.
    pub fn encode(&self) -> String {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            ser.append_pair(k, v);
        }
        ser.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_and_arrays_use_brackets_and_are_percent_encoded() {
        let form = Form::new()
            .add("items[0][price]", "price_123")
            .add_map("metadata", [("business_id", "a b&c")])
            .add_list("expand", ["latest_invoice"]);
        assert_eq!(
            form.encode(),
            "items%5B0%5D%5Bprice%5D=price_123&metadata%5Bbusiness_id%5D=a+b%26c&expand%5B%5D=latest_invoice"
        );
    }

    #[test]
    fn optional_values_are_skipped_when_absent() {
        let form = Form::new()
            .add_opt("email", None::<String>)
            .add_opt("name", Some("x"));
        assert_eq!(form.encode(), "name=x");
    }
}
