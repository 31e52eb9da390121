//! Opening a database for reading only ([`PostgresOptions::read_only`]):
//! every session starts with `default_transaction_read_only` on, and the
//! schema is checked, never created or migrated.
//!
//! [`PostgresOptions::read_only`]: crate::PostgresOptions::read_only

use outbox_core::{Error, Result};
use tokio_postgres::{Client, Config};

use crate::error::map;
use crate::schema::SCHEMA_VERSION;

/// Makes every session opened with `config` read-only: its transactions
/// (and single statements) cannot write (SQLSTATE 25006), whatever the
/// store asks. Options already in the URL are kept.
pub(crate) fn session(config: &mut Config) {
    let setting = "-c default_transaction_read_only=on";
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {setting}"),
        _ => setting.to_owned(),
    };
    config.options(options);
}

/// Checks, writing nothing, that `schema` (the session's search path)
/// holds the outbox tables at this build's [`SCHEMA_VERSION`]: none is
/// `Corrupted` (not an outbox database), a newer version `SchemaTooNew`,
/// an older one `InvalidInput` (reading it needs the migration a
/// read-write open runs).
pub(crate) async fn check_schema(client: &mut Client, schema: &str) -> Result<()> {
    let present: bool = client
        .query_one("SELECT to_regclass('outbox_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| map("look for the outbox schema", e))?
        .get(0);
    if !present {
        return Err(Error::Corrupted {
            message: format!("no outbox tables in schema {schema:?}: not an outbox database, left as it is"),
            source: None,
        });
    }
    let found = crate::schema::stored_version(client).await?;
    if found != SCHEMA_VERSION {
        return Err(Error::invalid_input(format!(
            "schema {schema:?} has outbox schema version {found}, not the {SCHEMA_VERSION} this build \
             reads; a read-only open does not migrate: open it read-write once to upgrade it"
        )));
    }
    Ok(())
}
