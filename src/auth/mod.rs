//! Who is asking. For now every caller is anonymous: client authentication
//! (API keys, JWT, tickets) is its own issue. The config refuses a non-loopback
//! listener without `server.allow_anonymous`, so anonymous is only ever served
//! where that was chosen explicitly.

/// The authenticated caller a grant is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` for an anonymous caller.
    pub subject: Option<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal { subject: None }
    }

    /// For logs: the subject, or `anonymous`.
    pub fn display(&self) -> &str {
        self.subject.as_deref().unwrap_or("anonymous")
    }
}
