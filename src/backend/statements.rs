//! The protocol-level prepared statements one backend holds, under the
//! names pgcell gave them (`session::prepared` decides what to prepare
//! and when; this keeps the count and the order of use).

use std::collections::{HashMap, VecDeque};

use crate::config::DEFAULT_MAX_PREPARED_STATEMENTS;

/// The statements one backend holds, least recently used first out.
#[derive(Debug)]
pub struct BackendStatements {
    /// Name → (last use, creation), in ticks of `clock`.
    used: HashMap<String, (u64, u64)>,
    /// Most statements kept; the least recently used beyond it is closed.
    limit: usize,
    clock: u64,
    /// `clock` when each `DEALLOCATE ALL`/`DISCARD ALL` still unanswered
    /// was sent: its answer drops only what was created before it.
    drops_sent: VecDeque<u64>,
}

impl Default for BackendStatements {
    fn default() -> Self {
        BackendStatements {
            used: HashMap::new(),
            limit: DEFAULT_MAX_PREPARED_STATEMENTS,
            clock: 0,
            drops_sent: VecDeque::new(),
        }
    }
}

impl BackendStatements {
    /// Keeps at most `limit` statements (at least one) from now on.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.used.contains_key(name)
    }

    pub(crate) fn touch(&mut self, name: &str) {
        self.clock += 1;
        if let Some((used, _)) = self.used.get_mut(name) {
            *used = self.clock;
        }
    }

    /// Records `name`; returns the statements evicted to make room (one,
    /// or more after [`BackendStatements::restore`] went over the bound).
    pub(crate) fn insert(&mut self, name: String) -> Vec<String> {
        self.clock += 1;
        self.used.insert(name, (self.clock, self.clock));
        let mut evicted = Vec::new();
        while self.used.len() > self.limit {
            let Some(oldest) = self
                .used
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            self.used.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// An eviction `Close` never ran (the backend skipped it after an
    /// error): the statement is still there. It comes back as the least
    /// recently used and as created before any pending `DEALLOCATE ALL`.
    pub(crate) fn restore(&mut self, name: String) {
        self.used.entry(name).or_insert((0, 0));
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets everything: the backend dropped all its statements.
    pub fn clear(&mut self) {
        self.used.clear();
        self.drops_sent.clear();
    }

    /// A `DEALLOCATE ALL` or `DISCARD ALL` was answered: forgets the
    /// statements created before it was sent. Those a pipeline created
    /// after it (sent before its answer was read) stay: forgetting them
    /// would re-create them under the same name, which the backend refuses
    /// (`42P05`; found by the `prepared_relay` fuzz target).
    pub fn dropped_all(&mut self) {
        match self.drops_sent.pop_front() {
            Some(sent) => self.used.retain(|_, (_, created)| *created > sent),
            // Not seen going out (inside a function, say): forget all.
            None => self.used.clear(),
        }
    }

    /// Nothing is outstanding on the backend: every drop sent has been
    /// answered (or failed), so none still pending is to be paired with a
    /// later answer.
    pub fn settle_drops(&mut self) {
        self.drops_sent.clear();
    }

    /// A query that may drop every statement is going to the backend.
    pub(crate) fn drop_sent(&mut self) {
        self.drops_sent.push_back(self.clock);
    }

    /// Number of statements held.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}
