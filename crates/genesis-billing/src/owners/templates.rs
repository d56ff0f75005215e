//! The words of each notice: a subject, a plain-text body and an HTML body per kind, built in and
//! overridable from a directory (`GENESIS_NOTICE_TEMPLATES`: `{kind}.subject`, `{kind}.txt`,
//! `{kind}.html`, each optional).
//!
//! A template names values as `{{name}}`. Every value comes from a record (a business name, an amount, a
//! link), so it is escaped for where it lands: HTML-escaped in HTML, CR/LF and other control characters
//! removed in the subject. Templates themselves are the operator's, not escaped.

use std::collections::HashMap;
use std::path::Path;

/// Largest template file read; a notice is a few lines.
const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

/// One kind's three parts.
#[derive(Debug, Clone)]
pub struct Template {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The rendered parts of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

const HTML_HEAD: &str = "<!DOCTYPE html><html><body style=\"font-family: sans-serif\">";
const HTML_TAIL: &str = "<p style=\"color:#666;font-size:small\">This message was sent by the billing service of {{business_name}}.</p></body></html>";

/// The built-in template of `kind` (one of `config::NOTICE_KINDS`).
fn builtin(kind: &str) -> Template {
    let (subject, text, html): (&str, &str, &str) = match kind {
        "payment_failed" => (
            "Payment failed for {{business_name}}",
            "Hello,\n\nWe could not charge {{amount}} for {{business_name}}.\n\
             Next automatic attempt: {{next_attempt}}.\n\n\
             Update your payment method here:\n{{manage_url}}\n\n\
             (This link works until {{link_expires}}.)\n",
            "<p>Hello,</p><p>We could not charge <strong>{{amount}}</strong> for {{business_name}}.</p>\
             <p>Next automatic attempt: {{next_attempt}}.</p>\
             <p><a href=\"{{manage_url}}\">Update your payment method</a> (this link works until {{link_expires}}).</p>",
        ),
        "action_required" => (
            "Please confirm the payment for {{business_name}}",
            "Hello,\n\nYour bank asks you to confirm the payment of {{amount}} for {{business_name}}.\n\n\
             Confirm it here:\n{{hosted_invoice_url}}\n",
            "<p>Hello,</p><p>Your bank asks you to confirm the payment of <strong>{{amount}}</strong> for \
             {{business_name}}.</p><p><a href=\"{{hosted_invoice_url}}\">Confirm the payment</a></p>",
        ),
        "trial_ending" => (
            "The trial of {{business_name}} ends on {{trial_end}}",
            "Hello,\n\nThe trial of {{business_name}} ends on {{trial_end}} and no payment method is on file.\n\n\
             Add one here:\n{{manage_url}}\n\n(This link works until {{link_expires}}.)\n",
            "<p>Hello,</p><p>The trial of {{business_name}} ends on <strong>{{trial_end}}</strong> and no \
             payment method is on file.</p><p><a href=\"{{manage_url}}\">Add a payment method</a> (this link \
             works until {{link_expires}}).</p>",
        ),
        "billing_ended" => (
            "Billing ended for {{business_name}}",
            "Hello,\n\nBilling for {{business_name}} has ended and the business was taken down: {{reason}}.\n\
             Nothing more will be charged.\n",
            "<p>Hello,</p><p>Billing for {{business_name}} has ended and the business was taken down: \
             {{reason}}.</p><p>Nothing more will be charged.</p>",
        ),
        // rolled_back
        _ => (
            "Billing stopped for {{business_name}}",
            "Hello,\n\nBilling for {{business_name}} has stopped: its subscription was cancelled.\n\
             Nothing more will be charged.\n",
            "<p>Hello,</p><p>Billing for {{business_name}} has stopped: its subscription was cancelled.</p>\
             <p>Nothing more will be charged.</p>",
        ),
    };
    Template {
        subject: subject.to_owned(),
        text: text.to_owned(),
        html: format!("{HTML_HEAD}{html}{HTML_TAIL}"),
    }
}

/// Every kind's template, the operator's files first.
#[derive(Debug, Clone)]
pub struct Templates {
    by_kind: HashMap<String, Template>,
}

/// A template file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("notice template {path}: {reason}")]
pub struct TemplateError {
    pub path: String,
    pub reason: String,
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Self {
        Self {
            by_kind: crate::config::NOTICE_KINDS
                .iter()
                .map(|k| ((*k).to_owned(), builtin(k)))
                .collect(),
        }
    }

    /// The built-in templates with the files found in `dir` in their place.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut t = Self::builtin();
        let Some(dir) = dir else {
            return Ok(t);
        };
        if !dir.is_dir() {
            return Err(TemplateError {
                path: dir.display().to_string(),
                reason: "not a readable directory (GENESIS_NOTICE_TEMPLATES)".into(),
            });
        }
        for kind in crate::config::NOTICE_KINDS {
            let entry = t.by_kind.get_mut(*kind).expect("every kind is built in");
            for (ext, part) in [
                ("subject", &mut entry.subject),
                ("txt", &mut entry.text),
                ("html", &mut entry.html),
            ] {
                let path = dir.join(format!("{kind}.{ext}"));
                if let Some(text) = read_template(&path)? {
                    *part = if ext == "subject" {
                        text.trim().to_owned()
                    } else {
                        text
                    };
                }
            }
        }
        Ok(t)
    }

    /// Renders `kind` with `values`; a name without a value renders empty.
    pub fn render(&self, kind: &str, values: &HashMap<&str, String>) -> Rendered {
        let fallback;
        let t = match self.by_kind.get(kind) {
            Some(t) => t,
            None => {
                fallback = builtin(kind);
                &fallback
            }
        };
        Rendered {
            subject: fill(&t.subject, values, subject_safe)
                .chars()
                .take(200)
                .collect(),
            text: fill(&t.text, values, |v| v.to_owned()),
            html: fill(&t.html, values, html_escape),
        }
    }
}

fn read_template(path: &Path) -> Result<Option<String>, TemplateError> {
    let err = |reason: String| TemplateError {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.kind().to_string())),
    };
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(err(format!("larger than {MAX_TEMPLATE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.kind().to_string()))?;
    Ok(Some(text))
}

/// Replaces each `{{name}}` with its escaped value.
fn fill(template: &str, values: &HashMap<&str, String>, escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                if let Some(v) = values.get(name) {
                    out.push_str(&escape(v));
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// HTML-escapes text for element content and quoted attributes.
pub fn html_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for a header: control characters (CR, LF, …) dropped, so it cannot start a new header.
pub fn subject_safe(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str) -> HashMap<&'static str, String> {
        HashMap::from([
            ("business_name", name.to_owned()),
            ("amount", "USD 5.00".to_owned()),
            (
                "manage_url",
                "https://b.example/billing/manage?token=v1.x&y=\"z\"".to_owned(),
            ),
        ])
    }

    #[test]
    fn a_business_name_with_html_arrives_as_text_and_cannot_break_the_subject() {
        let t = Templates::builtin();
        let r = t.render(
            "payment_failed",
            &values("<script>alert(1)</script>\r\nBcc: x@evil"),
        );
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(r.html.contains("token=v1.x&amp;y=&quot;z&quot;"));
        assert!(!r.subject.contains('\r') && !r.subject.contains('\n'));
        assert_eq!(
            r.subject,
            "Payment failed for <script>alert(1)</script>Bcc: x@evil"
        );
        assert!(r.text.contains("We could not charge USD 5.00"));
    }

    #[test]
    fn operator_templates_replace_the_built_in_ones_part_by_part() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("payment_failed.subject"),
            "Pay {{amount}} now\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rolled_back.html"),
            "<b>{{business_name}}</b>",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let r = t.render("payment_failed", &values("A&B"));
        assert_eq!(r.subject, "Pay USD 5.00 now");
        assert!(r.text.contains("A&B"), "text is not escaped");
        assert_eq!(
            t.render("rolled_back", &values("A&B")).html,
            "<b>A&amp;B</b>"
        );
        std::fs::write(dir.path().join("trial_ending.txt"), "x".repeat(70_000)).unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("trial_ending.txt"), "{err}");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_do_not_panic() {
        let v = values("n");
        assert_eq!(fill("a {{nope}} b {{", &v, |s| s.to_owned()), "a  b {{");
        assert_eq!(fill("{{ business_name }}", &v, |s| s.to_owned()), "n");
    }
}
