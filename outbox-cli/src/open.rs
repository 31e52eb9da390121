//! Which store a command's first argument names, and opening it: the one
//! place that knows the backends. Everything else works on
//! `Arc<dyn DurableStore>` through the store contract.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outbox::SqliteStore;
use outbox_core::{DurableStore, Error, ErrorKind, Result};
use outbox_store_postgres::PostgresStore;
use outbox_store_sled::SledStore;

/// The environment variable naming the store when the argument is
/// omitted or `-`.
pub(crate) const DATABASE_URL_VAR: &str = "OUTBOX_DATABASE_URL";

/// How long opening a PostgreSQL store may wait for the server.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A store location, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A sled database directory.
    Sled(PathBuf),
    /// A PostgreSQL connection string or URL, and the schema.
    Postgres { url: String, schema: String },
}

impl Target {
    /// What the argument names: a `postgres://` / `postgresql://` URL or a
    /// libpq `key=value` string (with `host=` or `dbname=`) is PostgreSQL;
    /// a `sqlite:` or `sled:` prefix says which file store; otherwise a
    /// directory is a sled database and anything else (a missing path
    /// included) a SQLite file.
    pub(crate) fn parse(arg: &str, pg_schema: &str) -> Target {
        let postgres = || Target::Postgres { url: arg.to_owned(), schema: pg_schema.to_owned() };
        if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            return postgres();
        }
        if arg.split_whitespace().any(|w| w.starts_with("host=") || w.starts_with("dbname=")) {
            return postgres();
        }
        if let Some(p) = arg.strip_prefix("sqlite:") {
            return Target::Sqlite(PathBuf::from(p));
        }
        if let Some(p) = arg.strip_prefix("sled:") {
            return Target::Sled(PathBuf::from(p));
        }
        let path = PathBuf::from(arg);
        if path.is_dir() { Target::Sled(path) } else { Target::Sqlite(path) }
    }

    /// How the target is shown: paths as given, a URL without its
    /// password.
    pub(crate) fn shown(&self) -> String {
        match self {
            Target::Sqlite(p) | Target::Sled(p) => p.display().to_string(),
            Target::Postgres { url, .. } => redact(url),
        }
    }

    /// Whether a read-only open shows the store as it was at open (a
    /// sled database is read from a copy; a SQLite file no process had
    /// open is read as immutable): a command that polls must open it
    /// again to see changes.
    pub(crate) fn is_snapshot(&self, read_only: bool) -> bool {
        read_only && matches!(self, Target::Sled(_) | Target::Sqlite(_))
    }
}

/// Resolves the store argument: `None` or `-` reads
/// [`DATABASE_URL_VAR`].
pub(crate) fn resolve(arg: Option<&str>, pg_schema: &str) -> Result<Target> {
    let arg = match arg {
        Some(a) if a != "-" => a.to_owned(),
        _ => std::env::var(DATABASE_URL_VAR).map_err(|_| {
            Error::invalid_input(format!(
                "no store given: pass a FILE, a sled directory or a URL, or set {DATABASE_URL_VAR}"
            ))
        })?,
    };
    Ok(Target::parse(&arg, pg_schema))
}

/// Opens the store at `target`. Read-only, nothing where it points is
/// created, migrated or written (SQLite `mode=ro` + `query_only`, a copy
/// of a sled directory, a PostgreSQL session with
/// `default_transaction_read_only`). Read-write, a missing file or
/// directory is an error too: no command creates a store.
pub(crate) async fn open_store(target: &Target, read_only: bool) -> Result<Arc<dyn DurableStore>> {
    if !read_only {
        // A read-write open of a foreign or newer store could change it
        // before refusing it (sled writes to a directory as it opens it;
        // PostgreSQL would create the schema): a read-only open checks
        // first. An older schema (`InvalidInput` read-only) is upgraded by
        // the read-write open, as the library does.
        match open_target(target, true).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
    }
    open_target(target, read_only).await
}

async fn open_target(target: &Target, read_only: bool) -> Result<Arc<dyn DurableStore>> {
    match target {
        Target::Sqlite(path) => {
            if !read_only {
                must_exist(path, false)?;
            }
            let store = SqliteStore::options(path).read_only(read_only).open()?;
            Ok(Arc::new(store))
        }
        Target::Sled(path) => {
            if !read_only {
                must_exist(path, true)?;
            }
            let path = path.clone();
            // Opening copies (read-only) or waits for sled's lock: off the
            // async threads.
            let store =
                tokio::task::spawn_blocking(move || SledStore::options(path).read_only(read_only).open())
                    .await
                    .map_err(|e| Error::internal(format!("opening the sled store: {e}")))??;
            Ok(Arc::new(store))
        }
        Target::Postgres { url, schema } => {
            let store = PostgresStore::options(url.as_str())
                .schema(schema.as_str())
                .pool_size(2)
                .connect_timeout(PG_CONNECT_TIMEOUT)
                .read_only(read_only)
                .open()
                .await?;
            Ok(Arc::new(store))
        }
    }
}

/// Refuses a path that does not exist (or is not a directory for sled, a
/// file for SQLite) before a read-write open would create it.
fn must_exist(path: &Path, dir: bool) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() == dir => Ok(()),
        Ok(_) if dir => Err(Error::invalid_input(format!("{shown} is not a sled directory"))),
        Ok(_) => Err(Error::invalid_input(format!("{shown} is a directory, not an outbox file"))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::PermissionDenied {
            message: format!("cannot read {shown}: {e}"),
            source: Some(Box::new(e)),
        }),
        Err(e) => Err(Error::invalid_input(format!(
            "no outbox at {shown} ({e}); commands never create one: open it from the application first"
        ))),
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    if let Some(rest) = url.split_once("://").map(|(_, r)| r)
        && let Some((auth, _)) = rest.split_once('@')
        && let Some((_, pw)) = auth.split_once(':')
    {
        return url.replacen(&format!(":{pw}@"), ":***@", 1);
    }
    url.split_whitespace()
        .map(|w| if w.starts_with("password=") { "password=***" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_their_backend() {
        assert!(matches!(Target::parse("postgres://u@h/db", "public"), Target::Postgres { .. }));
        assert!(matches!(Target::parse("host=127.0.0.1 port=1", "public"), Target::Postgres { .. }));
        assert_eq!(Target::parse("sled:x", "public"), Target::Sled("x".into()));
        assert_eq!(Target::parse("/no/such/file.db", "public"), Target::Sqlite("/no/such/file.db".into()));
        assert_eq!(Target::parse(".", "public"), Target::Sled(".".into()));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("host=h password=secret"), "host=h password=***");
    }
}
