//! `email`: SMTP with STARTTLS (`smtp://host[:587]`) or implicit TLS (`smtps://host[:465]`),
//! through `lettre` (the maintained Rust mail crate: SMTP, both TLS modes on rustls, and
//! multipart MIME). Subject `[jobstats] <jobName> is <state>`, a plain text and an HTML
//! body. A 5xx reply is permanent; 4xx and connection failures are retried.

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{Failure, Message, Sent};

/// A validated `email` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte; `smtp://`: STARTTLS (required).
    pub implicit_tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

impl EmailSettings {
    pub fn validate(
        smtp_url: &str,
        username: Option<String>,
        password: Option<String>,
        from: &str,
        to: Vec<String>,
    ) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(smtp_url).map_err(|e| format!("smtp_url {smtp_url:?}: {e}"))?;
        let implicit_tls = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            _ => {
                return Err(format!(
                    "smtp_url {smtp_url:?}: smtp:// (STARTTLS) or smtps:// (implicit TLS)"
                ))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("smtp_url {smtp_url:?}: no host"))?
            .to_owned();
        let port = url.port().unwrap_or(if implicit_tls { 465 } else { 587 });
        if username.is_some() != password.is_some() {
            return Err("username and password: set both or neither".into());
        }
        let from: Mailbox = from.parse().map_err(|e| format!("from {from:?}: {e}"))?;
        if to.is_empty() {
            return Err("to: at least one address".into());
        }
        let to = to
            .iter()
            .map(|t| t.parse().map_err(|e| format!("to {t:?}: {e}")))
            .collect::<Result<Vec<Mailbox>, String>>()?;
        Ok(EmailSettings {
            host,
            port,
            implicit_tls,
            username,
            password,
            from,
            to,
        })
    }

    pub fn shown_target(&self) -> String {
        let scheme = if self.implicit_tls { "smtps" } else { "smtp" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    fn transport(&self, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failure> {
        let builder = if self.implicit_tls {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&self.host)
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&self.host)
        }
        .map_err(|e| Failure::Permanent(format!("TLS settings: {e}")))?;
        let mut builder = builder.port(self.port).timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(builder.build())
    }
}

/// The subject, the text body and the HTML body.
pub fn render(message: Message<'_>) -> (String, String, String) {
    let change = message.change;
    let since = change.since.as_deref().unwrap_or(&change.as_of);
    let subject = format!("[jobstats] {}", super::title(change));
    let mut text = format!(
        "{}\n\nJob:    {}\nTenant: {}\nState:  {} (was {})\nSince:  {since}\n",
        change.reason, change.job_name, change.tenant_id, change.state, change.previous_state
    );
    if let Some(execution) = &change.execution_id {
        text.push_str(&format!("Execution: {execution}\n"));
    }
    if let Some(link) = message.link {
        text.push_str(&format!("\n{link}\n"));
    }
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = format!(
        "<!DOCTYPE html><html><body><h2>{}</h2><p>{}</p><table>\
         <tr><th align=\"left\">Job</th><td>{}</td></tr>\
         <tr><th align=\"left\">Tenant</th><td>{}</td></tr>\
         <tr><th align=\"left\">State</th><td>{} (was {})</td></tr>\
         <tr><th align=\"left\">Since</th><td>{}</td></tr></table>",
        escape(&super::title(change)),
        escape(&change.reason),
        escape(&change.job_name),
        escape(&change.tenant_id),
        escape(&change.state),
        escape(&change.previous_state),
        escape(since),
    );
    if let Some(link) = message.link {
        html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>", escape(link)));
    }
    html.push_str("</body></html>");
    (subject, text, html)
}

pub async fn send(
    settings: &EmailSettings,
    timeout: Duration,
    message: Message<'_>,
) -> Result<Sent, Failure> {
    let (subject, text, html) = render(message);
    let mut builder = lettre::Message::builder()
        .from(settings.from.clone())
        .subject(subject)
        .message_id(Some(format!(
            "<{}.{}@jobstats>",
            hex_of(&message.change.message_id()),
            chrono::Utc::now().timestamp_millis()
        )));
    for to in &settings.to {
        builder = builder.to(to.clone());
    }
    let email = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )
        .map_err(|e| Failure::Permanent(format!("building the message: {e}")))?;
    let transport = settings.transport(timeout)?;
    // lettre's timeout bounds each read and write; the channel's is for the whole exchange
    // (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA), like an HTTP channel's.
    let sent = tokio::time::timeout(timeout, transport.send(email))
        .await
        .map_err(|_| Failure::Transient(format!("no answer within {} ms", timeout.as_millis())))?;
    match sent {
        Ok(response) => Ok(Sent::Answered(format!(
            "{} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        ))),
        Err(error) if error.is_permanent() => Err(Failure::Permanent(error_text(&error))),
        Err(error) => Err(Failure::Transient(error_text(&error))),
    }
}

fn error_text(error: &lettre::transport::smtp::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn hex_of(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
