//! Member counts of the other instances, per room: what this instance adds
//! to its own count to tell clients a room's size.
//!
//! Fed by the backplane's news, each of which carries a node's absolute
//! count in a room, so news applied twice (a snapshot overlapping the
//! stream) changes nothing.
//!
//! Anything that can publish to Redis can send news, so none is taken on
//! trust: a count above what one instance may hold in a room is taken as
//! that limit, names longer than a room's or a node's are dropped, and the
//! table holds at most [`MAX_ENTRIES`] (node, room) counts. Past that, news
//! of a new pair is dropped, so those members are missing from `userCount`
//! until entries are freed, while counts already held are still updated
//! and removed. Each of these is logged once, as a warning, and counted
//! in [`Distrusted`] for `/metrics`.

use std::collections::HashMap;

use super::{NodeCounts, MAX_NODE_ID_BYTES};
use crate::chat::MAX_ROOM_ID_BYTES;
use crate::log;

/// The most (node, room) counts held. Ten instances each at the default
/// `--max-rooms` of 10,000 would need this many; at most 256 bytes of room
/// name and 81 of node id each, the table stays within about 50 MB.
pub const MAX_ENTRIES: usize = 100_000;

/// News of other nodes' counts not taken as it came, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Distrusted {
    /// Counts above the ceiling, taken as the ceiling.
    pub capped: u64,
    /// News naming a room or node longer than any can be, dropped.
    pub bad_name: u64,
    /// News of a new (node, room) pair while the table was full, dropped.
    pub table_full: u64,
}

/// Room name to the other nodes' member counts there.
#[derive(Debug)]
pub struct RemoteCounts {
    rooms: HashMap<Box<str>, Vec<(Box<str>, u32)>>,
    /// (node, room) counts held: the lengths of `rooms`' lists, summed.
    entries: usize,
    /// The largest count believed for one node in one room.
    ceiling: u32,
    distrusted: Distrusted,
}

impl Default for RemoteCounts {
    fn default() -> Self {
        RemoteCounts {
            rooms: HashMap::new(),
            entries: 0,
            ceiling: u32::MAX,
            distrusted: Distrusted::default(),
        }
    }
}

impl RemoteCounts {
    /// No counts.
    pub fn new() -> Self {
        RemoteCounts::default()
    }

    /// Members of `room` on other nodes.
    pub fn total(&self, room: &str) -> usize {
        self.rooms
            .get(room)
            .map_or(0, |nodes| nodes.iter().map(|&(_, n)| n as usize).sum())
    }

    /// Counts above `ceiling` (members one instance may hold in one room)
    /// are taken as `ceiling` from now on.
    pub fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = u32::try_from(ceiling).unwrap_or(u32::MAX);
    }

    /// (node, room) counts held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no counts are held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// News not taken as it came, so far.
    pub fn distrusted(&self) -> Distrusted {
        self.distrusted
    }

    /// Records that `node` has `count` members in `room`, within the
    /// bounds in the module's description.
    pub fn set(&mut self, room: &str, node: &str, count: u32) {
        if count == 0 {
            return self.clear(room, node);
        }
        // No local room has such a name, and no instance such an id.
        if room.len() > MAX_ROOM_ID_BYTES || node.len() > MAX_NODE_ID_BYTES {
            self.distrusted.bad_name += 1;
            return;
        }
        let count = self.believable(count, room, node);
        if let Some((_, c)) = self
            .rooms
            .get_mut(room)
            .and_then(|nodes| nodes.iter_mut().find(|(n, _)| **n == *node))
        {
            *c = count;
            return;
        }
        if self.entries >= MAX_ENTRIES {
            self.distrusted.table_full += 1;
            if self.distrusted.table_full == 1 {
                log::warning(
                    "backplane: remote counts table full; news of further rooms dropped",
                    &[
                        ("entries", self.entries.into()),
                        ("node", node.into()),
                        ("room", room.into()),
                    ],
                );
            }
            return;
        }
        let nodes = match self.rooms.get_mut(room) {
            Some(nodes) => nodes,
            None => self.rooms.entry(room.into()).or_default(),
        };
        nodes.push((node.into(), count));
        self.entries += 1;
    }

    /// `count`, or the ceiling when it is above it.
    fn believable(&mut self, count: u32, room: &str, node: &str) -> u32 {
        if count <= self.ceiling {
            return count;
        }
        self.distrusted.capped += 1;
        if self.distrusted.capped == 1 {
            log::warning(
                "backplane: another instance reports more members in a room than one instance may hold; taken as the limit",
                &[
                    ("count", count.into()),
                    ("limit", self.ceiling.into()),
                    ("node", node.into()),
                    ("room", room.into()),
                ],
            );
        }
        self.ceiling
    }

    /// Takes one member of `node` out of `room`.
    pub fn decrement(&mut self, room: &str, node: &str) {
        let current = self
            .rooms
            .get(room)
            .and_then(|nodes| nodes.iter().find(|(n, _)| **n == *node))
            .map_or(0, |&(_, c)| c);
        self.set(room, node, current.saturating_sub(1));
    }

    fn clear(&mut self, room: &str, node: &str) {
        if let Some(nodes) = self.rooms.get_mut(room) {
            let before = nodes.len();
            nodes.retain(|(n, _)| **n != *node);
            self.entries -= before - nodes.len();
            if nodes.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Forgets `node` in every room.
    pub fn remove_node(&mut self, node: &str) {
        let mut removed = 0;
        self.rooms.retain(|_, nodes| {
            let before = nodes.len();
            nodes.retain(|(n, _)| **n != *node);
            removed += before - nodes.len();
            !nodes.is_empty()
        });
        self.entries -= removed;
    }

    /// Replaces everything known about `node` with `rooms`.
    pub fn replace_node(&mut self, node: &str, rooms: &[(String, u32)]) {
        self.remove_node(node);
        for (room, count) in rooms {
            self.set(room, node, *count);
        }
    }

    /// Replaces every count with `table`: (node, its rooms) pairs.
    pub fn replace_all(&mut self, table: &NodeCounts) {
        self.rooms.clear();
        self.entries = 0;
        for (node, rooms) in table {
            for (room, count) in rooms {
                self.set(room, node, *count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_replace() {
        let mut c = RemoteCounts::new();
        c.set("r", "a", 2);
        c.set("r", "b", 3);
        c.set("q", "a", 1);
        assert_eq!(c.total("r"), 5);
        c.set("r", "a", 1);
        assert_eq!(c.total("r"), 4);
        c.decrement("r", "b");
        assert_eq!(c.total("r"), 3);
        c.replace_node("a", &[("z".into(), 7)]);
        assert_eq!((c.total("r"), c.total("q"), c.total("z")), (2, 0, 7));
        c.remove_node("b");
        assert_eq!(c.total("r"), 0);
        assert!(!c.rooms.contains_key("r"), "empty rooms are dropped");
        c.replace_all(&vec![("x".into(), vec![("r".into(), 4)])]);
        assert_eq!((c.total("r"), c.total("z")), (4, 0));
        c.decrement("nowhere", "x");
        assert_eq!(c.total("nowhere"), 0);
        assert_eq!(c.len(), c.rooms.values().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn a_count_above_the_ceiling_is_taken_as_the_ceiling() {
        let mut c = RemoteCounts::new();
        c.set_ceiling(1_000);
        c.set("r", "a", u32::MAX);
        c.set("r", "b", 1_001);
        c.set("r", "c", 1_000);
        assert_eq!(c.total("r"), 3_000);
        assert_eq!(c.distrusted().capped, 2);
        c.set("r", "a", 2);
        assert_eq!(c.total("r"), 2_002);
        c.replace_all(&vec![("x".into(), vec![("q".into(), 4_000_000_000)])]);
        assert_eq!(c.total("q"), 1_000);
        c.replace_node("y", &[("q".into(), u32::MAX)]);
        assert_eq!(c.total("q"), 2_000);
        // Without a ceiling, no sum of u32 counts overflows a usize.
        let mut c = RemoteCounts::new();
        c.set("r", "a", u32::MAX);
        c.set("r", "b", u32::MAX);
        assert_eq!(c.total("r"), 2 * u32::MAX as usize);
    }

    #[test]
    fn names_no_room_or_node_could_have_are_dropped() {
        let mut c = RemoteCounts::new();
        let long_room = "r".repeat(MAX_ROOM_ID_BYTES + 1);
        let long_node = "n".repeat(MAX_NODE_ID_BYTES + 1);
        c.set(&long_room, "a", 1);
        c.set("r", &long_node, 1);
        assert!(c.is_empty());
        assert_eq!(c.distrusted().bad_name, 2);
        c.set(
            &"r".repeat(MAX_ROOM_ID_BYTES),
            &"n".repeat(MAX_NODE_ID_BYTES),
            1,
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_table_holds_at_most_max_entries() {
        let mut c = RemoteCounts::new();
        let rooms: Vec<(String, u32)> = (0..MAX_ENTRIES + 10)
            .map(|i| (format!("r{i}"), 1))
            .collect();
        c.replace_node("a", &rooms);
        assert_eq!(c.len(), MAX_ENTRIES);
        let first = "r0";
        let last = format!("r{}", MAX_ENTRIES + 9);
        assert_eq!((c.total(first), c.total(&last)), (1, 0));
        // Full: a new pair is refused, one held is still updated.
        c.set("new", "b", 5);
        c.set(first, "a", 7);
        assert_eq!((c.total("new"), c.total(first)), (0, 7));
        assert_eq!(c.distrusted().table_full, 11);
        // Room again once entries are freed.
        c.set(first, "a", 0);
        c.set("new", "b", 5);
        assert_eq!((c.len(), c.total("new")), (MAX_ENTRIES, 5));
        c.remove_node("a");
        assert_eq!(c.len(), 1);
        c.decrement("new", "b");
        c.decrement("new", "b");
        assert_eq!((c.len(), c.total("new")), (1, 3));
        c.replace_all(&Vec::new());
        assert!(c.is_empty());
    }
}
