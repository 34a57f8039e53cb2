//! How the benches that repeat rounds report them: the median of each figure, one row each.

use super::loadgen::Stats;

/// Per-figure medians over rounds (each figure on its own, as a report of typical values).
pub fn median(runs: &[Stats]) -> Stats {
    fn middle<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in measurements"));
        values[values.len() / 2]
    }
    Stats {
        rps: middle(runs.iter().map(|s| s.rps).collect()),
        p50: middle(runs.iter().map(|s| s.p50).collect()),
        p99: middle(runs.iter().map(|s| s.p99).collect()),
        errors: runs.iter().map(|s| s.errors).sum(),
        tool: runs[0].tool,
    }
}

/// One row: what was measured (padded to `width`), requests/s, p50, p99, errors, the tool.
pub fn print_row(what: &str, width: usize, s: &Stats) {
    println!(
        "{what:<width$} {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   errors {}   ({})",
        s.rps,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.errors,
        s.tool
    );
}
