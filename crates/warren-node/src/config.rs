//! The node's config file (TOML): a raw, all-optional shape read from disk, and the
//! validated pieces each component gets. Flags override or extend what the file says.

use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;
use warren_tunnel::exit::{Exit, ExitCaps, ExitPolicy, ExitRules};

/// The file as written. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub exit: Option<ExitRules>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the config file {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
}

impl FileConfig {
    /// Reads `path`. A missing file is an error here; callers decide whether it may be absent.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(rules) = &file.exit {
            ExitPolicy::new(rules, Vec::new(), Vec::new()).map_err(|e| e.to_string())?;
        }
        Ok(file)
    }
}

/// The exit's settings: rules and caps from the file, widened by `--exit-allow`.
#[derive(Clone, Debug, Default)]
pub struct ExitConfig {
    pub rules: ExitRules,
    pub allow: Vec<IpNet>,
}

impl ExitConfig {
    /// The exit connector and its caps, with this host's own addresses denied.
    pub fn build(&self) -> Result<(Exit, ExitCaps), String> {
        let policy = ExitPolicy::new(&self.rules, self.allow.clone(), Exit::own_addresses())
            .map_err(|e| e.to_string())?;
        let caps = ExitCaps::from_rules(&self.rules).map_err(|e| e.to_string())?;
        Ok((Exit::new(policy), caps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config in the repository lists every option and parses.
    #[test]
    fn example_config_parses_and_is_complete() {
        let text = include_str!("../../../config.example.toml");
        let file = FileConfig::parse(text).expect("config.example.toml parses");
        let exit = file.exit.expect("the example has an [exit] table");
        for key in [
            "max_sessions",
            "max_flows_per_session",
            "max_bytes_per_session",
            "[[exit.rule]]",
            "action",
            "cidr",
            "domain_suffix",
            "ports",
        ] {
            assert!(
                text.contains(key),
                "config.example.toml does not mention {key}"
            );
        }
        let _ = exit;
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = FileConfig::parse("[exit]\nmax_session = 3\n").unwrap_err();
        assert!(e.contains("max_session"), "{e}");
        let e = FileConfig::parse("[exits]\n").unwrap_err();
        assert!(e.contains("exits"), "{e}");
    }
}
