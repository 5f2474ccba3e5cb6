//! Task-scheduler schemes: which of the candidate engines gets a task.
//!
//! The candidates are handed over in **LRU order** (least recently assigned first; a newly
//! registered engine counts as least recently used), with their current loads. Each scheme
//! returns an index into that list, following ipyparallel's chooser functions:
//!
//! * `leastload` (default): the first candidate with the minimal load, so ties go to the LRU one.
//! * `lru`: the first candidate.
//! * `plainrandom`: uniform random.
//! * `twobin`: two uniform picks, the earlier (more LRU) of the two.
//! * `weighted`: two picks weighted by `1/(load + 1e-6)`, the lighter of the two.
//! * `pure`: plain round-robin over engines in registration order, no hwm, no dependencies
//!   (ipyparallel implements it with a ROUTER→DEALER queue; the client refuses dependency flags).

use rand::Rng;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    LeastLoad,
    Lru,
    PlainRandom,
    TwoBin,
    Weighted,
    Pure,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "unknown task scheme {0:?} (expected leastload, lru, plainrandom, twobin, weighted or pure)"
)]
pub struct UnknownScheme(pub String);

impl FromStr for Scheme {
    type Err = UnknownScheme;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "leastload" => Scheme::LeastLoad,
            "lru" => Scheme::Lru,
            "plainrandom" => Scheme::PlainRandom,
            "twobin" => Scheme::TwoBin,
            "weighted" => Scheme::Weighted,
            "pure" => Scheme::Pure,
            other => return Err(UnknownScheme(other.to_string())),
        })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::LeastLoad => "leastload",
            Scheme::Lru => "lru",
            Scheme::PlainRandom => "plainrandom",
            Scheme::TwoBin => "twobin",
            Scheme::Weighted => "weighted",
            Scheme::Pure => "pure",
        })
    }
}

impl Scheme {
    /// Pick an index into `loads` (LRU order, non-empty). `rr` is the round-robin cursor used by
    /// `pure` (there `loads` is in registration order). Returns 0 for an empty list.
    pub fn choose(&self, loads: &[u32], rng: &mut impl Rng, rr: &mut usize) -> usize {
        let n = loads.len();
        if n <= 1 {
            return 0;
        }
        match self {
            Scheme::LeastLoad => leastload(loads),
            Scheme::Lru => 0,
            Scheme::PlainRandom => rng.gen_range(0..n),
            Scheme::TwoBin => rng.gen_range(0..n).min(rng.gen_range(0..n)),
            Scheme::Weighted => weighted(loads, rng),
            Scheme::Pure => {
                let i = *rr % n;
                *rr = rr.wrapping_add(1);
                i
            }
        }
    }
}

/// First index of the minimal load.
pub fn leastload(loads: &[u32]) -> usize {
    let mut best = 0;
    for (i, &l) in loads.iter().enumerate() {
        if l < loads[best] {
            best = i;
        }
    }
    best
}

fn weighted(loads: &[u32], rng: &mut impl Rng) -> usize {
    let weights: Vec<f64> = loads.iter().map(|&l| 1.0 / (1e-6 + l as f64)).collect();
    let total: f64 = weights.iter().sum();
    let pick = |x: f64| {
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w;
            if acc >= x {
                return i;
            }
        }
        weights.len() - 1
    };
    let a = pick(rng.gen::<f64>() * total);
    let b = pick(rng.gen::<f64>() * total);
    if weights[b] > weights[a] {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn parse_and_display() {
        for s in [
            "leastload",
            "lru",
            "plainrandom",
            "twobin",
            "weighted",
            "pure",
        ] {
            assert_eq!(s.parse::<Scheme>().unwrap().to_string(), s);
        }
        assert!("none".parse::<Scheme>().is_err());
    }

    #[test]
    fn leastload_takes_first_minimum() {
        assert_eq!(leastload(&[2, 1, 0, 0]), 2);
        assert_eq!(leastload(&[0, 0]), 0);
        assert_eq!(leastload(&[3, 2, 2]), 1);
    }

    #[test]
    fn lru_takes_front() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut rr = 0;
        assert_eq!(Scheme::Lru.choose(&[5, 0, 0], &mut rng, &mut rr), 0);
    }

    #[test]
    fn twobin_prefers_front_and_stays_in_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut rr = 0;
        let mut hist = [0usize; 4];
        for _ in 0..4000 {
            hist[Scheme::TwoBin.choose(&[0, 0, 0, 0], &mut rng, &mut rr)] += 1;
        }
        // min of two uniform picks: P(0) = 7/16, P(3) = 1/16
        assert!(
            hist[0] > hist[1] && hist[1] > hist[2] && hist[2] > hist[3],
            "{hist:?}"
        );
    }

    #[test]
    fn plainrandom_covers_all() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut rr = 0;
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[Scheme::PlainRandom.choose(&[9, 9, 9], &mut rng, &mut rr)] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn weighted_prefers_idle() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut rr = 0;
        let mut idle = 0;
        for _ in 0..1000 {
            if Scheme::Weighted.choose(&[10, 0, 10], &mut rng, &mut rr) == 1 {
                idle += 1;
            }
        }
        assert!(idle > 990, "{idle}");
    }

    #[test]
    fn pure_round_robins() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut rr = 0;
        let picks: Vec<usize> = (0..6)
            .map(|_| Scheme::Pure.choose(&[0, 5, 9], &mut rng, &mut rr))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
