//! Sources: the readers that turn Redis data into [`Record`](crate::rows::Record)s and push them
//! into the bounded channel.

pub mod ack;
pub mod capture;
pub mod entries;
pub mod keyspace;
pub mod notify;
pub mod stream;

use fred::prelude::*;

use crate::config::redact_url;

/// Errors of connecting a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Redis could not be reached or refused a command.
    #[error("Redis {instance} at {url}: {action}: {source}")]
    Redis {
        /// Instance short name.
        instance: String,
        /// URL (password redacted).
        url: String,
        /// What Spillway was doing.
        action: String,
        /// fred's error.
        source: fred::error::Error,
    },
    /// Keyspace notifications are not enabled as needed.
    #[error(transparent)]
    Notify(#[from] Box<notify::NotifyError>),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SourceError>;

/// A Redis endpoint: instance name and URL.
#[derive(Clone)]
pub struct Endpoint {
    /// Instance short name (`rls`, ...).
    pub instance: String,
    /// URL, possibly with credentials.
    pub url: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.instance, redact_url(&self.url))
    }
}

impl Endpoint {
    /// Turns a fred error into a [`SourceError`] for `action`.
    pub fn err(&self, action: &str) -> impl FnOnce(fred::error::Error) -> SourceError {
        let (instance, url, action) = (
            self.instance.clone(),
            redact_url(&self.url),
            action.to_string(),
        );
        move |source| SourceError::Redis {
            instance,
            url,
            action,
            source,
        }
    }

    /// A fred builder for this endpoint on database `db`, reconnecting with capped exponential
    /// backoff, with a pub/sub buffer of `buffer` messages.
    pub fn builder(&self, db: u8, buffer: usize) -> Result<Builder> {
        let mut config = Config::from_url(&self.url).map_err(self.err("parsing the URL"))?;
        config.database = Some(db);
        let mut b = Builder::from_config(config);
        b.with_performance_config(|p| p.broadcast_channel_capacity = buffer)
            .with_connection_config(|c| {
                c.connection_timeout = std::time::Duration::from_secs(5);
                c.internal_command_timeout = std::time::Duration::from_secs(10);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 10_000, 2));
        Ok(b)
    }

    /// A connected command client on database `db`.
    pub async fn client(&self, db: u8) -> Result<Client> {
        let client = self
            .builder(db, 32)?
            .build()
            .map_err(self.err("building a client"))?;
        client.init().await.map_err(self.err("connecting"))?;
        Ok(client)
    }
}
