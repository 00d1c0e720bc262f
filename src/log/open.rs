//! Which backend a database URL names.

use std::sync::Arc;

use super::store::{Log, StoreError};
use super::{postgres, sqlite};

/// Opens the log named by a database URL: `postgres://…` (or `postgresql://…`)
/// for PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a bare file path for
/// SQLite.
pub async fn open(url: &str) -> Result<Log, StoreError> {
    if postgres::is_postgres(url) {
        let store = Arc::new(postgres::PostgresStore::open(url).await?);
        return Ok(Log {
            members: Some(store.clone()),
            ..Log::of(store)
        });
    }
    Ok(Log::of(Arc::new(sqlite::SqliteStore::open(url).await?)))
}
