//! Medians and spreads of per-round figures.

/// Figures of the rounds, in round order.
#[derive(Debug, Clone, Default)]
pub struct Series(pub Vec<f64>);

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The middle figure (the mean of the two middle ones for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min-max)` with `prec` decimals.
    pub fn spread(&self, prec: usize) -> String {
        format!(
            "{:.prec$} ({:.prec$}-{:.prec$})",
            self.median(),
            self.min(),
            self.max()
        )
    }

    /// Every figure, in round order.
    pub fn each(&self, prec: usize) -> String {
        self.0
            .iter()
            .map(|v| format!("{v:.prec$}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `a / b`, NaN when `b` is zero.
pub fn per(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_odd_even_and_empty_series() {
        let s = Series(vec![0.88, 0.72, 0.94]);
        assert_eq!((s.median(), s.min(), s.max()), (0.88, 0.72, 0.94));
        assert_eq!(s.spread(2), "0.88 (0.72-0.94)");
        assert_eq!(s.each(2), "0.88 0.72 0.94");
        assert_eq!(Series(vec![1.0, 4.0, 2.0, 3.0]).median(), 2.5);
        assert!(Series::default().median().is_nan());
        assert_eq!(Series(vec![f64::NAN, 2.0]).median(), 2.0);
        assert!(per(1.0, 0.0).is_nan());
    }
}
