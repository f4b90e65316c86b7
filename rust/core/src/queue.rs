//! The bookings waiting for their tokens, in booking order, with the tokens queued ahead of
//! any of them in O(log n): a Fenwick tree over dense positions that follow booking order.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Sequence number → (position in the tree, tokens).
    entries: BTreeMap<u64, (usize, u64)>,
    /// Fenwick tree of tokens by position (1-based internally).
    tree: Vec<u64>,
    /// The position the next booking gets.
    next: usize,
}

impl Queue {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn first(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Adds a booking; `seq` is larger than every sequence number queued so far.
    pub(crate) fn push(&mut self, seq: u64, tokens: u64) {
        debug_assert!(self
            .entries
            .keys()
            .next_back()
            .is_none_or(|&last| last < seq));
        if self.next == self.tree.len() {
            self.compact();
        }
        let position = self.next;
        self.next += 1;
        self.entries.insert(seq, (position, tokens));
        self.add(position, tokens, true);
    }

    pub(crate) fn remove(&mut self, seq: u64) {
        if let Some((position, tokens)) = self.entries.remove(&seq) {
            self.add(position, tokens, false);
        }
    }

    /// Tokens queued by bookings made before `seq`.
    pub(crate) fn ahead(&self, seq: u64) -> u64 {
        let Some(&(position, _)) = self.entries.get(&seq) else {
            return 0;
        };
        let mut sum = 0;
        let mut i = position;
        while i > 0 {
            sum += self.tree[i - 1];
            i &= i - 1;
        }
        sum
    }

    fn add(&mut self, position: usize, tokens: u64, plus: bool) {
        let mut i = position + 1;
        while i <= self.tree.len() {
            if plus {
                self.tree[i - 1] += tokens;
            } else {
                self.tree[i - 1] -= tokens;
            }
            i += i & i.wrapping_neg();
        }
    }

    /// Renumbers the live bookings densely into a tree twice their number (amortised O(1)
    /// per push), so memory follows what is queued, not what was ever booked.
    fn compact(&mut self) {
        let live: Vec<(u64, u64)> = self.entries.iter().map(|(&s, &(_, t))| (s, t)).collect();
        self.tree = vec![0; 2 * live.len() + 16];
        self.entries.clear();
        self.next = 0;
        for (seq, tokens) in live {
            self.push(seq, tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_ahead_follow_booking_order_through_removals_and_compaction() {
        let mut queue = Queue::default();
        for seq in 0..100 {
            queue.push(seq, seq % 3 + 1);
        }
        for seq in (0..100).step_by(2) {
            queue.remove(seq);
        }
        for seq in 100..140 {
            queue.push(seq, 1);
        }
        for seq in (1..140u64).filter(|s| *s >= 100 || s % 2 == 1) {
            let expected: u64 = (1..seq)
                .filter(|s| *s >= 100 || s % 2 == 1)
                .map(|s| if s < 100 { s % 3 + 1 } else { 1 })
                .sum();
            assert_eq!(queue.ahead(seq), expected, "seq {seq}");
        }
        assert_eq!(queue.first(), Some(1));
    }
}
