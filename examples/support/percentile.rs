//! The one percentile rule every bench reports latency with, so their figures compare.

/// The `q` quantile (0 to 1) of `sorted`, which must be in ascending order: the value at rank
/// `len * q`, or the last value when that is past the end; `None` when there is none.
///
/// ```ignore
/// assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(3));
/// assert_eq!(percentile(&[1, 2, 3, 4], 0.99), Some(4));
/// ```
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(rank).copied()
}
