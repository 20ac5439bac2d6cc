//! Latency summaries: nearest-rank percentiles over every sample (no sampling, no histogram
//! buckets), in milliseconds.

use std::time::Duration;

use serde::Serialize;

/// A summary of latency samples, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Latency {
            samples: ms.len(),
            mean_ms: round3(mean),
            p50_ms: round3(rank(&ms, 0.50)),
            p90_ms: round3(rank(&ms, 0.90)),
            p99_ms: round3(rank(&ms, 0.99)),
            min_ms: round3(ms[0]),
            max_ms: round3(ms[ms.len() - 1]),
        }
    }

    /// `p50 1.23 ms  p99 4.56 ms  max 7.89 ms`
    pub fn short(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.max_ms)
        )
    }
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[idx]
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Milliseconds, three significant-ish digits: `0.412 ms`, `12.3 ms`, `1520 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(Latency::of(&[]).samples, 0);
        assert_eq!(Latency::of(&[Duration::from_millis(3)]).p99_ms, 3.0);
    }
}
