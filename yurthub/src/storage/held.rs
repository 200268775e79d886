//! What [`super::Store::holds`] last read for each object, kept while the
//! file has not changed since. A cached GET asks whether its object is
//! already stored at the answered version on every request; between two
//! commits the answer cannot change, and a map lookup costs a fraction of
//! a read transaction.
//!
//! Entries are tagged with the engine's change count read *before* their
//! read transaction began, and one commit or reopen anywhere invalidates
//! them all: no write path has to know about this memo.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::model::Format;

/// More distinct objects than this start the memo afresh: it is a fast path,
/// not an index.
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(crate) struct Held {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The change count every entry was read at.
    at: u64,
    /// Encoded object key → the stored format and resourceVersion, or None
    /// when the object was not stored.
    entries: HashMap<Vec<u8>, Option<(Format, Box<str>)>>,
}

impl Held {
    /// Whether the object under `key` is stored at `rv` in `format`, when
    /// that was read at change count `now`; None when it is not known.
    pub fn lookup(&self, now: u64, key: &[u8], format: Format, rv: &str) -> Option<bool> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.at != now {
            return None;
        }
        let held = state.entries.get(key)?;
        Some(
            held.as_ref()
                .is_some_and(|(f, v)| *f == format && **v == *rv),
        )
    }

    /// Records what a read that began at change count `at` found.
    pub fn remember(&self, at: u64, key: Vec<u8>, held: Option<(Format, &str)>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.at > at {
            return; // read before a change that newer entries already saw
        }
        if state.at < at || state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
            state.at = at;
        }
        state.entries.insert(key, held.map(|(f, v)| (f, v.into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holds_until_the_change_count_moves() {
        let held = Held::default();
        assert_eq!(held.lookup(0, b"k", Format::Json, "5"), None);
        held.remember(0, b"k".to_vec(), Some((Format::Json, "5")));
        held.remember(0, b"gone".to_vec(), None);
        assert_eq!(held.lookup(0, b"k", Format::Json, "5"), Some(true));
        assert_eq!(held.lookup(0, b"k", Format::Json, "6"), Some(false));
        assert_eq!(held.lookup(0, b"k", Format::Protobuf, "5"), Some(false));
        assert_eq!(held.lookup(0, b"gone", Format::Json, "5"), Some(false));
        assert_eq!(held.lookup(1, b"k", Format::Json, "5"), None, "a commit");
        // A read older than the entries is not kept; a newer one restarts.
        held.remember(2, b"k".to_vec(), Some((Format::Json, "7")));
        held.remember(1, b"k".to_vec(), Some((Format::Json, "5")));
        assert_eq!(held.lookup(2, b"k", Format::Json, "7"), Some(true));
        assert_eq!(held.lookup(2, b"gone", Format::Json, "5"), None);
    }

    #[test]
    fn it_starts_afresh_past_its_bound() {
        let held = Held::default();
        for i in 0..MAX_ENTRIES {
            held.remember(0, i.to_be_bytes().to_vec(), None);
        }
        held.remember(0, b"one more".to_vec(), None);
        assert_eq!(
            held.lookup(0, &0usize.to_be_bytes(), Format::Json, "1"),
            None
        );
        assert_eq!(held.lookup(0, b"one more", Format::Json, "1"), Some(false));
    }
}
