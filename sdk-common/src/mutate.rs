//! Mutation fuzzing for the parsers' tests: every parser of untrusted or
//! hand-written input (version files, manifests, profiles, layouts,
//! recipes, GPT, verity superblocks, OCI documents, tar headers) is run on
//! thousands of mutations of valid inputs, and must neither panic nor
//! hang. It owns the mutations and the watchdog; the parsers' own tests
//! choose the inputs.
//!
//! A run is repeatable: the seed is `SDK_FUZZ_SEED` when set, else taken
//! from the clock, and printed with the failing input when a parser
//! panics or takes longer than the limit. `SDK_FUZZ_RUNS` multiplies the
//! number of runs (a longer session by hand).

use std::sync::mpsc;
use std::time::Duration;

/// A small seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Bytes that make parsers take other paths: delimiters of TOML and JSON,
/// quotes, escapes, NUL and high bytes, and numbers at the edges.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b",",
    b":",
    b"\n",
    b"\\",
    b"#",
    b"\0",
    b"\xff",
    b"\xc3",
    b"..",
    b"/",
    b"-1",
    b"0",
    b"18446744073709551615",
    b"4294967296",
    b"1e999",
    b"[[",
    b"]]",
    b"\"\"\"",
    b"null",
    b"true",
    b"sha256:",
    b"\t",
    b"\r\n",
    b"\x1b[",
];

/// One mutation of `input`: 1 to 4 edits (a flipped bit, a byte set to an
/// edge value, a token inserted, a range deleted or repeated, the end cut
/// off).
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'9', b' '][rng.below(6)];
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                v.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = v[a..b].to_vec();
                for _ in 0..1 + rng.below(3) {
                    v.splice(b..b, chunk.iter().copied());
                }
            }
            5 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, bytes);
            }
        }
    }
    v
}

/// The seed of this run: `SDK_FUZZ_SEED`, or the clock.
pub fn seed() -> u64 {
    std::env::var("SDK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Run `parse` on the `seeds` themselves and on `runs` mutations of them
/// (times `SDK_FUZZ_RUNS`), each within `limit`. Panics (failing the
/// calling test) naming `what`, the seed and the input when `parse`
/// panics or hangs; what `parse` returns is not judged.
pub fn check<F>(what: &str, seeds: &[Vec<u8>], runs: usize, limit: Duration, parse: F)
where
    F: Fn(&[u8]) + Send + Sync + 'static + std::panic::RefUnwindSafe,
{
    let seed = seed();
    let runs = runs
        * std::env::var("SDK_FUZZ_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
    let mut rng = Rng::new(seed);
    let mut inputs: Vec<Vec<u8>> = seeds.to_vec();
    for i in 0..runs {
        let base = &seeds[i % seeds.len()];
        // Half the time mutate a mutation: edits that only matter together.
        let m = mutate(&mut rng, base);
        inputs.push(if rng.below(2) == 0 {
            mutate(&mut rng, &m)
        } else {
            m
        });
    }
    let (tx, rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let shared = std::sync::Arc::new(inputs);
    let worker_inputs = shared.clone();
    std::thread::spawn(move || {
        for (i, input) in worker_inputs.iter().enumerate() {
            let r = std::panic::catch_unwind(|| parse(input)).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into())
            });
            if tx.send((i, r)).is_err() {
                return;
            }
        }
    });
    let show = |i: usize| {
        let input = &shared[i];
        format!(
            "{what}: input {i} of {} (SDK_FUZZ_SEED={seed}): {:?}",
            shared.len(),
            String::from_utf8_lossy(&input[..input.len().min(2000)])
        )
    };
    let mut done = 0;
    while done < shared.len() {
        match rx.recv_timeout(limit) {
            Ok((i, Ok(()))) => done = i + 1,
            Ok((i, Err(p))) => panic!("panicked ({p}) on {}", show(i)),
            Err(_) => panic!("took over {limit:?} on {}", show(done)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_repeatable_and_vary() {
        let input = b"sdk-version = \"1\"\n".to_vec();
        let a: Vec<_> = {
            let mut r = Rng::new(7);
            (0..50).map(|_| mutate(&mut r, &input)).collect()
        };
        let b: Vec<_> = {
            let mut r = Rng::new(7);
            (0..50).map(|_| mutate(&mut r, &input)).collect()
        };
        assert_eq!(a, b);
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
    }

    #[test]
    #[should_panic(expected = "panicked (boom)")]
    fn a_panicking_parser_fails_with_its_input() {
        check("boom", &[b"x".to_vec()], 10, Duration::from_secs(5), |b| {
            if !b.is_empty() {
                panic!("boom");
            }
        });
    }

    #[test]
    #[should_panic(expected = "took over")]
    fn a_hanging_parser_fails_naming_the_input() {
        check(
            "hang",
            &[b"x".to_vec()],
            1,
            Duration::from_millis(200),
            |_| std::thread::sleep(Duration::from_secs(3)),
        );
    }
}
