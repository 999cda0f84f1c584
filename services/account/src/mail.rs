//! The mail outbox. Production sends through SMTP (`LICENSING_SMTP_URL`, e.g. a local relay at
//! `smtp://127.0.0.1:25`); the embedded default writes each mail as a file under
//! `<data dir>/outbox/`, where a person can read it.

use async_trait::async_trait;
use std::path::PathBuf;

/// One mail to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Sends portal mail (password resets).
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
    /// An outbox writing into `dir` (created when needed).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

#[async_trait]
impl Mailer for FileOutbox {
    async fn send(&self, mail: &Mail) -> Result<(), String> {
        let failed = |e: std::io::Error| format!("outbox {}: {e}", self.dir.display());
        tokio::fs::create_dir_all(&self.dir).await.map_err(failed)?;
        let id = licensing_domain::ids::new_id("mail");
        let text = format!("To: {}\r\nSubject: {}\r\n\r\n{}\r\n", mail.to, mail.subject, mail.body);
        // Written under a name no reader looks for, then renamed: whoever lists `*.eml` sees
        // each mail whole or not at all, never empty or half written.
        let partial = self.dir.join(format!(".{id}.partial"));
        tokio::fs::write(&partial, text).await.map_err(failed)?;
        tokio::fs::rename(&partial, self.dir.join(format!("{id}.eml"))).await.map_err(failed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_of_the_outbox_never_sees_a_mail_before_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::new(dir.path().to_path_buf());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (dir, done) = (dir.path().to_path_buf(), done.clone());
            std::thread::spawn(move || {
                // Each mail is read once, as soon as it shows up, so the loop stays quick.
                let mut seen = std::collections::HashSet::new();
                while !done.load(Ordering::Relaxed) {
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let path = entry.path();
                        if path.extension().is_some_and(|e| e == "eml") && !seen.contains(&path) {
                            let text = std::fs::read(&path).unwrap();
                            assert!(
                                text.ends_with(b"the end\r\n"),
                                "{} read with {} bytes",
                                path.display(),
                                text.len()
                            );
                            seen.insert(path);
                        }
                    }
                }
                seen.len()
            })
        };
        let body = format!("{}the end", "x".repeat(1024 * 1024));
        for _ in 0..40 {
            let mail = Mail { to: "a@b.example".into(), subject: "s".into(), body: body.clone() };
            outbox.send(&mail).await.unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0, "the reader saw mails");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 40);
        assert!(names.iter().all(|n| n.ends_with(".eml")), "no partial file is left: {names:?}");
    }
}
