//! The promises not yet due: bookings waiting for their slots, in booking order (which is
//! slot order: a new slot is never before the last), as a segment tree over dense positions.
//!
//! Each promise has its tokens and a *mark*: its slot as the budget measures refill (for
//! the token bucket, the units a settled budget has refilled by then). A node sums the
//! tokens under it and keeps the two extremes the token bucket's promise rule needs, so
//! that "how much must stay free now so that every promise is met at its slot" and "when
//! could one more booking be met after all of them" are O(1) at the root, and the tokens
//! ahead of a promise, or the extremes over the promises after one, are O(log n).

use std::collections::BTreeMap;

use crate::clock::Nanos;

/// Far enough from the i128 limits that adding or subtracting any unit count stays in range.
const FAR: i128 = i128::MAX / 4;

/// What a run of consecutive promises adds up to (units are tokens times the unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// Units promised in the run.
    pub(crate) units: i128,
    /// min over its promises k of `mark_k - units of the run up to and including k`: every
    /// promise is met as long as the budget, counted from the run's start, is no later
    /// than this.
    pub(crate) slack: i128,
    /// max over its promises k of `mark_k - units of the run before k`: where the run
    /// would leave a budget that started empty before it.
    pub(crate) reach: i128,
}

impl Run {
    const EMPTY: Run = Run {
        units: 0,
        slack: FAR,
        reach: -FAR,
    };

    fn then(self, next: Run) -> Run {
        Run {
            units: self.units + next.units,
            slack: self.slack.min(next.slack - self.units),
            reach: self.reach.max(next.reach - self.units),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Leaf {
    seq: u64,
    tokens: u64,
    mark: i128,
    slot: Nanos,
}

/// One promise in order: its sequence number, units and mark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Promised {
    pub(crate) seq: u64,
    pub(crate) units: i128,
    pub(crate) mark: i128,
}

#[derive(Debug)]
pub(crate) struct Schedule {
    /// Sequence number → position.
    positions: BTreeMap<u64, usize>,
    leaves: Vec<Option<Leaf>>,
    /// The tree, 1-based: node `i` has children `2i` and `2i + 1`; leaves from `width`.
    nodes: Vec<Run>,
    width: usize,
    /// The position the next promise gets.
    next: usize,
    /// Units per token.
    unit: u64,
}

impl Schedule {
    pub(crate) fn new(unit: u64) -> Self {
        Self {
            positions: BTreeMap::new(),
            leaves: Vec::new(),
            nodes: vec![Run::EMPTY; 2],
            width: 1,
            next: 1,
            unit,
        }
    }

    /// The first promise's sequence number.
    pub(crate) fn first(&self) -> Option<u64> {
        self.positions.first_key_value().map(|(&seq, _)| seq)
    }

    /// The last promise's slot (0 with none; a parked one does not count): a new slot is
    /// never before it.
    pub(crate) fn last_slot(&self) -> Nanos {
        let mut positions = self.positions.values().rev();
        let last = positions.find_map(|&position| self.leaves[position]);
        last.map_or(0, |leaf| leaf.slot)
    }

    /// The slot of the promise that holds the `k`-th promised token (1-based), if there
    /// are that many.
    pub(crate) fn slot_of(&self, k: u64) -> Option<Nanos> {
        let mut want = k as i128 * self.unit as i128;
        if k == 0 || want > self.nodes[1].units {
            return None;
        }
        let mut node = 1;
        while node < self.width {
            let left = self.nodes[2 * node].units;
            if want <= left {
                node *= 2;
            } else {
                want -= left;
                node = 2 * node + 1;
            }
        }
        self.leaves[node - self.width].map(|leaf| leaf.slot)
    }

    /// Every promise, as one run.
    pub(crate) fn all(&self) -> Run {
        self.nodes[1]
    }

    /// Adds a promise; `seq` is larger than every sequence number so far.
    pub(crate) fn push(&mut self, seq: u64, tokens: u64, mark: i128, slot: Nanos) {
        debug_assert!(self
            .positions
            .keys()
            .next_back()
            .is_none_or(|&last| last < seq));
        if self.next >= self.width {
            self.rebuild(self.positions.len() + 1);
        }
        let position = self.next;
        self.next += 1;
        self.positions.insert(seq, position);
        self.set(
            position,
            Some(Leaf {
                seq,
                tokens,
                mark,
                slot,
            }),
        );
    }

    pub(crate) fn remove(&mut self, seq: u64) {
        if let Some(position) = self.positions.remove(&seq) {
            self.set(position, None);
        }
    }

    /// Takes a promise out for a moment, keeping its place (`unpark` puts it back).
    pub(crate) fn park(&mut self, seq: u64) -> Option<(usize, Leaf)> {
        let &position = self.positions.get(&seq)?;
        let leaf = self.leaves[position]?;
        self.set(position, None);
        Some((position, leaf))
    }

    pub(crate) fn unpark(&mut self, parked: Option<(usize, Leaf)>) {
        if let Some((position, leaf)) = parked {
            self.set(position, Some(leaf));
        }
    }

    /// Tokens promised before `seq`.
    pub(crate) fn tokens_ahead(&self, seq: u64) -> u64 {
        let Some(&position) = self.positions.get(&seq) else {
            return 0;
        };
        let units = self.fold(0, position).units;
        (units / self.unit as i128) as u64
    }

    /// The promises after `seq`, as one run.
    pub(crate) fn after(&self, seq: u64) -> Run {
        let Some(&position) = self.positions.get(&seq) else {
            return Run::EMPTY;
        };
        self.fold(position + 1, self.width)
    }

    /// The promises in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Promised> + '_ {
        self.positions.values().filter_map(move |&position| {
            self.leaves[position].map(|leaf| Promised {
                seq: leaf.seq,
                units: self.units(leaf.tokens),
                mark: leaf.mark,
            })
        })
    }

    /// A re-rating changed the units a token costs.
    pub(crate) fn set_unit(&mut self, unit: u64) {
        if unit != self.unit {
            self.unit = unit;
            self.rebuild(self.positions.len());
        }
    }

    pub(crate) fn unit(&self) -> u64 {
        self.unit
    }

    fn units(&self, tokens: u64) -> i128 {
        tokens as i128 * self.unit as i128
    }

    fn run(&self, leaf: Option<Leaf>) -> Run {
        leaf.map_or(Run::EMPTY, |leaf| {
            let units = self.units(leaf.tokens);
            Run {
                units,
                slack: leaf.mark - units,
                reach: leaf.mark,
            }
        })
    }

    fn set(&mut self, position: usize, leaf: Option<Leaf>) {
        self.leaves[position] = leaf;
        let mut node = self.width + position;
        self.nodes[node] = self.run(leaf);
        while node > 1 {
            node /= 2;
            self.nodes[node] = self.nodes[2 * node].then(self.nodes[2 * node + 1]);
        }
    }

    /// The run over positions `from..to`, in order.
    fn fold(&self, from: usize, to: usize) -> Run {
        let (mut left, mut right) = (Run::EMPTY, Run::EMPTY);
        let (mut lo, mut hi) = (from + self.width, to.min(self.width) + self.width);
        while lo < hi {
            if lo & 1 == 1 {
                left = left.then(self.nodes[lo]);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                right = self.nodes[hi].then(right);
            }
            lo /= 2;
            hi /= 2;
        }
        left.then(right)
    }

    /// Renumbers the live promises densely into a tree with room for twice `room` (amortised
    /// O(1) per push), so memory follows what is promised, not what was ever booked.
    fn rebuild(&mut self, room: usize) {
        let live: Vec<Leaf> = self
            .positions
            .values()
            .filter_map(|&position| self.leaves[position])
            .collect();
        self.width = (2 * room).max(16).next_power_of_two();
        self.leaves = vec![None; self.width];
        self.nodes = vec![Run::EMPTY; 2 * self.width];
        self.positions.clear();
        for (position, leaf) in live.into_iter().enumerate() {
            self.positions.insert(leaf.seq, position);
            self.leaves[position] = Some(leaf);
            self.nodes[self.width + position] = self.run(Some(leaf));
        }
        self.next = self.positions.len();
        for node in (1..self.width).rev() {
            self.nodes[node] = self.nodes[2 * node].then(self.nodes[2 * node + 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run over `promises` (tokens, mark) computed directly from its definition.
    fn brute(promises: &[(u64, i128)], unit: u64) -> Run {
        let mut run = Run::EMPTY;
        let mut through = 0i128;
        for &(tokens, mark) in promises {
            let units = tokens as i128 * unit as i128;
            run.reach = run.reach.max(mark - through);
            through += units;
            run.slack = run.slack.min(mark - through);
        }
        run.units = through;
        run
    }

    #[test]
    fn runs_follow_their_definition_through_removals_rebuilds_and_re_ratings() {
        let mut schedule = Schedule::new(3);
        let mut live: Vec<(u64, u64, i128)> = Vec::new();
        for seq in 0..300u64 {
            let (tokens, mark) = (seq % 4 + 1, (seq as i128 * 7) % 50 + seq as i128);
            schedule.push(seq, tokens, mark, seq);
            live.push((seq, tokens, mark));
            if seq % 3 == 0 {
                let gone = live.remove((seq as usize * 5) % live.len()).0;
                schedule.remove(gone);
            }
            if seq == 200 {
                schedule.set_unit(5);
            }
            let unit = if seq >= 200 { 5 } else { 3 };
            let pairs: Vec<(u64, i128)> = live.iter().map(|&(_, t, m)| (t, m)).collect();
            assert_eq!(schedule.all(), brute(&pairs, unit), "after {seq}");
            if live.is_empty() {
                continue;
            }
            let middle = live[live.len() / 2].0;
            let at = live.iter().position(|l| l.0 == middle).unwrap();
            assert_eq!(schedule.after(middle), brute(&pairs[at + 1..], unit));
            let ahead: u64 = live[..at].iter().map(|l| l.1).sum();
            assert_eq!(schedule.tokens_ahead(middle), ahead);
        }
        assert_eq!(schedule.first(), Some(live[0].0));
        let order: Vec<u64> = schedule.iter().map(|p| p.seq).collect();
        assert_eq!(order, live.iter().map(|l| l.0).collect::<Vec<_>>());
    }
}
