//! What the benchmark binaries (`src/bin`) share.

use std::time::Duration;

/// The `p`th percentile (0-100, nearest rank) of `sorted`; zero when it is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=5).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 0.0), Duration::from_secs(1));
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(3));
        assert_eq!(percentile(&v, 100.0), Duration::from_secs(5));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
