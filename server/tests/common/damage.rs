//! Damaging encoded requests the ways a broken or hostile client would, for the decoder tests of
//! the store and of the API server: bit flips, cuts, junk spliced in, slices repeated, bytes
//! replaced, and (for protobuf) fields whose length claims far more than follows.

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
