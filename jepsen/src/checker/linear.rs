//! Linearizability search (Wing & Gong, with Lowe's memoization), as porcupine implements it.
//!
//! The history of one partition (one key) is a list of operations with call and return times.
//! Events are walked in time order through a doubly linked list. At a call event the search tries
//! to linearize that operation now: if the model accepts it and the pair (set of linearized
//! operations, model state) was not seen before, the operation's call and return are lifted out of
//! the list and the search restarts at the head. At a return event whose operation was not
//! linearized yet, no order exists along the current path, so the last choice is undone.
//!
//! Unknown outcomes (`info`) return at time `u64::MAX`: they may be linearized at any point after
//! their call, and an operation that never took effect is equivalent to one linearized last,
//! after everything it could have influenced. The model decides what such an operation may do
//! with `output == None`.
//!
//! Worked example: `w(1) [0,10]`, `r->1 [5,6]`, `w(2) [7,8]`. Events: c(w1) c(r) r(r) c(w2)
//! r(w2) r(w1). The search linearizes w1, then r (state 1 matches), then w2: legal. Had the read
//! returned 2 with `w(2)` starting after it returned, no path reaches r(r) with r linearized.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Every state the model may be in after applying `input` with observed `output` (`None`:
    /// outcome unknown); empty when the observation is impossible in state `s`. More than one
    /// state models nondeterminism, such as an unknown compare-and-set whose guard cannot be
    /// evaluated.
    fn step(
        &self,
        s: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State>;
}

/// One operation of a partition.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Index of the invoke event in the full history, for reports.
    pub id: usize,
    pub call: u64,
    /// `u64::MAX` for unknown outcomes.
    pub ret: u64,
    pub input: I,
    /// `None` for unknown outcomes.
    pub output: Option<O>,
}

/// The search's answer for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No linearization exists. `stuck` is the operation whose return could never be reached
    /// on the deepest path the search found; `longest` are the ids linearized on that path.
    Illegal {
        stuck: usize,
        longest: Vec<usize>,
    },
    /// The search exceeded its step budget.
    Unknown,
}

struct Event {
    op: usize,
    is_call: bool,
    /// For a call: index of its return event.
    matching: usize,
    prev: usize,
    next: usize,
}

/// A choice on the search path: call event, state before it, alternatives not tried yet.
type Choice<S> = (usize, S, Vec<S>);

/// Checks one partition. `budget` bounds the number of search steps.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], budget: u64) -> Outcome {
    let n = ops.len();
    if n == 0 {
        return Outcome::Linearizable;
    }
    // Event list with a sentinel at 0; calls sort before returns at equal times (concurrent).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.max(op.call), false, i));
    }
    order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut events: Vec<Event> = Vec::with_capacity(2 * n + 1);
    events.push(Event {
        op: usize::MAX,
        is_call: false,
        matching: 0,
        prev: 0,
        next: 1,
    });
    let mut ret_pos = vec![0usize; n];
    for (k, (_, is_call, op)) in order.iter().enumerate() {
        let idx = k + 1;
        if !is_call {
            ret_pos[*op] = idx;
        }
        events.push(Event {
            op: *op,
            is_call: *is_call,
            matching: 0,
            prev: idx - 1,
            next: if k + 1 == order.len() { 0 } else { idx + 1 },
        });
    }
    events[0].prev = events.len() - 1;
    for e in events.iter_mut().skip(1) {
        if e.is_call {
            e.matching = ret_pos[e.op];
        }
    }

    // The set of linearized operations is kept as a 128-bit Zobrist hash (XOR of a random key
    // per operation) so memoizing a step costs no allocation; a false "seen before" needs a
    // 128-bit collision.
    let mut rng = fastrand::Rng::with_seed(0x5eed_cafe);
    let keys: Vec<u128> = (0..n).map(|_| rng.u128(..)).collect();
    let mut linearized: u128 = 0;
    let mut cache: HashSet<(u128, M::State)> = HashSet::new();
    let mut stack: Vec<Choice<M::State>> = Vec::new();
    let mut state = model.init();
    let mut cursor = events[0].next;
    let mut steps = 0u64;
    let mut deepest: (usize, usize, Vec<usize>) = (0, usize::MAX, Vec::new());

    let lift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].matching;
        for e in [call, ret] {
            let (p, nx) = (events[e].prev, events[e].next);
            events[p].next = nx;
            events[nx].prev = p;
        }
    };
    let unlift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].matching;
        for e in [ret, call] {
            let (p, nx) = (events[e].prev, events[e].next);
            events[p].next = e;
            events[nx].prev = e;
        }
    };

    // Tries the alternatives in order; on success the operation is linearized and pushed.
    let mut descend = |events: &mut Vec<Event>,
                       stack: &mut Vec<Choice<M::State>>,
                       linearized: &mut u128,
                       state: &mut M::State,
                       e: usize,
                       mut alts: Vec<M::State>|
     -> bool {
        let lin = *linearized ^ keys[events[e].op];
        while let Some(next) = alts.pop() {
            if cache.insert((lin, next.clone())) {
                stack.push((e, std::mem::replace(state, next), alts));
                *linearized = lin;
                lift(events, e);
                return true;
            }
        }
        false
    };

    while events[0].next != 0 {
        steps += 1;
        if steps > budget {
            return Outcome::Unknown;
        }
        let e = cursor;
        if events[e].is_call {
            let op = &ops[events[e].op];
            let alts = model.step(&state, &op.input, op.output.as_ref());
            if descend(
                &mut events,
                &mut stack,
                &mut linearized,
                &mut state,
                e,
                alts,
            ) {
                cursor = events[0].next;
            } else {
                cursor = events[e].next;
            }
        } else {
            if stack.len() >= deepest.0 {
                deepest = (
                    stack.len(),
                    events[e].op,
                    stack
                        .iter()
                        .map(|(c, _, _)| ops[events[*c].op].id)
                        .collect(),
                );
            }
            // Undo the last choice; try its remaining alternatives, else move past its call.
            let Some((call, prev_state, alts)) = stack.pop() else {
                return Outcome::Illegal {
                    stuck: ops[deepest.1].id,
                    longest: deepest.2,
                };
            };
            linearized ^= keys[events[call].op];
            state = prev_state;
            unlift(&mut events, call);
            cursor = if descend(
                &mut events,
                &mut stack,
                &mut linearized,
                &mut state,
                call,
                alts,
            ) {
                events[0].next
            } else {
                events[call].next
            };
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain register of integers for the search's own tests.
    struct Reg;
    #[derive(Debug)]
    enum In {
        W(i64),
        R,
    }
    impl Model for Reg {
        type State = i64;
        type Input = In;
        type Output = i64;
        fn init(&self) -> i64 {
            0
        }
        fn step(&self, s: &i64, i: &In, o: Option<&i64>) -> Vec<i64> {
            match i {
                In::W(v) => vec![*v],
                In::R => match o {
                    Some(v) if v != s => vec![],
                    _ => vec![*s],
                },
            }
        }
    }
    fn op(id: usize, call: u64, ret: u64, input: In, output: Option<i64>) -> Operation<In, i64> {
        Operation {
            id,
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn overlapping_write_and_read_is_linearizable() {
        let ops = vec![
            op(0, 0, 10, In::W(1), Some(0)),
            op(1, 5, 6, In::R, Some(1)),
            op(2, 7, 8, In::W(2), Some(0)),
            op(3, 9, 12, In::R, Some(2)),
        ];
        assert_eq!(check(&Reg, &ops, 1_000_000), Outcome::Linearizable);
        // w1 must precede the first read, so once w2 completed a read of 1 is stale.
        let mut stale = ops;
        stale[3].output = Some(1);
        assert!(matches!(
            check(&Reg, &stale, 1_000_000),
            Outcome::Illegal { stuck: 3, .. }
        ));
    }

    #[test]
    fn read_of_overwritten_value_is_not() {
        let ops = vec![
            op(0, 0, 1, In::W(1), Some(0)),
            op(1, 2, 3, In::W(2), Some(0)),
            op(2, 4, 5, In::R, Some(1)),
        ];
        match check(&Reg, &ops, 1_000_000) {
            Outcome::Illegal { stuck, .. } => assert_eq!(stuck, 2),
            other => panic!("expected illegal, got {other:?}"),
        }
    }

    #[test]
    fn many_concurrent_ops_finish_within_budget() {
        // 12 overlapping writes and reads: memoization keeps this small.
        let mut ops = Vec::new();
        for i in 0..12 {
            ops.push(op(i, i as u64, 100 + i as u64, In::W(i as i64), Some(0)));
        }
        ops.push(op(12, 200, 201, In::R, Some(11)));
        assert_eq!(check(&Reg, &ops, 10_000_000), Outcome::Linearizable);
    }
}
