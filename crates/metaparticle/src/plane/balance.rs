//! Choosing a replica: "power of two random choices" (Mitzenmacher, *The Power of Two Choices in
//! Randomized Load Balancing*, 2001), the algorithm behind tower's `p2c` balancer.
//!
//! Pick two distinct candidates and take the one with fewer requests in flight. It needs no shared
//! state beyond each replica's in-flight count, reacts to slow replicas within a few requests, and
//! avoids the herding of "always least loaded" on stale counts. One candidate is taken in turn
//! (round robin) and the other at random, and a tie goes to the one whose turn it is: under load
//! this is still two choices, while light traffic, where every count is zero, visits the replicas
//! in order instead of at random (with pure random choice, ten calls miss one of three replicas
//! one time in twenty). Candidates are the
//! healthy replicas not yet tried for this request; only when none is healthy are the unhealthy
//! ones tried, so a wrong health verdict can delay a request but never fail it.

use rand::Rng;

/// What the chooser knows about one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    /// Whether the last probe or call found it healthy.
    pub healthy: bool,
    /// Requests in flight to it from this process.
    pub pending: usize,
}

/// The replica to try next, or `None` when every replica has been tried. `turn` counts the
/// caller's choices: each call should pass the next number.
pub(crate) fn choose(replicas: &[Load], tried: &[usize], turn: usize, rng: &mut impl Rng) -> Option<usize> {
    let untried = (0..replicas.len()).filter(|i| !tried.contains(i));
    let healthy: Vec<usize> = untried.clone().filter(|&i| replicas[i].healthy).collect();
    let candidates = if healthy.is_empty() { untried.collect() } else { healthy };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = turn % n;
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (candidates[a], candidates[b]);
            Some(if replicas[b].pending < replicas[a].pending { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn loads() -> impl Strategy<Value = Vec<Load>> {
        prop::collection::vec(
            (any::<bool>(), 0usize..8).prop_map(|(healthy, pending)| Load { healthy, pending }),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn never_a_replica_already_tried(replicas in loads(), tried_mask in any::<u8>(), seed in any::<u64>()) {
            let tried: Vec<usize> = (0..replicas.len()).filter(|i| tried_mask & (1 << i) != 0).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            match choose(&replicas, &tried, seed as usize, &mut rng) {
                Some(i) => prop_assert!(i < replicas.len() && !tried.contains(&i)),
                None => prop_assert_eq!(tried.len(), replicas.len()),
            }
        }

        #[test]
        fn an_unhealthy_replica_only_when_no_healthy_one_is_left(replicas in loads(), seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            if let Some(i) = choose(&replicas, &[], seed as usize, &mut rng) {
                prop_assert!(replicas[i].healthy || replicas.iter().all(|r| !r.healthy));
            }
        }

        #[test]
        fn never_the_busiest_of_several_healthy_replicas(replicas in loads(), seed in any::<u64>()) {
            let healthy: Vec<&Load> = replicas.iter().filter(|r| r.healthy).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let busiest = healthy.iter().map(|r| r.pending).max().unwrap_or(0);
            let unique_busiest = healthy.iter().filter(|r| r.pending == busiest).count() == 1;
            if healthy.len() >= 2 && unique_busiest {
                let i = choose(&replicas, &[], seed as usize, &mut rng).unwrap();
                prop_assert!(replicas[i].pending < busiest);
            }
        }
    }

    proptest! {
        #[test]
        fn idle_replicas_are_visited_in_turn(n in 1usize..8, start in any::<usize>(), seed in any::<u64>()) {
            let replicas = vec![Load { healthy: true, pending: 0 }; n];
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut seen: Vec<usize> = (0..n)
                .map(|k| choose(&replicas, &[], start.wrapping_add(k), &mut rng).unwrap())
                .collect();
            seen.sort();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_replica_whose_turn_it_is_loses_to_a_less_busy_one() {
        let replicas = [Load { healthy: true, pending: 5 }, Load { healthy: true, pending: 0 }];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for turn in 0..10 {
            assert_eq!(choose(&replicas, &[], turn, &mut rng), Some(1));
        }
    }
}
