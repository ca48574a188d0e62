//! Test databases: a fresh SQLite file, or a fresh PostgreSQL database on the
//! server named by `MESH_TEST_POSTGRES_URL` (see `scripts/test-postgres`).
//! Without that variable the PostgreSQL half of a test is skipped, with a
//! note on stderr, unless `CI` is set, where a missing server fails the test.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of the harness
#![allow(clippy::doc_markdown)] // product names (SQLite, PostgreSQL) are prose here, not code

use std::sync::Arc;
use std::time::Duration;

use mesh_kit::ConfigSource;
use mesh_kit::database::TestDatabase;
use mesh_vpnusers::{DatabaseLocation, UserDirectory, UserStore, VpnUsersConfig};
use tokio::sync::watch;

/// One test's database: the kit's [`TestDatabase`] with VpnUsers' settings.
pub struct TestDb {
    database: TestDatabase,
    pub location: DatabaseLocation,
    pub backend_name: &'static str,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        Self::from(TestDatabase::sqlite("vpnusers.sqlite3"))
    }

    /// A new PostgreSQL database, or `None` when no server is configured.
    pub async fn postgres() -> Option<Self> {
        TestDatabase::postgres("vpnusers_test").await.map(Self::from)
    }

    fn from(database: TestDatabase) -> Self {
        Self { location: database.location.clone(), backend_name: database.backend_name, database }
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
        self.database.finish().await;
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
