//! Channels on disk: one append-only log per channel, `channels/<publisher id>.log`, of
//! length-prefixed signed entries. Loading replays each log through [`Channel::append`], so
//! a log is checked (signatures, sequence, chain) every time it is read, and a torn last
//! record from a crash is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use warren_types::NodeId;

use crate::channel::{Channel, ChannelError, SignedEntry};

/// Why a channel log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: entry #{index} is refused: {source}")]
    Refused {
        path: PathBuf,
        index: usize,
        #[source]
        source: ChannelError,
    },
    #[error("{path}: record #{index} is cut short or malformed")]
    Malformed { path: PathBuf, index: usize },
    #[error("{path} holds no entries")]
    Empty { path: PathBuf },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> FeedError + '_ {
    move |source| FeedError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of `publisher`'s log.
pub fn log_name(publisher: &NodeId) -> String {
    format!("{publisher}.log")
}

/// Encodes entries as a log.
pub fn encode_log<'a>(entries: impl IntoIterator<Item = &'a SignedEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let bytes = e.to_bytes();
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Reads a log strictly: any record that is malformed or refused is an error naming it.
/// `want` is the publisher the log must belong to, if known.
pub fn read_log(path: &Path, want: Option<NodeId>) -> Result<Channel, FeedError> {
    let bytes = fs::read(path).map_err(at(path))?;
    let (channel, good, bad) = replay(&bytes, want);
    match bad {
        Some((index, Some(source))) => Err(FeedError::Refused {
            path: path.to_path_buf(),
            index,
            source,
        }),
        Some((index, None)) => Err(FeedError::Malformed {
            path: path.to_path_buf(),
            index,
        }),
        None => {
            debug_assert_eq!(good, bytes.len());
            channel.ok_or_else(|| FeedError::Empty {
                path: path.to_path_buf(),
            })
        }
    }
}

/// The first bad record of a log: its index, and why the channel refused it if it parsed.
type BadRecord = Option<(usize, Option<ChannelError>)>;

/// Replays a log: the channel of its good prefix, that prefix's length, and the first bad
/// record.
fn replay(bytes: &[u8], want: Option<NodeId>) -> (Option<Channel>, usize, BadRecord) {
    let mut channel: Option<Channel> = want.map(Channel::new);
    let mut at = 0usize;
    let mut index = 0usize;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 2) else {
            return (channel, at, Some((index, None)));
        };
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let Some(record) = bytes.get(at + 2..at + 2 + len) else {
            return (channel, at, Some((index, None)));
        };
        let Ok(signed) = SignedEntry::from_bytes(record) else {
            return (channel, at, Some((index, None)));
        };
        let ch = match &mut channel {
            Some(ch) => ch,
            None => match signed.verify() {
                Ok(e) => channel.insert(Channel::new(e.publisher)),
                Err(e) => return (None, at, Some((index, Some(e.into())))),
            },
        };
        if let Err(e) = ch.append(signed) {
            return (channel, at, Some((index, Some(e))));
        }
        at += 2 + len;
        index += 1;
    }
    (channel, at, None)
}

/// The channels a node holds, one log each.
#[derive(Clone, Debug)]
pub struct ChannelStore {
    dir: PathBuf,
}

impl ChannelStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, FeedError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        Ok(ChannelStore { dir })
    }

    fn path(&self, publisher: &NodeId) -> PathBuf {
        self.dir.join(log_name(publisher))
    }

    /// Every channel held. A log whose tail is torn or refused keeps its good prefix (the
    /// rest is cut off, with a warning in the returned list).
    pub fn load(&self) -> (Vec<Channel>, Vec<String>) {
        let mut channels = Vec::new();
        let mut warnings = Vec::new();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return (channels, warnings);
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<NodeId>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            let (channel, good, bad) = replay(&bytes, Some(id));
            if let Some((index, why)) = bad {
                warnings.push(format!(
                    "{}: cut at record #{index} ({})",
                    path.display(),
                    why.map_or("torn or malformed".to_string(), |e| e.to_string())
                ));
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(good as u64);
                }
            }
            if let Some(ch) = channel {
                channels.push(ch);
            }
        }
        channels.sort_by_key(|c| c.publisher());
        (channels, warnings)
    }

    /// Appends an entry the caller's [`Channel`] has just taken.
    pub fn append(&self, entry: &SignedEntry) -> Result<(), FeedError> {
        let publisher = entry
            .verify()
            .map_err(|e| FeedError::Refused {
                path: self.dir.clone(),
                index: 0,
                source: e.into(),
            })?
            .publisher;
        let path = self.path(&publisher);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at(&path))?;
        f.write_all(&encode_log([entry])).map_err(at(&path))?;
        f.flush().map_err(at(&path))
    }

    /// Writes a whole channel's log (used by import), replacing what was there.
    pub fn replace(&self, channel: &Channel) -> Result<(), FeedError> {
        write_log(&self.path(&channel.publisher()), channel)
    }
}

/// Writes `channel`'s log to `path` atomically.
pub fn write_log(path: &Path, channel: &Channel) -> Result<(), FeedError> {
    let tmp = path.with_extension("log.tmp");
    {
        let mut f = File::create(&tmp).map_err(at(&tmp))?;
        f.write_all(&encode_log(channel.signed()))
            .map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(at(path))
}

#[cfg(test)]
mod tests {
    use warren_types::Identity;

    use super::*;
    use crate::ContentId;

    fn channel(me: &Identity, n: u64) -> Channel {
        let mut ch = Channel::new(me.node_id());
        for i in 0..n {
            ch.publish(
                me,
                "news",
                ContentId::of(&i.to_le_bytes()),
                "t",
                "text/plain",
                8,
                i,
            )
            .unwrap();
        }
        ch
    }

    #[test]
    fn logs_replay_into_the_same_channel_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChannelStore::open(dir.path()).unwrap();
        let me = Identity::generate();
        let ch = channel(&me, 3);
        for e in ch.signed() {
            store.append(e).unwrap();
        }
        let (loaded, warnings) = store.load();
        assert!(warnings.is_empty());
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].entries(), ch.entries());

        // A crash in the middle of the next append.
        let path = dir.path().join(log_name(&me.node_id()));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (loaded, warnings) = store.load();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(loaded[0].len(), 3);
        assert_eq!(store.load().1, Vec::<String>::new(), "the tail was cut off");
    }

    #[test]
    fn a_strict_read_names_the_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate();
        let ch = channel(&me, 2);
        let path = dir.path().join("x.log");
        write_log(&path, &ch).unwrap();
        assert_eq!(read_log(&path, None).unwrap().entries(), ch.entries());
        // Under another publisher: refused at record 0.
        let other = Identity::generate().node_id();
        assert!(matches!(
            read_log(&path, Some(other)),
            Err(FeedError::Refused { index: 0, .. })
        ));
        // Records in the wrong order.
        let swapped = encode_log([&ch.signed()[1], &ch.signed()[0]]);
        fs::write(&path, swapped).unwrap();
        assert!(matches!(
            read_log(&path, None),
            Err(FeedError::Refused { index: 0, .. })
        ));
        // A flipped byte.
        let mut bytes = encode_log(ch.signed());
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(read_log(&path, None).is_err());
        fs::write(&path, b"").unwrap();
        assert!(matches!(
            read_log(&path, None),
            Err(FeedError::Empty { .. })
        ));
    }
}
