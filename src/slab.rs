//! A slab whose keys carry a generation.
//!
//! Connections and rooms live in slabs so that a key is an index, not a
//! hash lookup. Slots are reused, so a key also records the slot's
//! generation: a key kept after its entry was removed (in a room's member
//! list, say, or a mio token from the same batch of events) finds nothing
//! instead of reaching the slot's next occupant.

/// A slab key: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// Packs the key into a `usize` for use as a mio token.
    pub const fn to_usize(self) -> usize {
        ((self.generation as usize) << 32) | self.index as usize
    }

    /// The inverse of [`Key::to_usize`].
    pub const fn from_usize(raw: usize) -> Key {
        Key {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }

    /// The slot index.
    pub const fn index(self) -> usize {
        self.index as usize
    }

    /// The key of slot `index` in `generation`. Slot indices fit in `u32`:
    /// [`Slab::insert`] refuses to grow past it.
    const fn at(index: usize, generation: u32) -> Key {
        Key {
            index: index as u32,
            generation,
        }
    }
}

enum Entry<T> {
    Occupied { generation: u32, value: T },
    Vacant { generation: u32, next_free: u32 },
}

/// No vacant slot: the end of the free list.
const NONE: u32 = u32::MAX;

/// A generational slab. Insert and remove are O(1) and allocate nothing
/// while the slab is within its capacity.
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

impl<T> Slab<T> {
    /// Bytes one slot takes: the value and its generation.
    pub const fn entry_size() -> usize {
        std::mem::size_of::<Entry<T>>()
    }

    /// An empty slab.
    pub const fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free_head: NONE,
            len: 0,
        }
    }

    /// How many entries are occupied.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its key.
    ///
    /// # Panics
    ///
    /// If the slab would hold more than `u32::MAX - 1` slots, far more than
    /// the process's file descriptor limit allows connections.
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if self.free_head != NONE {
            let index = self.free_head;
            let slot = &mut self.entries[index as usize];
            let Entry::Vacant {
                generation,
                next_free,
            } = *slot
            else {
                unreachable!("the free list links only vacant slots")
            };
            self.free_head = next_free;
            *slot = Entry::Occupied { generation, value };
            return Key { index, generation };
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NONE);
        let index = index.expect("slab holds fewer than u32::MAX slots");
        self.entries.push(Entry::Occupied {
            generation: 0,
            value,
        });
        Key {
            index,
            generation: 0,
        }
    }

    /// The entry at `key`, unless it was removed since.
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.entries.get(key.index()) {
            Some(Entry::Occupied { generation, value }) if *generation == key.generation => {
                Some(value)
            }
            _ => None,
        }
    }

    /// The entry at `key` mutably, unless it was removed since.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.entries.get_mut(key.index()) {
            Some(Entry::Occupied { generation, value }) if *generation == key.generation => {
                Some(value)
            }
            _ => None,
        }
    }

    /// Removes and returns the entry at `key`; `None` if it is gone already.
    /// The slot's generation moves on, so `key` never matches again.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.entries.get_mut(key.index())?;
        match slot {
            Entry::Occupied { generation, .. } if *generation == key.generation => {}
            _ => return None,
        }
        let next = Entry::Vacant {
            generation: key.generation.wrapping_add(1),
            next_free: self.free_head,
        };
        let Entry::Occupied { value, .. } = std::mem::replace(slot, next) else {
            unreachable!("checked occupied above")
        };
        self.free_head = key.index;
        self.len -= 1;
        Some(value)
    }

    /// Every occupied entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Occupied { generation, value } => Some((Key::at(i, *generation), value)),
                Entry::Vacant { .. } => None,
            })
    }

    /// Every occupied entry with its key, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Occupied { generation, value } => Some((Key::at(i, *generation), value)),
                Entry::Vacant { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_never_reaches_the_new_occupant() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_eq!(a.index(), b.index(), "the slot is reused");
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
    }

    #[test]
    fn keys_round_trip_through_tokens() {
        let mut slab = Slab::new();
        for _ in 0..3 {
            let k = slab.insert(1);
            slab.remove(k);
        }
        let k = slab.insert(7);
        assert_eq!(Key::from_usize(k.to_usize()), k);
        assert_eq!(slab.get(Key::from_usize(k.to_usize())), Some(&7));
    }

    #[test]
    fn len_and_iteration_follow_inserts_and_removes() {
        let mut slab = Slab::new();
        let keys: Vec<Key> = (0..10).map(|i| slab.insert(i)).collect();
        for k in keys.iter().step_by(2) {
            slab.remove(*k);
        }
        assert_eq!(slab.len(), 5);
        let seen: Vec<i32> = slab.iter().map(|(_, v)| *v).collect();
        assert_eq!(seen, vec![1, 3, 5, 7, 9]);
        for (k, v) in slab.iter_mut() {
            assert_eq!(slab_value_of(k), *v as usize);
            *v += 100;
        }
        assert_eq!(slab.get(keys[1]), Some(&101));
    }

    fn slab_value_of(k: Key) -> usize {
        k.index()
    }
}
