//! Where a service keeps its rows, shared by every service with a database:
//! [`DatabaseUrl`] (a URL whose password never prints), [`DatabaseLocation`]
//! (the embedded SQLite file or a URL), and, with the `sql` feature,
//! [`connect`], which opens either one with the same pool settings and the
//! same SQLite pragmas everywhere. With the `test-database` feature,
//! [`TestDatabase`] gives each store test a fresh SQLite file or PostgreSQL
//! database.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigProblem;

/// Where a service keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// The embedded SQLite file.
    SqliteFile(PathBuf),
    /// A database URL (`postgres://`, `postgresql://` or `sqlite:`).
    Url(DatabaseUrl),
}

impl DatabaseLocation {
    /// Where a service configured with `database_url` and `data_dir` keeps its
    /// rows: the URL when one is set, else `file_name` in the data directory.
    #[must_use]
    pub fn from_settings(database_url: &DatabaseUrl, data_dir: &std::path::Path, file_name: &str) -> Self {
        if database_url.is_empty() {
            Self::SqliteFile(data_dir.join(file_name))
        } else {
            Self::Url(database_url.clone())
        }
    }

    /// The problems of a service's `database_url` / `data_dir` pair, with the
    /// same wording in every service that has a store.
    pub fn check_settings(problems: &mut Vec<ConfigProblem>, database_url: &DatabaseUrl, data_dir: &std::path::Path) {
        if !database_url.is_empty() && !database_url.has_supported_scheme() {
            problems.push(ConfigProblem::new(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite: (or be empty for the embedded SQLite file)",
            ));
        }
        if database_url.is_empty() && data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem::new("data_dir", "must not be empty when database_url is unset"));
        }
    }

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

#[cfg(feature = "test-database")]
pub use test_database::{POSTGRES_URL_VAR, TestDatabase};

#[cfg(feature = "test-database")]
mod test_database {
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

    use super::{DatabaseLocation, DatabaseUrl, PoolSettings, connect};
    use crate::ConfigSource;

    /// The variable naming a PostgreSQL role allowed to create databases
    /// (`services/vpnusers/scripts/test-postgres` prints one).
    pub const POSTGRES_URL_VAR: &str = "MESH_TEST_POSTGRES_URL";

    /// One test's database: a SQLite file in a temporary directory (gone on
    /// drop) or a database of its own on the PostgreSQL test server (dropped
    /// by [`TestDatabase::finish`]).
    #[derive(Debug)]
    pub struct TestDatabase {
        /// Where the service under test keeps its rows.
        pub location: DatabaseLocation,
        /// `sqlite` or `postgres`, for test names and messages.
        pub backend_name: &'static str,
        _sqlite_dir: Option<tempfile::TempDir>,
        postgres: Option<(String, String)>,
    }

    impl TestDatabase {
        /// A new SQLite file named `file_name` in a temporary directory.
        ///
        /// # Panics
        /// When no temporary directory can be made.
        #[must_use]
        pub fn sqlite(file_name: &str) -> Self {
            let dir = tempfile::tempdir().expect("temporary directory");
            let location = DatabaseLocation::SqliteFile(dir.path().join(file_name));
            Self { location, backend_name: "sqlite", _sqlite_dir: Some(dir), postgres: None }
        }

        /// A new PostgreSQL database named `<prefix>_<random>`, or `None`
        /// (with a note on stderr) when no test server is configured. Under
        /// CI (`CI` set) a missing server fails instead of skipping.
        ///
        /// # Panics
        /// Under CI without a server, or when the server refuses the database.
        pub async fn postgres(prefix: &str) -> Option<Self> {
            let source = ConfigSource::from_process();
            let Some(admin_url) = source.var(POSTGRES_URL_VAR) else {
                assert!(
                    source.var("CI").is_none(),
                    "{POSTGRES_URL_VAR} is not set under CI; run services/vpnusers/scripts/test-postgres"
                );
                eprintln!("skipping the PostgreSQL half: {POSTGRES_URL_VAR} is not set");
                return None;
            };
            let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
            let admin = Database::connect(admin_url).await.expect("connect to the PostgreSQL test server");
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
            let (base, _) = admin_url.rsplit_once('/').expect("the URL names a database");
            Some(Self {
                location: DatabaseLocation::Url(DatabaseUrl::new(format!("{base}/{name}"))),
                backend_name: "postgres",
                _sqlite_dir: None,
                postgres: Some((admin_url.to_owned(), name)),
            })
        }

        /// The SQLite file's directory (a service's `data_dir`), if SQLite.
        #[must_use]
        pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
            match &self.location {
                DatabaseLocation::SqliteFile(path) => path.parent(),
                DatabaseLocation::Url(_) => None,
            }
        }

        /// A small pool on this database, for tests that read or edit rows
        /// the API does not show.
        ///
        /// # Panics
        /// When the database cannot be opened.
        pub async fn connect(&self) -> DatabaseConnection {
            let pool =
                PoolSettings { max_connections: 2, connect_timeout: Duration::from_secs(5), sqlite_cache_kib: 2048 };
            connect(&self.location, pool).await.expect("connect to the test database")
        }

        /// Drops the PostgreSQL database (SQLite's directory goes on drop).
        ///
        /// # Panics
        /// When the PostgreSQL test server cannot drop it.
        pub async fn finish(self) {
            if let Some((admin_url, name)) = &self.postgres {
                let admin = Database::connect(admin_url.as_str()).await.expect("connect to the PostgreSQL test server");
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .expect("drop test database");
            }
        }
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

    #[test]
    fn settings_choose_the_url_or_the_file_and_name_their_problems() {
        let dir = std::path::Path::new("/var/lib/mesh");
        assert_eq!(
            DatabaseLocation::from_settings(&DatabaseUrl::default(), dir, "jobs.sqlite3"),
            DatabaseLocation::SqliteFile(dir.join("jobs.sqlite3"))
        );
        let url = DatabaseUrl::new("postgres://h/db");
        assert_eq!(DatabaseLocation::from_settings(&url, dir, "jobs.sqlite3"), DatabaseLocation::Url(url.clone()));

        let mut problems = Vec::new();
        DatabaseLocation::check_settings(&mut problems, &url, dir);
        assert!(problems.is_empty(), "{problems:?}");
        DatabaseLocation::check_settings(&mut problems, &DatabaseUrl::new("mysql://h/db"), dir);
        DatabaseLocation::check_settings(&mut problems, &DatabaseUrl::default(), std::path::Path::new(""));
        let fields: Vec<&str> = problems.iter().map(|problem| problem.field.as_str()).collect();
        assert_eq!(fields, ["database_url", "data_dir"]);
    }
}
