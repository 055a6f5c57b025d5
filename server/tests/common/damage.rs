//! What the decoder tests of the store and of the API server share: damaging encoded requests
//! the ways a broken or hostile client would (bit flips, cuts, junk spliced in, slices repeated,
//! bytes replaced, and for protobuf fields whose length claims far more than follows), the run's
//! seed and length, and counting the panics of the server's handlers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The run's seed and seconds: `CAIRN_FUZZ_SEED` replays a run and `CAIRN_FUZZ_SECS` (default
/// `default_secs`) bounds it. Printed first, so a failure can be replayed.
pub fn settings(default_secs: u64) -> (u64, u64) {
    let seed = std::env::var("CAIRN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs = std::env::var("CAIRN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    eprintln!("decoder fuzz: CAIRN_FUZZ_SEED={seed} CAIRN_FUZZ_SECS={secs}");
    (seed, secs)
}

/// Counts every panic from now on, on any thread (handlers run on the runtime's), still printing
/// each as before.
pub fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let hook = std::panic::take_hook();
    let seen = panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    panics
}

/// Applies one to three damages to `msg`. `protobuf` adds the damages that only mean something
/// to a protobuf decoder.
pub fn damage(rng: &mut fastrand::Rng, mut msg: Vec<u8>, protobuf: bool) -> Vec<u8> {
    for _ in 0..rng.usize(1..4) {
        let len = msg.len();
        match rng.u8(0..if protobuf { 7 } else { 5 }) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                msg[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => msg.truncate(rng.usize(0..len)),
            2 => {
                let at = rng.usize(0..=len);
                let junk: Vec<u8> = (0..rng.usize(1..8)).map(|_| rng.u8(..)).collect();
                msg.splice(at..at, junk);
            }
            3 if len > 1 => {
                let a = rng.usize(0..len);
                let b = rng.usize(a..len);
                let copy = msg[a..=b].to_vec();
                let at = rng.usize(0..=msg.len());
                msg.splice(at..at, copy);
            }
            // A length-delimited field whose length claims the rest of the universe.
            5 => {
                let field = rng.u8(1..16);
                msg.extend([(field << 3) | 2, 0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
            // A field of a wire type the schema does not expect.
            6 => msg.extend([(rng.u8(1..16) << 3) | rng.u8(0..8), rng.u8(..)]),
            _ if len > 0 => {
                let i = rng.usize(0..len);
                msg[i] = rng.u8(..);
            }
            _ => {}
        }
    }
    msg
}
