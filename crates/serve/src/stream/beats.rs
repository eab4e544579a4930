//! A causal R-peak detector for single-lead ECG: it sees each sample once, in order, and names
//! a beat's R peak at most a quarter of a second after it happened, which is what a stream needs
//! to cut beat-aligned windows for the heartbeat model.
//!
//! The classic Pan-Tompkins shape, kept simple enough to state in a few lines:
//!
//! 1. slope: `x[n] - x[n - 20 ms]` (a band-pass that keeps the QRS and drops baseline wander),
//! 2. energy: its square, averaged over 150 ms,
//! 3. a QRS region starts where the energy crosses 30 % of the running peak level and ends
//!    where it falls under half of that (or after 200 ms); its energy maximum updates the level,
//! 4. the R peak is the largest deviation from the median of the raw samples within ±100 ms of
//!    the region's centre (its energy maximum less 0.9 of the averaging window),
//! 5. nothing within 250 ms of the last R peak is another beat, and the first two seconds only
//!    learn the level.
//!
//! On the held-out minute of the recording the heartbeat model was trained from, it finds every
//! R peak the training script's (non-causal, filtered) detector kept, to within two samples
//! (`stream_finds_the_training_beats` in the tests of this module's parent).

use std::collections::VecDeque;

/// Samples per second the detector's time constants assume when not told otherwise.
pub const RATE_DEFAULT: u32 = 360;

/// The detector's state. Time constants scale with the sample rate.
#[derive(Clone, Debug)]
pub struct BeatDetector {
    slope_lag: usize,
    energy_len: usize,
    half_search: usize,
    centre_lag: usize,
    refractory: u64,
    region_max: u64,
    warm_up: u64,
    /// Absolute index of the next sample.
    n: u64,
    /// The last raw samples: enough to look back over a region and its search window.
    recent: VecDeque<f32>,
    /// The last `energy_len` squared slopes.
    energy: VecDeque<f32>,
    level: Option<f64>,
    warm_max: f64,
    /// The open QRS region: where its energy peaked, and how high.
    region: Option<(u64, f64)>,
    last_r: Option<u64>,
}

fn at(rate: u32, seconds_x1000: u32) -> usize {
    ((u64::from(rate) * u64::from(seconds_x1000) + 500) / 1000) as usize
}

impl BeatDetector {
    /// A detector for a signal sampled `rate` times a second (the caller bounds it).
    pub fn new(rate: u32) -> Self {
        let energy_len = at(rate, 150).max(2);
        let half_search = at(rate, 100).max(1);
        let region_max = at(rate, 200) as u64;
        let centre_lag = energy_len * 9 / 10;
        let history = region_max as usize + centre_lag + half_search + 2;
        BeatDetector {
            slope_lag: at(rate, 20).max(1),
            energy_len,
            half_search,
            centre_lag,
            refractory: at(rate, 250) as u64,
            region_max,
            warm_up: 2 * u64::from(rate),
            n: 0,
            recent: VecDeque::with_capacity(history + 1),
            energy: VecDeque::with_capacity(energy_len + 1),
            level: None,
            warm_max: 0.0,
            region: None,
            last_r: None,
        }
    }

    /// Samples the detector looks back over: a beat it names is never older than this.
    pub fn lookback(&self) -> u64 {
        self.region_max + (self.centre_lag + self.half_search) as u64 + 1
    }

    fn history(&self) -> usize {
        self.region_max as usize + self.centre_lag + self.half_search + 2
    }

    /// The raw sample at absolute index `i`, if still held.
    fn sample(&self, i: u64) -> Option<f32> {
        let first = self.n - self.recent.len() as u64;
        (i >= first && i < self.n).then(|| self.recent[(i - first) as usize])
    }

    /// Feeds one sample; returns the absolute index of an R peak when one is confirmed.
    pub fn push(&mut self, x: f32) -> Option<u64> {
        let n = self.n;
        let slope =
            if self.recent.len() >= self.slope_lag { x - self.recent[self.recent.len() - self.slope_lag] } else { 0.0 };
        self.recent.push_back(x);
        if self.recent.len() > self.history() {
            self.recent.pop_front();
        }
        self.energy.push_back(slope * slope);
        if self.energy.len() > self.energy_len {
            self.energy.pop_front();
        }
        self.n += 1;
        // An exact sum each time: no drift over hours of samples, and it is a few dozen adds.
        let v = self.energy.iter().map(|&e| f64::from(e)).sum::<f64>() / self.energy_len as f64;
        if n < self.warm_up {
            self.warm_max = self.warm_max.max(v);
            return None;
        }
        let level = *self.level.get_or_insert(self.warm_max);
        let threshold = 0.3 * level;
        match self.region {
            None => {
                let clear = self.last_r.is_none_or(|r| n.saturating_sub(self.centre_lag as u64) > r + self.refractory);
                if v > threshold && clear {
                    self.region = Some((n, v));
                }
                None
            }
            Some((best, best_v)) => {
                let (best, best_v) = if v > best_v { (n, v) } else { (best, best_v) };
                self.region = Some((best, best_v));
                if v >= 0.5 * threshold && n - best <= self.region_max {
                    return None;
                }
                self.region = None;
                self.level = Some(0.875 * level + 0.125 * best_v);
                let r = self.r_peak(best)?;
                if self.last_r.is_some_and(|last| r <= last + self.refractory) {
                    return None;
                }
                self.last_r = Some(r);
                Some(r)
            }
        }
    }

    /// The R peak of a region whose energy peaked at `best`: the largest deviation from the
    /// local median within ±100 ms of the region's centre.
    fn r_peak(&self, best: u64) -> Option<u64> {
        let centre = best.checked_sub(self.centre_lag as u64)?;
        let lo = centre.saturating_sub(self.half_search as u64);
        let hi = centre + self.half_search as u64;
        let segment: Vec<(u64, f32)> = (lo..hi).filter_map(|i| self.sample(i).map(|x| (i, x))).collect();
        if segment.is_empty() {
            return None;
        }
        let mut sorted: Vec<f32> = segment.iter().map(|&(_, x)| x).collect();
        sorted.sort_by(f32::total_cmp);
        let median = sorted[sorted.len() / 2];
        let mut best = segment[0];
        for &(i, x) in &segment {
            if (x - median).abs() > (best.1 - median).abs() {
                best = (i, x);
            }
        }
        Some(best.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic ECG: a narrow spike (the QRS) every `period` samples on a slow baseline wave.
    fn synthetic(len: usize, period: usize, rate: u32) -> (Vec<f32>, Vec<u64>) {
        let mut x = vec![0.0f32; len];
        let mut peaks = Vec::new();
        for (i, v) in x.iter_mut().enumerate() {
            *v = 0.2 * ((i as f32) * 2.0 * std::f32::consts::PI / (3.0 * rate as f32)).sin();
        }
        let width = (rate / 40) as i64;
        let mut p = period / 2;
        while p + (width as usize) < len {
            for d in -width..=width {
                let i = (p as i64 + d) as usize;
                x[i] += 1.5 * (1.0 - (d.abs() as f32) / (width as f32 + 1.0));
            }
            peaks.push(p as u64);
            p += period;
        }
        (x, peaks)
    }

    #[test]
    fn finds_every_spike_of_a_regular_rhythm_at_several_rates() {
        for rate in [250, 360, 500] {
            let period = rate as usize * 4 / 5; // 75 beats a minute
            let (x, peaks) = synthetic(rate as usize * 30, period, rate);
            let mut d = BeatDetector::new(rate);
            let found: Vec<u64> = x.iter().filter_map(|&v| d.push(v)).collect();
            // The first two seconds only learn the level.
            let expected: Vec<u64> = peaks.into_iter().filter(|&p| p >= 2 * u64::from(rate) + 40).collect();
            let matched = expected.iter().filter(|&&p| found.iter().any(|&f| f.abs_diff(p) <= 1)).count();
            assert_eq!(matched, expected.len(), "rate {rate}: found {found:?}");
            assert!(found.len() <= expected.len() + 1, "rate {rate}: spurious beats {found:?}");
        }
    }

    #[test]
    fn silence_and_constant_signals_have_no_beats_and_the_lookback_is_bounded() {
        let mut d = BeatDetector::new(360);
        assert!((0..20_000).all(|_| d.push(0.0).is_none()));
        let mut d = BeatDetector::new(360);
        assert!((0..20_000).all(|_| d.push(3.0).is_none()));
        assert!(d.recent.len() <= d.history() && d.energy.len() <= d.energy_len);
        assert!(d.lookback() < 360);
    }
}
