//! Where a service keeps its rows, shared by every service with a database:
//! [`DatabaseUrl`] (a URL whose password never prints), [`DatabaseLocation`]
//! (the embedded SQLite file or a URL), and, with the `sql` feature,
//! [`connect`], which opens either one with the same pool settings and the
//! same SQLite pragmas everywhere.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a service keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// The embedded SQLite file.
    SqliteFile(PathBuf),
    /// A database URL (`postgres://`, `postgresql://` or `sqlite:`).
    Url(DatabaseUrl),
}

impl DatabaseLocation {
    /// The file, or the URL without its password, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::SqliteFile(path) => path.display().to_string(),
            Self::Url(url) => url.redacted(),
        }
    }
}

/// A database URL. It may hold a password, so `Debug` and `Display` show it
/// with the password replaced.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the database driver only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this is a PostgreSQL URL.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// Whether the scheme is one the services support (PostgreSQL or SQLite).
    #[must_use]
    pub fn has_supported_scheme(&self) -> bool {
        self.is_postgres() || self.0.starts_with("sqlite:")
    }

    /// The URL with any password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _password)| user);
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}{path}")
                } else {
                    format!("{scheme}://{user}@{host}{path}")
                }
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(feature = "sql")]
pub use pool::{PoolSettings, connect};

#[cfg(feature = "sql")]
mod pool {
    use std::time::Duration;

    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

    use super::DatabaseLocation;

    /// How long SQLite waits for another connection's write lock.
    const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    /// The pool a service asks for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PoolSettings {
        /// Most pooled connections.
        pub max_connections: u32,
        /// How long to wait for a connection (and to open one).
        pub connect_timeout: Duration,
        /// SQLite page cache per connection, in KiB (SQLite's default is 2048).
        pub sqlite_cache_kib: u32,
    }

    /// Connects to `location`, creating the SQLite file and its directory if
    /// needed. SQLite runs in WAL mode with `synchronous = NORMAL`: a power
    /// loss may drop the last commits, never integrity, and a commit does not
    /// wait for an fsync.
    pub async fn connect(location: &DatabaseLocation, settings: PoolSettings) -> Result<DatabaseConnection, DbErr> {
        let url = match location {
            DatabaseLocation::SqliteFile(path) => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|error| {
                        DbErr::Custom(format!("cannot create data directory {}: {error}", dir.display()))
                    })?;
                }
                format!("sqlite://{}?mode=rwc", path.display())
            }
            DatabaseLocation::Url(url) => url.expose().to_owned(),
        };
        let cache_size = format!("-{}", settings.sqlite_cache_kib);
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .connect_timeout(settings.connect_timeout)
            .acquire_timeout(settings.connect_timeout)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |sqlite| {
                sqlite
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    // A negative cache_size is in KiB rather than pages.
                    .pragma("cache_size", cache_size.clone())
                    .create_if_missing(true)
            });
        Database::connect(options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::new("postgres://mesh:hunter2@127.0.0.1:5432/users");
        assert_eq!(url.redacted(), "postgres://mesh:***@127.0.0.1:5432/users");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(DatabaseLocation::Url(url).describe(), "postgres://mesh:***@127.0.0.1:5432/users");
        assert_eq!(DatabaseUrl::new("postgres://h/db").redacted(), "postgres://h/db");
        assert!(DatabaseUrl::new("sqlite://x.db").has_supported_scheme());
        assert!(!DatabaseUrl::new("mysql://x").has_supported_scheme());
    }
}
