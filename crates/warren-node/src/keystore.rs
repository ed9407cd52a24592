//! The identity on disk: `identity.key` in the data dir, mode 0600, written once.
//!
//! The 32 secret bytes are the entropy of a 24-word BIP-39 phrase, so `init` can show the
//! phrase and `init --recover` can rebuild the same key from it. With a passphrase the
//! secret is sealed with ChaCha20-Poly1305 under a key stretched by Argon2id.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use warren_types::Identity;

pub const KEY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "an identity already exists at {0}; refusing to overwrite it (move it away first if you really mean to replace it)"
    )]
    Exists(PathBuf),
    #[error("no identity at {0}: run `warren init` first (or `warren init --recover`)")]
    Missing(PathBuf),
    #[error("the identity at {0} is encrypted: set WARREN_PASSPHRASE to unlock it")]
    NeedsPassphrase(PathBuf),
    #[error("WARREN_PASSPHRASE does not unlock the identity at {0}")]
    WrongPassphrase(PathBuf),
    #[error("the identity file {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the recovery phrase is not valid: {0} (expected 24 BIP-39 English words)")]
    BadPhrase(String),
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
enum KeyFile {
    Plain {
        secret: String,
    },
    Argon2idChacha20poly1305 {
        salt: String,
        nonce: String,
        sealed: String,
    },
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// The 24 words for an identity.
pub fn recovery_phrase(identity: &Identity) -> String {
    // 32 bytes is always a valid BIP-39 entropy length.
    bip39::Mnemonic::from_entropy(&identity.secret())
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// Parses 24 words back into the identity they encode.
pub fn identity_from_phrase(phrase: &str) -> Result<Identity, KeyError> {
    let words = phrase.split_whitespace().collect::<Vec<_>>().join(" ");
    let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &words.to_lowercase())
        .map_err(|e| KeyError::BadPhrase(e.to_string()))?;
    let entropy = m.to_entropy();
    let secret: [u8; 32] = entropy
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::BadPhrase(format!("it has {} words", m.word_count())))?;
    Ok(Identity::from_secret(secret))
}

fn stretch(passphrase: &str, salt: &[u8]) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// Writes `identity` to `dir`, refusing to replace an existing one.
pub fn save(dir: &Path, identity: &Identity, passphrase: Option<&str>) -> Result<(), KeyError> {
    let path = key_path(dir);
    if path.exists() {
        return Err(KeyError::Exists(path));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Io {
            action: "create the data dir",
            path: dir.to_path_buf(),
            source,
        })?;
    let file = match passphrase.filter(|p| !p.is_empty()) {
        None => KeyFile::Plain {
            secret: hex::encode(identity.secret()),
        },
        Some(pass) => {
            let salt: [u8; 16] = random();
            let nonce: [u8; 12] = random();
            let key = stretch(pass, &salt).map_err(|reason| KeyError::Corrupt {
                path: path.clone(),
                reason,
            })?;
            let sealed = ChaCha20Poly1305::new(Key::from_slice(&key))
                .encrypt(Nonce::from_slice(&nonce), identity.secret().as_slice())
                .map_err(|e| KeyError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            KeyFile::Argon2idChacha20poly1305 {
                salt: hex::encode(salt),
                nonce: hex::encode(nonce),
                sealed: hex::encode(sealed),
            }
        }
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default();
    let io = |action| {
        let path = path.clone();
        move |source| KeyError::Io {
            action,
            path,
            source,
        }
    };
    // create_new: a race with another init fails instead of overwriting.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.clone())
            } else {
                io("create")(e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(())
}

/// Reads the identity from `dir`, unlocking it with `passphrase` when it is sealed.
pub fn load(dir: &Path, passphrase: Option<&str>) -> Result<Identity, KeyError> {
    let path = key_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyError::Missing(path)),
        Err(source) => {
            return Err(KeyError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let corrupt = |reason: String| KeyError::Corrupt {
        path: path.clone(),
        reason,
    };
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let secret = match file {
        KeyFile::Plain { secret } => hex::decode(secret).map_err(|e| corrupt(e.to_string()))?,
        KeyFile::Argon2idChacha20poly1305 {
            salt,
            nonce,
            sealed,
        } => {
            let pass = passphrase
                .filter(|p| !p.is_empty())
                .ok_or_else(|| KeyError::NeedsPassphrase(path.clone()))?;
            let salt = hex::decode(salt).map_err(|e| corrupt(e.to_string()))?;
            let nonce = hex::decode(nonce).map_err(|e| corrupt(e.to_string()))?;
            let sealed = hex::decode(sealed).map_err(|e| corrupt(e.to_string()))?;
            if nonce.len() != 12 {
                return Err(corrupt("nonce is not 12 bytes".into()));
            }
            let key = stretch(pass, &salt).map_err(corrupt)?;
            ChaCha20Poly1305::new(Key::from_slice(&key))
                .decrypt(Nonce::from_slice(&nonce), sealed.as_slice())
                .map_err(|_| KeyError::WrongPassphrase(path.clone()))?
        }
    };
    let secret: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("secret is not 32 bytes".into()))?;
    Ok(Identity::from_secret(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_phrase_restores_the_same_identity() {
        let id = Identity::generate();
        let phrase = recovery_phrase(&id);
        assert_eq!(phrase.split(' ').count(), 24);
        let back = identity_from_phrase(&format!("  {}\n", phrase.to_uppercase())).unwrap();
        assert_eq!(back.node_id(), id.node_id());
    }

    #[test]
    fn bad_phrases_are_refused() {
        assert!(matches!(
            identity_from_phrase("abandon ability"),
            Err(KeyError::BadPhrase(_))
        ));
        let phrase = recovery_phrase(&Identity::generate());
        let misspelt = phrase.replacen(' ', " notaword ", 1);
        assert!(matches!(
            identity_from_phrase(&misspelt),
            Err(KeyError::BadPhrase(_))
        ));
        // A 12-word phrase is valid BIP-39 but not a Warren identity.
        let twelve = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
        assert!(matches!(
            identity_from_phrase(twelve),
            Err(KeyError::BadPhrase(_))
        ));
    }

    #[test]
    fn plain_key_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        save(dir.path(), &id, None).unwrap();
        let mode = fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            save(dir.path(), &Identity::generate(), None),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(load(dir.path(), None).unwrap().node_id(), id.node_id());
    }

    #[test]
    fn sealed_key_files_need_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        save(dir.path(), &id, Some("correct horse")).unwrap();
        let text = fs::read_to_string(key_path(dir.path())).unwrap();
        assert!(
            !text.contains(&hex::encode(id.secret())),
            "secret stored in clear"
        );
        assert!(matches!(
            load(dir.path(), None),
            Err(KeyError::NeedsPassphrase(_))
        ));
        assert!(matches!(
            load(dir.path(), Some("wrong")),
            Err(KeyError::WrongPassphrase(_))
        ));
        let back = load(dir.path(), Some("correct horse")).unwrap();
        assert_eq!(back.node_id(), id.node_id());
    }

    #[test]
    fn a_missing_or_damaged_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path(), None), Err(KeyError::Missing(_))));
        fs::write(key_path(dir.path()), "{nope").unwrap();
        assert!(matches!(
            load(dir.path(), None),
            Err(KeyError::Corrupt { .. })
        ));
    }
}
