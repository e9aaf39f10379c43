//! The room table: rooms by name, members by connection key.
//!
//! Rooms live in a slab and are found by name through one hash map; a
//! member's position in its room is kept by the member, so leaving is a
//! swap-remove, O(1) however large the room.

use std::collections::HashMap;

use crate::slab::{Key, Slab};

/// Where a connection sits in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The room.
    pub room: Key,
    /// The index of the member in the room's member list.
    pub position: u32,
}

/// A room and its members.
#[derive(Debug)]
pub struct Room {
    /// The room's name, as clients gave it.
    pub name: Box<str>,
    /// The members' connection keys, in no particular order.
    pub members: Vec<Key>,
}

/// What leaving a room changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The member moved into the leaver's position, whose membership must
    /// be updated to it.
    pub moved: Option<(Key, u32)>,
    /// Members still in the room; 0 means the room was removed.
    pub remaining: usize,
}

/// All rooms.
#[derive(Default)]
pub struct Rooms {
    rooms: Slab<Room>,
    by_name: HashMap<Box<str>, Key>,
}

impl Rooms {
    /// No rooms.
    pub fn new() -> Self {
        Rooms::default()
    }

    /// How many rooms have members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The room at `key`, if it still exists.
    pub fn get(&self, key: Key) -> Option<&Room> {
        self.rooms.get(key)
    }

    /// The room named `name`, if it exists.
    pub fn find(&self, name: &str) -> Option<Key> {
        self.by_name.get(name).copied()
    }

    /// Adds `member` to the room named `name`, creating the room if needed.
    pub fn join(&mut self, name: &str, member: Key) -> Membership {
        let room = match self.by_name.get(name) {
            Some(&key) => key,
            None => {
                let key = self.rooms.insert(Room {
                    name: name.into(),
                    members: Vec::new(),
                });
                self.by_name.insert(name.into(), key);
                key
            }
        };
        let members = &mut self
            .rooms
            .get_mut(room)
            .expect("indexed rooms exist")
            .members;
        let position = u32::try_from(members.len()).expect("a room holds fewer than 2^32 members");
        members.push(member);
        Membership { room, position }
    }

    /// Removes the member at `at`; removes the room when it empties.
    ///
    /// # Panics
    ///
    /// If `at` does not name a current membership: the caller's record of
    /// its memberships is out of step with the table, which is a bug.
    pub fn leave(&mut self, at: Membership) -> Left {
        let room = self
            .rooms
            .get_mut(at.room)
            .expect("a membership names a live room");
        let position = at.position as usize;
        room.members.swap_remove(position);
        let moved = room.members.get(position).map(|&k| (k, at.position));
        let remaining = room.members.len();
        if remaining == 0 {
            let room = self.rooms.remove(at.room).expect("checked above");
            self.by_name.remove(&room.name);
        }
        Left { moved, remaining }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Key> {
        let mut s = Slab::new();
        (0..n).map(|i| s.insert(i)).collect()
    }

    #[test]
    fn join_creates_and_leave_removes() {
        let k = keys(2);
        let mut rooms = Rooms::new();
        let a = rooms.join("r", k[0]);
        let b = rooms.join("r", k[1]);
        assert_eq!(a.room, b.room);
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms.get(a.room).unwrap().members, vec![k[0], k[1]]);
        let left = rooms.leave(a);
        assert_eq!(
            left,
            Left {
                moved: Some((k[1], 0)),
                remaining: 1
            }
        );
        let b = Membership {
            room: b.room,
            position: 0,
        };
        assert_eq!(rooms.leave(b).remaining, 0);
        assert!(rooms.is_empty());
        assert_eq!(rooms.find("r"), None);
    }

    #[test]
    fn a_removed_rooms_key_is_not_reused_by_name() {
        let k = keys(1);
        let mut rooms = Rooms::new();
        let first = rooms.join("a", k[0]);
        rooms.leave(first);
        let second = rooms.join("b", k[0]);
        assert!(
            rooms.get(first.room).is_none(),
            "stale room key must find nothing"
        );
        assert_eq!(&*rooms.get(second.room).unwrap().name, "b");
    }

    #[test]
    fn positions_stay_consistent_under_churn() {
        let k = keys(50);
        let mut rooms = Rooms::new();
        let mut at: Vec<Option<Membership>> = k.iter().map(|&m| Some(rooms.join("r", m))).collect();
        for i in (0..50).step_by(3).chain((1..50).step_by(3)) {
            let left = rooms.leave(at[i].take().unwrap());
            if let Some((moved, pos)) = left.moved {
                let idx = k.iter().position(|&x| x == moved).unwrap();
                at[idx].as_mut().unwrap().position = pos;
            }
        }
        let room = rooms.find("r").unwrap();
        let members = &rooms.get(room).unwrap().members;
        for (i, m) in at.iter().enumerate() {
            if let Some(m) = m {
                assert_eq!(members[m.position as usize], k[i]);
            }
        }
        assert_eq!(members.len(), at.iter().flatten().count());
    }
}
