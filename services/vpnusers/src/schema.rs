//! The stored form of users: the `vpn_users` entity and the migrations that
//! create it on SQLite and PostgreSQL.
//!
//! Both backends hold the same columns with the same meaning, so every query
//! means the same thing on both:
//! - instants are `BIGINT` microseconds since the Unix epoch (UTC), and "never
//!   expires" is stored as `i64::MAX`, so it sorts after every date and falls
//!   outside every bounded range without `NULL` handling;
//! - byte counts are `BIGINT` (at most 2^63 - 1, checked on the way in);
//! - status and protocol are short lowercase text;
//! - `search_text` is username, email and note lowercased with every
//!   non-alphanumeric character turned into a space (see [`crate::search`]),
//!   indexed by FTS5 on SQLite and by a generated `tsvector` on PostgreSQL.
//!
//! `seq` is the row's integer key. It exists for SQLite: FTS5 follows rows by
//! an integer rowid, and only an `INTEGER PRIMARY KEY` keeps its rowid across
//! `VACUUM`. The public identity is `id`.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

/// The `vpn_users` table as sea-orm sees it.
pub mod vpn_user {
    use sea_orm::entity::prelude::*;

    /// One stored user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "vpn_users")]
    pub struct Model {
        /// Integer row key; see the module docs.
        #[sea_orm(primary_key)]
        pub seq: i64,
        /// Public UUID v7.
        #[sea_orm(unique)]
        pub id: Uuid,
        /// Unique login name.
        #[sea_orm(unique)]
        pub username: String,
        /// Contact address.
        pub email: String,
        /// `active`, `suspended`, `expired` or `disabled`.
        pub status: String,
        /// `wireguard`, `openvpn`, `ikev2`, `l2tp`, `shadowsocks` or `vless`.
        pub protocol: String,
        /// Traffic used, in bytes.
        pub traffic_used_bytes: i64,
        /// Traffic allowed, in bytes; 0 means unlimited.
        pub traffic_limit_bytes: i64,
        /// Expiry in Unix microseconds; `i64::MAX` means never.
        pub expires_at_micros: i64,
        /// Creation time in Unix microseconds.
        pub created_at_micros: i64,
        /// Last change in Unix microseconds.
        pub updated_at_micros: i64,
        /// Free text.
        pub note: String,
        /// Normalised words of username, email and note, for full-text search.
        pub search_text: String,
    }

    /// `vpn_users` relates to no other table.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Small service-owned values, such as the page token signing key.
pub mod service_meta {
    use sea_orm::entity::prelude::*;

    /// One named value.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "vpn_users_meta")]
    pub struct Model {
        /// The value's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The value.
        pub value: String,
    }

    /// `vpn_users_meta` relates to no other table.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Applies the schema's migrations in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateUsers),
            Box::new(CreateIdempotencyKeys),
            Box::new(TuneForBulkWrites),
            Box::new(BoundGinPendingList),
        ]
    }

    fn migration_table_name() -> DynIden {
        "vpn_users_migrations".into_iden()
    }
}

/// The first schema: users, their indexes, full-text search, and the meta table.
#[derive(Debug, DeriveMigrationName)]
struct CreateUsers;

#[derive(DeriveIden)]
enum VpnUsers {
    Table,
    Seq,
    Id,
    Username,
    Email,
    Status,
    Protocol,
    TrafficUsedBytes,
    TrafficLimitBytes,
    ExpiresAtMicros,
    CreatedAtMicros,
    UpdatedAtMicros,
    Note,
    SearchText,
}

#[derive(DeriveIden)]
enum VpnUsersMeta {
    Table,
    Name,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateUsers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(VpnUsers::Table)
                    .col(ColumnDef::new(VpnUsers::Seq).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(VpnUsers::Id).uuid().not_null().unique_key())
                    .col(ColumnDef::new(VpnUsers::Username).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(VpnUsers::Email).string_len(254).not_null())
                    .col(ColumnDef::new(VpnUsers::Status).string_len(16).not_null())
                    .col(ColumnDef::new(VpnUsers::Protocol).string_len(16).not_null())
                    .col(ColumnDef::new(VpnUsers::TrafficUsedBytes).big_integer().not_null())
                    .col(ColumnDef::new(VpnUsers::TrafficLimitBytes).big_integer().not_null())
                    .col(ColumnDef::new(VpnUsers::ExpiresAtMicros).big_integer().not_null())
                    .col(ColumnDef::new(VpnUsers::CreatedAtMicros).big_integer().not_null())
                    .col(ColumnDef::new(VpnUsers::UpdatedAtMicros).big_integer().not_null())
                    .col(ColumnDef::new(VpnUsers::Note).text().not_null())
                    .col(ColumnDef::new(VpnUsers::SearchText).text().not_null())
                    .to_owned(),
            )
            .await?;
        // Each index serves a sort of ListUsers (keyset on `(column, id)`) or
        // a filter; each costs every insert a little, so there is none
        // without a query behind it.
        // There is no index on protocol: six values are too few to narrow a
        // search, and SQLite's planner would prefer it to a sort index.
        let indexes: [(&str, Vec<VpnUsers>); 5] = [
            ("vpn_users_created", vec![VpnUsers::CreatedAtMicros, VpnUsers::Id]),
            ("vpn_users_status_created", vec![VpnUsers::Status, VpnUsers::CreatedAtMicros, VpnUsers::Id]),
            ("vpn_users_expires", vec![VpnUsers::ExpiresAtMicros, VpnUsers::Id]),
            ("vpn_users_updated", vec![VpnUsers::UpdatedAtMicros, VpnUsers::Id]),
            ("vpn_users_traffic_used", vec![VpnUsers::TrafficUsedBytes, VpnUsers::Id]),
        ];
        for (name, columns) in indexes {
            let mut index = Index::create();
            index.name(name).table(VpnUsers::Table);
            for column in columns {
                index.col(column);
            }
            let index = index;
            manager.create_index(index).await?;
        }
        manager
            .create_index(
                Index::create().name("vpn_users_email").table(VpnUsers::Table).col(VpnUsers::Email).to_owned(),
            )
            .await?;

        let connection = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Sqlite => {
                for statement in SQLITE_FULL_TEXT {
                    connection.execute_unprepared(statement).await?;
                }
            }
            DbBackend::Postgres => {
                for statement in POSTGRES_FULL_TEXT {
                    connection.execute_unprepared(statement).await?;
                }
            }
            other => return Err(DbErr::Migration(format!("unsupported database backend {other:?}"))),
        }

        manager
            .create_table(
                Table::create()
                    .table(VpnUsersMeta::Table)
                    .col(ColumnDef::new(VpnUsersMeta::Name).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(VpnUsersMeta::Value).text().not_null())
                    .to_owned(),
            )
            .await
    }
}

/// The second schema: idempotency keys of the batch writes.
#[derive(Debug)]
struct CreateIdempotencyKeys;

// Named by hand: the derive names a migration after its file, which
// `CreateUsers` already is.
impl MigrationName for CreateIdempotencyKeys {
    fn name(&self) -> &'static str {
        "m002_idempotency_keys"
    }
}

/// `vpn_users_idempotency`: one row per `request_id` of a batch write that
/// committed, written in that write's transaction, so a key is stored if and
/// only if its write is.
#[derive(DeriveIden)]
pub(crate) enum VpnUsersIdempotency {
    Table,
    /// The caller's `request_id`.
    IdempotencyKey,
    /// SHA-256 of the RPC name and the request without its key.
    RequestSha256,
    /// The encoded response, replayed to a retry.
    Response,
    /// When the key is forgotten, in Unix microseconds.
    ExpiresAtMicros,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateIdempotencyKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(VpnUsersIdempotency::Table)
                    .col(ColumnDef::new(VpnUsersIdempotency::IdempotencyKey).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(VpnUsersIdempotency::RequestSha256).binary().not_null())
                    .col(ColumnDef::new(VpnUsersIdempotency::Response).blob().not_null())
                    .col(ColumnDef::new(VpnUsersIdempotency::ExpiresAtMicros).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // Expired keys are deleted by range.
        manager
            .create_index(
                Index::create()
                    .name("vpn_users_idempotency_expires")
                    .table(VpnUsersIdempotency::Table)
                    .col(VpnUsersIdempotency::ExpiresAtMicros)
                    .to_owned(),
            )
            .await
    }
}

/// The third schema: cheaper bulk writes and an index for username wildcards.
///
/// - FTS5 merges its segments 16 at a time instead of 4 (`automerge`): each
///   batch commit writes one small segment, and with 4 every posting was
///   rewritten once per level of a 4-ary tree; 16 halves the levels, which
///   cut the instructions of a 100-user insert by a fifth (callgrind) while
///   a search reads only slightly more segments.
/// - `(status, created_at, id)` is dropped: every create wrote it and every
///   status change moved two entries in it, while a list filtered by status
///   reads the `created_at` index in order and skips the other statuses, a few
///   pages for a page of 50.
/// - `lower(username)` is indexed so a wildcard with a literal prefix
///   (`user0123*`) reads a range instead of scanning every username; see
///   [`crate::filter`].
#[derive(Debug)]
struct TuneForBulkWrites;

impl MigrationName for TuneForBulkWrites {
    fn name(&self) -> &'static str {
        "m003_tune_for_bulk_writes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for TuneForBulkWrites {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Sqlite {
            connection
                .execute_unprepared("INSERT INTO vpn_users_fts(vpn_users_fts, rank) VALUES ('automerge', 16)")
                .await?;
        }
        connection.execute_unprepared("CREATE INDEX vpn_users_username_lower ON vpn_users (lower(username))").await?;
        connection.execute_unprepared("DROP INDEX vpn_users_status_created").await?;
        Ok(())
    }
}

/// The fourth schema: on PostgreSQL, a small pending list for the search
/// index.
///
/// GIN collects new entries in an unsorted pending list (`fastupdate`) and
/// merges it into the index once it passes `gin_pending_list_limit` (4 MB by
/// default). Every search reads the whole list, and the insert that passes
/// the limit merges it all: at 100k users a one-word search took 7–23 ms with
/// a full list (513 pages) and 0.2 ms after the merge, and the merge itself
/// took half a second, the slowest batch of a fill. 256 kB bounds a search's
/// extra reading to 32 pages and each merge to a sixteenth, while batches
/// still pay the cheap append instead of a tree insert per word
/// (`fastupdate = off`). SQLite is untouched.
#[derive(Debug)]
struct BoundGinPendingList;

impl MigrationName for BoundGinPendingList {
    fn name(&self) -> &'static str {
        "m004_bound_gin_pending_list"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for BoundGinPendingList {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER INDEX vpn_users_search SET (gin_pending_list_limit = 256)")
                .await?;
        }
        Ok(())
    }
}

/// FTS5 over `search_text`, kept in step by triggers. External content
/// (`content='vpn_users'`) stores the text once; `remove_diacritics 0` and
/// our own lowercasing give PostgreSQL's `simple` configuration's words.
const SQLITE_FULL_TEXT: [&str; 4] = [
    "CREATE VIRTUAL TABLE vpn_users_fts USING fts5(search_text, content='vpn_users', content_rowid='seq', \
     tokenize = 'unicode61 remove_diacritics 0')",
    "CREATE TRIGGER vpn_users_fts_insert AFTER INSERT ON vpn_users BEGIN \
     INSERT INTO vpn_users_fts(rowid, search_text) VALUES (new.seq, new.search_text); END",
    "CREATE TRIGGER vpn_users_fts_delete AFTER DELETE ON vpn_users BEGIN \
     INSERT INTO vpn_users_fts(vpn_users_fts, rowid, search_text) VALUES ('delete', old.seq, old.search_text); END",
    "CREATE TRIGGER vpn_users_fts_update AFTER UPDATE OF search_text ON vpn_users BEGIN \
     INSERT INTO vpn_users_fts(vpn_users_fts, rowid, search_text) VALUES ('delete', old.seq, old.search_text); \
     INSERT INTO vpn_users_fts(rowid, search_text) VALUES (new.seq, new.search_text); END",
];

/// Byte-order usernames (SQLite's `BINARY`, so sorting and keyset pages agree
/// across backends), and a generated `tsvector` with the `simple`
/// configuration (no stemming, no stop words: the same words FTS5 sees) with
/// its GIN index.
const POSTGRES_FULL_TEXT: [&str; 3] = [
    "ALTER TABLE vpn_users ALTER COLUMN username TYPE varchar(64) COLLATE \"C\"",
    "ALTER TABLE vpn_users ADD COLUMN search_vector tsvector \
     GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, search_text)) STORED",
    "CREATE INDEX vpn_users_search ON vpn_users USING GIN (search_vector)",
];
