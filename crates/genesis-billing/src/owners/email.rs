//! The MIME message of a notice: From, To, Subject, a stable Message-ID, and plain text + HTML parts.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::templates::Rendered;

/// Why a message could not be built (a bad recipient address is the owner record's problem: the notice
/// is failed with this reason, not retried).
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("the recipient address is not a valid email address")]
    BadRecipient,
    #[error("the From address is not valid")]
    BadFrom,
    #[error("the message could not be built: {0}")]
    Build(String),
}

/// Builds the message. `message_id` is `<…@…>`, derived from the notice's cause.
pub fn build(
    from: &str,
    to: &str,
    message_id: &str,
    rendered: &Rendered,
) -> Result<Message, EmailError> {
    let from: Mailbox = from.parse().map_err(|_| EmailError::BadFrom)?;
    let to: Mailbox = to.trim().parse().map_err(|_| EmailError::BadRecipient)?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(rendered.subject.clone())
        .message_id(Some(message_id.to_owned()))
        .date_now()
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(rendered.text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(rendered.html.clone()),
                ),
        )
        .map_err(|e| EmailError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(subject: &str) -> Rendered {
        Rendered {
            subject: subject.into(),
            text: "plain".into(),
            html: "<p>html</p>".into(),
        }
    }

    #[test]
    fn a_message_has_both_parts_and_the_given_message_id() {
        let m = build(
            "Billing <billing@example.org>",
            "owner@example.com",
            "<abc@notices.genesis-billing>",
            &rendered("Payment failed"),
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(
            text.contains("Message-ID: <abc@notices.genesis-billing>"),
            "{text}"
        );
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains("text/plain") && text.contains("text/html"));
        assert!(text.contains("To: owner@example.com"));
    }

    #[test]
    fn a_hostile_recipient_is_refused() {
        for to in [
            "",
            "not an address",
            "a@b.c\r\nBcc: x@evil.example",
            "<a@b>, c@d",
        ] {
            assert!(
                matches!(
                    build("b@example.org", to, "<x@y>", &rendered("s")),
                    Err(EmailError::BadRecipient)
                ),
                "{to:?}"
            );
        }
    }
}
