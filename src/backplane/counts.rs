//! Member counts of the other instances, per room: what this instance adds
//! to its own count to tell clients a room's size.
//!
//! Fed by the backplane's news, each of which carries a node's absolute
//! count in a room, so news applied twice (a snapshot overlapping the
//! stream) changes nothing.

use std::collections::HashMap;

use super::NodeCounts;

/// Room name to the other nodes' member counts there.
#[derive(Debug, Default)]
pub struct RemoteCounts {
    rooms: HashMap<Box<str>, Vec<(Box<str>, u32)>>,
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

    /// Records that `node` has `count` members in `room`.
    pub fn set(&mut self, room: &str, node: &str, count: u32) {
        if count == 0 {
            return self.clear(room, node);
        }
        let nodes = match self.rooms.get_mut(room) {
            Some(nodes) => nodes,
            None => self.rooms.entry(room.into()).or_default(),
        };
        match nodes.iter_mut().find(|(n, _)| **n == *node) {
            Some((_, c)) => *c = count,
            None => nodes.push((node.into(), count)),
        }
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
            nodes.retain(|(n, _)| **n != *node);
            if nodes.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Forgets `node` in every room.
    pub fn remove_node(&mut self, node: &str) {
        self.rooms.retain(|_, nodes| {
            nodes.retain(|(n, _)| **n != *node);
            !nodes.is_empty()
        });
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
    }
}
