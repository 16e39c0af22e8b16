//! The deployment's secrets key: where a node finds it, the embedded
//! default's first start, and rotating a key file.
//!
//! The keyring seals webhook signing secrets at rest
//! (crates/keygate-core/src/secrets.rs). It is read, in this order, from:
//! 1. `KEYGATE_SECRETS_KEY` (the keyring's text: one `<id>:<base64>` a line or
//!    comma-separated);
//! 2. `secrets.key_file`, which must exist;
//! 3. on SQLite, a file next to the database (`keygate.db` -> `keygate.secrets.key`),
//!    generated with mode 0600 on the first start;
//! 4. on SQLite in memory, a key of this process alone (nothing outlives it).
//!
//! On PostgreSQL every node must seal and open with the same keys, so a node
//! without 1 or 2 does not start, and says what to set.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use keygate_core::secrets::{Keyring, KeyringError};

/// The environment variable that holds the keyring's text.
pub const KEY_ENV: &str = "KEYGATE_SECRETS_KEY";

/// Where a keyring came from, for the log and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Environment,
    File(PathBuf),
    /// Made by this start: the embedded default's first one.
    Generated(PathBuf),
    /// SQLite in memory: a key of this process alone.
    Ephemeral,
}

impl KeyOrigin {
    /// The key file a rotation rewrites, if the keys live in one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) | Self::Generated(path) => Some(path),
            Self::Environment | Self::Ephemeral => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{KEY_ENV}: {0}")]
    Environment(KeyringError),
    #[error("secrets key file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("secrets key file {}: {error}", path.display())]
    Malformed { path: PathBuf, error: KeyringError },
    #[error("cannot write the secrets key file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "store.url is not SQLite, so every node needs the same secrets key: set secrets.key_file \
         (a file made with `keygate secrets generate-key > FILE`, mode 0600) or {KEY_ENV}"
    )]
    Missing,
}

/// The keyring this node uses, and where it came from.
pub fn load_keyring(key_file: Option<&Path>, store_url: &str) -> Result<(Keyring, KeyOrigin), SecretsError> {
    load_keyring_from(std::env::var(KEY_ENV).ok(), key_file, store_url)
}

/// [`load_keyring`] with the environment variable's value given.
fn load_keyring_from(
    from_env: Option<String>,
    key_file: Option<&Path>,
    store_url: &str,
) -> Result<(Keyring, KeyOrigin), SecretsError> {
    if let Some(text) = from_env {
        let keyring = Keyring::parse(&text).map_err(SecretsError::Environment)?;
        return Ok((keyring, KeyOrigin::Environment));
    }
    if let Some(path) = key_file {
        return Ok((read_key_file(path)?, KeyOrigin::File(path.to_owned())));
    }
    let Some(database) = keygate_store::sqlite::database_file(store_url) else {
        return if store_url.starts_with("sqlite:") {
            Ok((Keyring::generate(&mut rand::thread_rng()), KeyOrigin::Ephemeral))
        } else {
            Err(SecretsError::Missing)
        };
    };
    let path = default_key_file(&database);
    if path.exists() {
        return Ok((read_key_file(&path)?, KeyOrigin::File(path)));
    }
    let line = Keyring::generate_key(&mut rand::thread_rng());
    write_new_file(&path, &format!("{line}\n"))?;
    let keyring = read_key_file(&path)?;
    Ok((keyring, KeyOrigin::Generated(path)))
}

/// Next to the database: `keygate.db` -> `keygate.secrets.key`.
pub fn default_key_file(database: &Path) -> PathBuf {
    let stem = database
        .file_stem()
        .map_or_else(|| "keygate".into(), |stem| stem.to_string_lossy().into_owned());
    database.with_file_name(format!("{stem}.secrets.key"))
}

fn read_key_file(path: &Path) -> Result<Keyring, SecretsError> {
    parse_key_file(path, &read_text(path)?)
}

fn read_text(path: &Path) -> Result<String, SecretsError> {
    std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_key_file(path: &Path, text: &str) -> Result<Keyring, SecretsError> {
    Keyring::parse(text).map_err(|error| SecretsError::Malformed {
        path: path.to_owned(),
        error,
    })
}

/// Puts a new key first in a key file, keeping the old ones after it so
/// what they sealed still opens until it is re-sealed. The file is replaced
/// whole (written aside, then renamed), mode 0600. Returns the new key's id.
pub fn add_key_to_file(path: &Path) -> Result<String, SecretsError> {
    let old = read_text(path)?;
    let line = Keyring::generate_key(&mut rand::thread_rng());
    let text = format!("{line}\n{}", old.trim_start());
    let keyring = parse_key_file(path, &text)?;
    let aside = path.with_extension("key.new");
    // A leftover of an interrupted rotation is replaced.
    let _ = std::fs::remove_file(&aside);
    write_new_file(&aside, &text)?;
    std::fs::rename(&aside, path).map_err(|source| SecretsError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(keyring.sealing_key_id().to_owned())
}

/// Creates `path` (not over an existing file), readable by its owner only.
fn write_new_file(path: &Path, text: &str) -> Result<(), SecretsError> {
    let failed = |source| SecretsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_key_file_sits_next_to_the_database() {
        assert_eq!(
            default_key_file(Path::new("data/keygate.db")),
            PathBuf::from("data/keygate.secrets.key")
        );
    }

    #[test]
    fn the_first_start_on_sqlite_generates_a_private_key_file_and_the_next_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/keygate.db", dir.path().display());
        let (first, origin) = load_keyring_from(None, None, &url).unwrap();
        let path = dir.path().join("keygate.secrets.key");
        assert_eq!(origin, KeyOrigin::Generated(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) = load_keyring_from(None, None, &url).unwrap();
        assert_eq!(origin, KeyOrigin::File(path));
        assert_eq!(again.sealing_key_id(), first.sealing_key_id());
    }

    #[test]
    fn a_store_that_is_not_sqlite_needs_a_key() {
        let missing = load_keyring_from(None, None, "postgres://postgres@127.0.0.1:5432/test").unwrap_err();
        assert!(matches!(missing, SecretsError::Missing));
        assert!(missing.to_string().contains("secrets.key_file"));
        assert!(missing.to_string().contains(KEY_ENV));
        let (_, origin) = load_keyring_from(None, None, "sqlite::memory:").unwrap();
        assert_eq!(origin, KeyOrigin::Ephemeral);
    }

    #[test]
    fn the_environment_comes_first() {
        let line = Keyring::generate_key(&mut rand::thread_rng());
        let (keyring, origin) = load_keyring_from(Some(line.clone()), None, "postgres://x@127.0.0.1/test").unwrap();
        assert_eq!(origin, KeyOrigin::Environment);
        assert!(line.starts_with(&format!("{}:", keyring.sealing_key_id())));
        let bad = load_keyring_from(Some("k1:short".into()), None, "sqlite::memory:").unwrap_err();
        assert!(bad.to_string().starts_with(KEY_ENV), "{bad}");
    }

    #[test]
    fn a_named_key_file_must_exist_and_hold_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let url = "postgres://postgres@127.0.0.1:5432/test";
        assert!(matches!(
            load_keyring_from(None, Some(&path), url),
            Err(SecretsError::Read { .. })
        ));
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            load_keyring_from(None, Some(&path), url),
            Err(SecretsError::Malformed { .. })
        ));
    }

    #[test]
    fn a_new_key_goes_first_and_the_old_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.secrets.key");
        let old = Keyring::generate_key(&mut rand::thread_rng());
        write_new_file(&path, &format!("{old}\n")).unwrap();
        let new_id = add_key_to_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(&format!("{new_id}:")));
        assert_eq!(lines[1], old);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
