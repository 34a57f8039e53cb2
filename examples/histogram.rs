//! Code walk, chapter 4: a scatter/gather tree.
//!
//! Each request reaching the root is sent to all ten leaves; each leaf answers 100 numbers drawn
//! from a Gaussian distribution (mean 100, sigma 25); the root merges them into a histogram of
//! ten buckets of width 20.
//!
//! ```console
//! $ cargo run --example histogram
//! $ metaparticle call histogram-service
//! [0,11,52,162,294,281,148,46,5,1]
//! $ cargo run --example histogram -- delete
//! ```
use metaparticle as mp;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const LEAVES: usize = 10;
const SAMPLES: usize = 100;
const BUCKETS: usize = 10;
const BUCKET_WIDTH: f64 = 20.0;

/// A Gaussian distributed value from two uniform ones (the Box-Muller transform).
fn gaussian(sigma: f64, mean: f64) -> f64 {
    let mut rng = rand::rng();
    let u1 = 2.0 * std::f64::consts::PI * rng.random::<f64>();
    let u2 = -2.0 * (1.0 - rng.random::<f64>()).ln();
    u2.sqrt() * u1.cos() * sigma + mean
}

/// What each leaf answers.
#[derive(Serialize, Deserialize)]
struct Sample {
    n: Vec<f64>,
}

/// Executed on each leaf.
fn leaf(_request: Value) -> Sample {
    Sample { n: (0..SAMPLES).map(|_| gaussian(25.0, 100.0)).collect() }
}

/// Executed on the root. The original meant to skip values outside [0, 200) but compared the
/// array rather than the value, so such samples fell outside its array; here they count in the
/// edge buckets, so every sample is in the histogram.
fn merge(responses: Vec<Sample>) -> [u32; BUCKETS] {
    let mut histogram = [0u32; BUCKETS];
    for value in responses.iter().flat_map(|r| &r.n) {
        let bucket = (value / BUCKET_WIDTH).floor().clamp(0.0, (BUCKETS - 1) as f64) as usize;
        histogram[bucket] += 1;
    }
    histogram
}

fn services() -> Vec<mp::Service> {
    // A scatter/gather service: the root is exposed, the leaves are internal.
    vec![mp::service("histogram-service", mp::scatter(LEAVES, leaf, merge)).expose()]
}

pub fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_histogram_counts_every_sample_of_every_leaf() {
        let app = mp::testing::launch(services()).await.unwrap();
        let histogram: Vec<u32> = app.call("histogram-service", serde_json::json!({})).await.unwrap();
        assert_eq!(histogram.len(), BUCKETS);
        assert_eq!(histogram.iter().sum::<u32>(), (LEAVES * SAMPLES) as u32);
        // Mean 100, sigma 25: the two middle buckets [80, 120) hold about 58% of the samples.
        let middle = histogram[4] + histogram[5];
        assert!((450..=720).contains(&middle), "{histogram:?}");
    }

    #[test]
    fn out_of_range_samples_count_in_the_edge_buckets() {
        let h = merge(vec![Sample { n: vec![-5.0, 0.0, 199.9, 200.0, 1e9] }]);
        assert_eq!((h[0], h[9], h.iter().sum::<u32>()), (2, 3, 5));
    }
}
