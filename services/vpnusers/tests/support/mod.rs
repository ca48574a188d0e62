//! Test databases: a fresh SQLite file, or a fresh PostgreSQL database on the
//! server named by `MESH_TEST_POSTGRES_URL` (see `scripts/test-postgres`).
//! Without that variable the PostgreSQL half of a test is skipped, with a
//! note on stderr, unless `CI` is set, where a missing server fails the test.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of the harness
#![allow(clippy::doc_markdown)] // product names (SQLite, PostgreSQL) are prose here, not code

use std::sync::Arc;
use std::time::Duration;

use mesh_kit::ConfigSource;
use mesh_vpnusers::{DatabaseLocation, DatabaseUrl, UserDirectory, UserStore, VpnUsersConfig};
use sea_orm::{ConnectionTrait, Database};
use tokio::sync::watch;

/// The variable naming a PostgreSQL role allowed to create databases.
pub const POSTGRES_URL_VAR: &str = "MESH_TEST_POSTGRES_URL";

/// One test's database, removed by [`TestDb::finish`].
pub struct TestDb {
    pub location: DatabaseLocation,
    pub backend_name: &'static str,
    _sqlite_dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let location = DatabaseLocation::SqliteFile(dir.path().join("vpnusers.sqlite3"));
        Self { location, backend_name: "sqlite", _sqlite_dir: Some(dir), postgres: None }
    }

    /// A new PostgreSQL database, or `None` when no server is configured.
    pub async fn postgres() -> Option<Self> {
        let source = ConfigSource::from_process();
        let Some(admin_url) = source.var(POSTGRES_URL_VAR) else {
            assert!(
                source.var("CI").is_none(),
                "{POSTGRES_URL_VAR} is not set under CI; run services/vpnusers/scripts/test-postgres"
            );
            eprintln!("skipping the PostgreSQL half: {POSTGRES_URL_VAR} is not set");
            return None;
        };
        let name = format!("vpnusers_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(admin_url).await.expect("connect to the PostgreSQL test server");
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let (base, _) = admin_url.rsplit_once('/').expect("the URL names a database");
        let url = format!("{base}/{name}");
        Some(Self {
            location: DatabaseLocation::Url(DatabaseUrl::new(url)),
            backend_name: "postgres",
            _sqlite_dir: None,
            postgres: Some((admin_url.to_owned(), name)),
        })
    }

    /// Settings pointing at this database.
    pub fn config(&self) -> VpnUsersConfig {
        let mut config = VpnUsersConfig::default();
        match &self.location {
            DatabaseLocation::SqliteFile(path) => path.parent().unwrap().clone_into(&mut config.data_dir),
            DatabaseLocation::Url(url) => config.database_url = url.clone(),
        }
        config
    }

    /// The config variables pointing at this database, for `run`.
    pub fn config_source(&self) -> ConfigSource {
        match &self.location {
            DatabaseLocation::SqliteFile(path) => ConfigSource::default()
                .with_var("MESH_VPNUSERS_DATA_DIR", path.parent().unwrap().to_string_lossy().into_owned()),
            DatabaseLocation::Url(url) => ConfigSource::default().with_var("DATABASE_URL", url.expose()),
        }
    }

    /// An opened store.
    pub async fn store(&self) -> UserStore {
        UserStore::open(&self.location, 4, Duration::from_secs(5)).await.expect("open the store")
    }

    /// A directory over a fresh store, without a cache, with `config`.
    pub async fn directory_with(&self, config: VpnUsersConfig) -> UserDirectory {
        let (_sender, receiver) = watch::channel(Arc::new(config));
        UserDirectory::new(self.store().await, None, receiver)
    }

    /// A directory with default limits.
    pub async fn directory(&self) -> UserDirectory {
        self.directory_with(self.config()).await
    }

    /// Removes the PostgreSQL database (SQLite's directory goes on drop).
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

/// Runs a test body against SQLite and against PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
