//! The mail outbox. Production sends through SMTP (`LICENSING_SMTP_URL`, e.g. a local relay at
//! `smtp://127.0.0.1:25`); the embedded default writes each mail as a file under
//! `<data dir>/outbox/`, where a person can read it.

use async_trait::async_trait;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Delivers one mail; the error is a person-readable reason (never the mail's content).
    async fn send(&self, mail: &Mail) -> Result<(), String>;
}

/// Writes mails as `.eml` files into a directory.
pub struct FileOutbox {
    dir: PathBuf,
}

impl FileOutbox {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

#[async_trait]
impl Mailer for FileOutbox {
    async fn send(&self, mail: &Mail) -> Result<(), String> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| format!("outbox {}: {e}", self.dir.display()))?;
        let name = format!("{}.eml", licensing_domain::ids::new_id("mail"));
        let text = format!("To: {}\r\nSubject: {}\r\n\r\n{}\r\n", mail.to, mail.subject, mail.body);
        tokio::fs::write(self.dir.join(name), text).await.map_err(|e| format!("outbox {}: {e}", self.dir.display()))
    }
}

/// Sends through an SMTP server (plain SMTP to a relay; TLS relays go through a local MTA).
pub struct SmtpMailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl SmtpMailer {
    /// `url`: `smtp://host[:port]`.
    pub fn new(url: &str, from: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("smtp://").ok_or("LICENSING_SMTP_URL must look like smtp://host:port")?;
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| format!("bad SMTP port in {url}"))?),
            None => (rest.trim_end_matches('/').to_owned(), 25),
        };
        let transport =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host).port(port).build();
        let from = from.parse().map_err(|e| format!("LICENSING_MAIL_FROM: {e}"))?;
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<(), String> {
        use lettre::AsyncTransport;
        let to = mail.to.parse().map_err(|e| format!("recipient: {e}"))?;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .body(mail.body.clone())
            .map_err(|e| format!("building the mail: {e}"))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| format!("SMTP: {e}"))
    }
}
