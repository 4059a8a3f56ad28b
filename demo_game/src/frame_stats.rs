//! Frame times over the last second: p50, p99, worst and FPS, for the on-screen readout (the
//! point of the plugin is that these stay flat while the model runs).

use std::collections::VecDeque;
use std::time::Duration;

use bevy::prelude::*;

/// How far back the statistics look.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The last second of frame times (real time, not virtual).
#[derive(Resource, Debug, Clone, Default)]
pub struct FrameStats {
    /// (time since start at the end of the frame, frame time), oldest first.
    samples: VecDeque<(Duration, Duration)>,
}

/// A summary of [`FrameStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSummary {
    /// Median frame time, ms.
    pub p50_ms: f64,
    /// 99th percentile frame time, ms.
    pub p99_ms: f64,
    /// Worst frame time, ms.
    pub max_ms: f64,
    /// Frames in the last second.
    pub fps: f64,
}

impl FrameStats {
    /// Records a frame of `delta` that ended at `now`, dropping samples older than [`WINDOW`].
    pub fn push(&mut self, now: Duration, delta: Duration) {
        self.samples.push_back((now, delta));
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_sub(at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Frames in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True before the first frame.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The summary, or `None` before the first frame. FPS is frames per second of the time the
    /// window's frames took.
    pub fn summary(&self) -> Option<FrameSummary> {
        if self.samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = self
            .samples
            .iter()
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        let total_s: f64 = ms.iter().sum::<f64>() / 1e3;
        Some(FrameSummary {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            fps: if total_s > 0.0 {
                ms.len() as f64 / total_s
            } else {
                0.0
            },
        })
    }
}

/// Records this frame's real frame time.
pub fn record_frame_time(time: Res<Time<Real>>, mut stats: ResMut<FrameStats>) {
    if time.delta() > Duration::ZERO {
        stats.push(time.elapsed(), time.delta());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_last_second() {
        let mut s = FrameStats::default();
        assert!(s.summary().is_none());
        let ms = Duration::from_millis;
        let mut now = Duration::ZERO;
        // 2 s of 20 ms frames, then 50 frames of 10 ms with one 40 ms hitch.
        for _ in 0..100 {
            now += ms(20);
            s.push(now, ms(20));
        }
        for i in 0..50 {
            let d = if i == 25 { ms(40) } else { ms(10) };
            now += d;
            s.push(now, d);
        }
        // The window (1 s) holds the last 50 frames (530 ms) and the 20 ms ones before them.
        let sum = s.summary().unwrap();
        assert_eq!(sum.max_ms, 40.0);
        assert!(s.len() < 150, "old frames were dropped: {}", s.len());
        assert!(sum.p50_ms >= 10.0 && sum.p50_ms <= 20.0, "{sum:?}");
        assert!((sum.fps - s.len() as f64).abs() < 5.0, "{sum:?}");
    }
}
