//! Local misbehaviour scores. Every bad message a peer sends costs it points; a peer whose
//! score falls to the ban line is disconnected and refused for a while. Scores recover
//! slowly, so an honest peer that relayed one stale offer is not punished for long.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Points a rejected message costs.
pub const REJECT_PENALTY: i32 = 10;
/// At or below this a peer is banned.
pub const BAN_SCORE: i32 = -50;
/// How long a ban lasts.
pub const BAN_DURATION: Duration = Duration::from_secs(600);
/// Points regained per minute of good behaviour.
const RECOVERY_PER_MINUTE: i32 = 5;
/// Peers remembered at once; the oldest entry goes first beyond this.
const MAX_TRACKED: usize = 4096;

#[derive(Debug)]
struct Entry {
    score: i32,
    updated: Instant,
    banned_until: Option<Instant>,
}

/// What a penalty did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreChange {
    Lowered { score: i32 },
    Banned { score: i32 },
}

/// Scores by peer. Generic over the key so the swarm can use `PeerId` and tests anything.
#[derive(Debug)]
pub struct PeerScores<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for PeerScores<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> PeerScores<K> {
    fn recovered(entry: &Entry, now: Instant) -> i32 {
        let minutes = now.saturating_duration_since(entry.updated).as_secs() / 60;
        let regained = i32::try_from(minutes)
            .unwrap_or(i32::MAX)
            .saturating_mul(RECOVERY_PER_MINUTE);
        entry.score.saturating_add(regained).min(0)
    }

    /// Counts one bad message from `peer`.
    pub fn penalise(&mut self, peer: &K, now: Instant) -> ScoreChange {
        if !self.entries.contains_key(peer) && self.entries.len() >= MAX_TRACKED {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.updated)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        let entry = self.entries.entry(peer.clone()).or_insert(Entry {
            score: 0,
            updated: now,
            banned_until: None,
        });
        entry.score = Self::recovered(entry, now).saturating_sub(REJECT_PENALTY);
        entry.updated = now;
        if entry.score <= BAN_SCORE {
            entry.banned_until = Some(now + BAN_DURATION);
            ScoreChange::Banned { score: entry.score }
        } else {
            ScoreChange::Lowered { score: entry.score }
        }
    }

    pub fn score(&self, peer: &K, now: Instant) -> i32 {
        self.entries
            .get(peer)
            .map_or(0, |e| Self::recovered(e, now))
    }

    pub fn is_banned(&self, peer: &K, now: Instant) -> bool {
        self.entries
            .get(peer)
            .and_then(|e| e.banned_until)
            .is_some_and(|until| now < until)
    }

    /// Lifts bans that have run out; returns the peers to unblock.
    pub fn expire_bans(&mut self, now: Instant) -> Vec<K> {
        let mut lifted = Vec::new();
        for (k, e) in &mut self.entries {
            if e.banned_until.is_some_and(|until| now >= until) {
                e.banned_until = None;
                e.score = 0;
                lifted.push(k.clone());
            }
        }
        lifted
    }

    pub fn banned(&self, now: Instant) -> Vec<K> {
        self.entries
            .iter()
            .filter(|(_, e)| e.banned_until.is_some_and(|u| now < u))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_rejections_ban_then_the_ban_expires() {
        let mut s = PeerScores::default();
        let t0 = Instant::now();
        for i in 1..5 {
            assert_eq!(
                s.penalise(&"mallory", t0),
                ScoreChange::Lowered { score: -10 * i }
            );
        }
        assert_eq!(
            s.penalise(&"mallory", t0),
            ScoreChange::Banned { score: -50 }
        );
        assert!(s.is_banned(&"mallory", t0));
        assert!(!s.is_banned(&"alice", t0));
        assert_eq!(s.banned(t0), vec!["mallory"]);
        assert!(s.expire_bans(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(s.expire_bans(t0 + BAN_DURATION), vec!["mallory"]);
        assert!(!s.is_banned(&"mallory", t0 + BAN_DURATION));
    }

    #[test]
    fn scores_recover_with_time() {
        let mut s = PeerScores::default();
        let t0 = Instant::now();
        s.penalise(&1u8, t0);
        s.penalise(&1u8, t0);
        assert_eq!(s.score(&1u8, t0), -20);
        assert_eq!(s.score(&1u8, t0 + Duration::from_secs(120)), -10);
        assert_eq!(s.score(&1u8, t0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut s = PeerScores::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            s.penalise(&i, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(s.entries.len(), MAX_TRACKED);
    }
}
