//! The SMTP transport of notices (lettre over tokio, TLS by rustls).
//!
//! `smtps://` is TLS from the first byte. `smtp://` upgrades with STARTTLS when the server offers it, and
//! requires it when credentials are configured and the server is not a loopback relay: credentials never
//! cross the network in the clear.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::config::SmtpEndpoint;

/// One SMTP exchange's bound (connect, TLS, every command).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole send (connect, TLS, every command): half the notice's lease.
const SEND_DEADLINE: Duration = Duration::from_secs(60);

/// How a send went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// A 4xx reply, a connection error or a timeout: try again later.
    Temporary(String),
    /// A 5xx reply: the server will not take this message.
    Permanent(String),
}

impl SendError {
    pub fn message(&self) -> &str {
        match self {
            Self::Temporary(m) | Self::Permanent(m) => m,
        }
    }
}

/// The SMTP server notices go to.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Removed from any error text, in case a server echoes them.
    password: Option<SecretString>,
    user: Option<SecretString>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailer")
    }
}

impl Mailer {
    /// A transport for `endpoint`; fails only on TLS set-up.
    pub fn new(endpoint: &SmtpEndpoint) -> Result<Self, String> {
        let params = TlsParameters::new(endpoint.host.clone())
            .map_err(|e| format!("SMTP TLS set-up failed: {e}"))?;
        let tls = if endpoint.implicit_tls {
            Tls::Wrapper(params)
        } else if endpoint.credentials.is_some() && !endpoint.is_loopback() {
            Tls::Required(params)
        } else {
            Tls::Opportunistic(params)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&endpoint.host)
            .port(endpoint.port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        let mut password = None;
        let mut user = None;
        if let Some((user_name, pass)) = &endpoint.credentials {
            builder = builder.credentials(Credentials::new(
                user_name.expose_secret().to_owned(),
                pass.expose_secret().to_owned(),
            ));
            password = Some(pass.clone());
            user = Some(user_name.clone());
        }
        Ok(Self {
            transport: builder.build(),
            password,
            user,
        })
    }

    /// Sends one message; the server accepted it when this returns `Ok`.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        // SMTP_TIMEOUT bounds each command; a slow server could still stretch a whole send past the
        // notice's lease, and another replica would send it again.
        let sent = match tokio::time::timeout(SEND_DEADLINE, self.transport.send(message)).await {
            Ok(sent) => sent,
            Err(_) => {
                return Err(SendError::Temporary(format!(
                    "the SMTP server took more than {} s",
                    SEND_DEADLINE.as_secs()
                )))
            }
        };
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = self.sanitize(&e.to_string());
                if e.is_permanent() {
                    Err(SendError::Permanent(text))
                } else {
                    Err(SendError::Temporary(text))
                }
            }
        }
    }

    /// A short, single-line error without the password.
    fn sanitize(&self, text: &str) -> String {
        let mut t: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        for secret in [&self.password, &self.user].into_iter().flatten() {
            let s = secret.expose_secret();
            if !s.is_empty() {
                t = t.replace(s, "***");
            }
        }
        t.chars().take(300).collect()
    }
}
