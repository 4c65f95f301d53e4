//! A mergeable relative-error sketch of durations (DDSketch, Masson et al., VLDB 2019) with
//! integer bucket counts, so that it can also *remove* a value, two sketches of the same
//! values are equal value for value (replicas and rebuilds store the same bytes), and a
//! quantile follows the contract's rank definition (the value at rank ⌈q·n⌉).
//!
//! Why not the `sketches-ddsketch` crate: its counts are floats, its quantile ranks by
//! `q·(n−1)`, it cannot remove a value and its serialization is its serde layout; every one
//! of those would have to be worked around here.
//!
//! A duration `v ≥ 1 ms` falls in bucket `i = ⌈log_γ v⌉` with `γ = (1+α)/(1−α)`; every value
//! of bucket `i` lies in `(γ^(i−1), γ^i]` and the bucket's representative `2γ^i/(γ+1)` is
//! within α of each of them. Durations below 1 ms (0: a finish in the same millisecond as the
//! start) are counted apart and reported as 0.

/// The relative accuracy: half the contract's 1%, which leaves room for the rounding of a
/// representative to whole milliseconds (at most 0.5 ms, i.e. < 0.5% from 100 ms up, and exact
/// below, where buckets are narrower than a millisecond).
pub const RELATIVE_ACCURACY: f64 = 0.005;

/// The sketch format's version byte, first in every encoding.
const FORMAT: u8 = 1;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// A sketch of millisecond durations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurationSketch {
    /// Values below 1 ms.
    zeros: u64,
    /// (bucket index, count), ascending by index, never holding a zero count. A sorted
    /// vector rather than a tree: a wide sketch has a few hundred buckets, decoded on every
    /// uncached read (one push each) and walked for its quantiles.
    buckets: Vec<(i32, u64)>,
}

/// What cannot be read back as a sketch (a corrupt or foreign blob).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration sketch: {0}")]
pub struct SketchError(&'static str);

impl DurationSketch {
    /// The bucket a duration counts in (`None`: the below-1-ms count).
    fn index(value_ms: i64) -> Option<i32> {
        (value_ms >= 1).then(|| ((value_ms as f64).ln() / gamma().ln()).ceil() as i32)
    }

    /// The value a bucket stands for.
    fn representative(index: i32) -> f64 {
        let gamma = gamma();
        2.0 * gamma.powi(index) / (gamma + 1.0)
    }

    /// Adds (`sign` 1) or removes (`sign` −1) one duration. Removing a value that was never
    /// added saturates at zero instead of underflowing (the caller's invariant, not ours).
    pub fn add(&mut self, value_ms: i64, sign: i64) {
        let Some(index) = Self::index(value_ms) else {
            self.zeros = if sign >= 0 {
                self.zeros.saturating_add(1)
            } else {
                self.zeros.saturating_sub(1)
            };
            return;
        };
        match self.buckets.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) if sign >= 0 => self.buckets[at].1 = self.buckets[at].1.saturating_add(1),
            Ok(at) => {
                self.buckets[at].1 -= 1;
                if self.buckets[at].1 == 0 {
                    self.buckets.remove(at);
                }
            }
            Err(at) if sign >= 0 => self.buckets.insert(at, (index, 1)),
            Err(_) => {}
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &DurationSketch) {
        self.zeros = self.zeros.saturating_add(other.zeros);
        let (ours, theirs) = (&self.buckets, &other.buckets);
        let mut merged = Vec::with_capacity(ours.len() + theirs.len());
        let (mut i, mut j) = (0, 0);
        while i < ours.len() && j < theirs.len() {
            match ours[i].0.cmp(&theirs[j].0) {
                std::cmp::Ordering::Less => {
                    merged.push(ours[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push(theirs[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    merged.push((ours[i].0, ours[i].1.saturating_add(theirs[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&ours[i..]);
        merged.extend_from_slice(&theirs[j..]);
        self.buckets = merged;
    }

    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(self.zeros, |sum, (_, c)| sum.saturating_add(*c))
    }

    /// Bytes the sketch holds on the heap: what a cache keeping it weighs.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(i32, u64)>()
    }

    pub fn is_empty(&self) -> bool {
        self.zeros == 0 && self.buckets.is_empty()
    }

    /// The `q`-quantile (0 < q ≤ 1) in whole ms: the value at rank ⌈q·n⌉, within
    /// [`RELATIVE_ACCURACY`] (plus rounding); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let [value] = self.quantiles([q]);
        value
    }

    /// Several quantiles (ascending `qs`) in one walk over the buckets.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<i64>; N] {
        debug_assert!(qs.windows(2).all(|w| w[0] <= w[1]), "ascending: {qs:?}");
        let n = self.count();
        if n == 0 {
            return [None; N];
        }
        let mut out = [None; N];
        let mut buckets = self.buckets.iter();
        let mut seen = self.zeros;
        let mut current = 0.0f64;
        for (slot, q) in out.iter_mut().zip(qs) {
            let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
            if rank <= self.zeros {
                *slot = Some(0);
                continue;
            }
            while seen < rank {
                match buckets.next() {
                    Some((index, count)) => {
                        seen = seen.saturating_add(*count);
                        current = Self::representative(*index);
                    }
                    // Unreachable while counts sum to n; the largest bucket is the honest
                    // answer.
                    None => break,
                }
            }
            *slot = Some(current.round() as i64);
        }
        out
    }

    /// The compact encoding stored in SQLite: a format byte, the below-1-ms count, then each
    /// bucket as (index delta from the previous, zigzag) and count, all LEB128 varints. A job
    /// with a wide spread of run times holds a few hundred buckets: a few hundred bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.buckets.len() * 3);
        out.push(FORMAT);
        put_varint(&mut out, self.zeros);
        let mut previous = 0i64;
        for (index, count) in &self.buckets {
            let delta = i64::from(*index) - previous;
            previous = i64::from(*index);
            put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
            put_varint(&mut out, *count);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SketchError> {
        let (&format, mut rest) = bytes.split_first().ok_or(SketchError("empty"))?;
        if format != FORMAT {
            return Err(SketchError("unknown format"));
        }
        let zeros = take_varint(&mut rest)?;
        let mut buckets: Vec<(i32, u64)> = Vec::with_capacity(rest.len() / 2);
        let mut index = 0i64;
        while !rest.is_empty() {
            let zigzag = take_varint(&mut rest)?;
            let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
            index = index.checked_add(delta).ok_or(SketchError("index"))?;
            let count = take_varint(&mut rest)?;
            let index = i32::try_from(index).map_err(|_| SketchError("index"))?;
            // The encoder writes buckets in ascending order, each once.
            if count == 0 || buckets.last().is_some_and(|(last, _)| *last >= index) {
                return Err(SketchError("bucket"));
            }
            buckets.push((index, count));
        }
        Ok(DurationSketch { zeros, buckets })
    }

    /// [`DurationSketch::decode`], with an absent blob as the empty sketch.
    pub fn decode_optional(bytes: Option<&[u8]>) -> Result<Self, SketchError> {
        bytes.map_or_else(|| Ok(Self::default()), Self::decode)
    }
}

/// A sum of many encoded sketches, counted in a dense array indexed by bucket: what a window
/// merges its buckets' sketches into. Indexes of durations from 1 ms to i64::MAX ms run from
/// 0 to ~4,400, so the array stays small, and adding an encoded sketch is one pass over its
/// bytes with no tree to rebalance.
#[derive(Debug, Clone, Default)]
pub struct SketchSum {
    zeros: u64,
    counts: Vec<u64>,
}

impl SketchSum {
    /// Adds one encoded sketch (as [`DurationSketch::encode`] writes it).
    pub fn add_encoded(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let (&format, mut rest) = bytes.split_first().ok_or(SketchError("empty"))?;
        if format != FORMAT {
            return Err(SketchError("unknown format"));
        }
        self.zeros = self.zeros.saturating_add(take_varint(&mut rest)?);
        let mut index = 0i64;
        while !rest.is_empty() {
            let zigzag = take_varint(&mut rest)?;
            index = index
                .checked_add(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64))
                .ok_or(SketchError("index"))?;
            let count = take_varint(&mut rest)?;
            self.add_count(index, count)?;
        }
        Ok(())
    }

    /// Adds `count` to bucket `index`. A duration of at least 1 ms has a bucket index from 0
    /// to ~4,400.
    fn add_count(&mut self, index: i64, count: u64) -> Result<(), SketchError> {
        let slot = usize::try_from(index)
            .ok()
            .filter(|i| *i < 8_192)
            .ok_or(SketchError("index"))?;
        if slot >= self.counts.len() {
            self.counts.resize(slot + 1, 0);
        }
        self.counts[slot] = self.counts[slot].saturating_add(count);
        Ok(())
    }

    /// Adds a decoded sketch.
    pub fn add_sketch(&mut self, sketch: &DurationSketch) -> Result<(), SketchError> {
        self.zeros = self.zeros.saturating_add(sketch.zeros);
        for (index, count) in &sketch.buckets {
            self.add_count(i64::from(*index), *count)?;
        }
        Ok(())
    }

    pub fn into_sketch(self) -> DurationSketch {
        DurationSketch {
            zeros: self.zeros,
            // Ascending by construction: the array is indexed by bucket.
            buckets: self
                .counts
                .into_iter()
                .enumerate()
                .filter(|(_, count)| *count > 0)
                .map(|(index, count)| (index as i32, count))
                .collect(),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, SketchError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(SketchError("truncated"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SketchError("varint too long"))
}

/// The percentiles the API reports, from one sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

impl Percentiles {
    pub fn of(sketch: &DurationSketch) -> Self {
        let [p50, p90, p95, p99] = sketch.quantiles([0.50, 0.90, 0.95, 0.99]);
        Percentiles { p50, p90, p95, p99 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[i64], q: f64) -> i64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn within_one_percent(reported: i64, exact: i64) -> bool {
        (reported - exact).abs() as f64 <= exact as f64 * 0.01
    }

    proptest! {
        /// Every quantile is within 1% of the exact order statistic, from 0 ms to 30 days.
        #[test]
        fn quantiles_are_within_one_percent(
            values in proptest::collection::vec(
                prop_oneof![0i64..1_000, 1i64..2_592_000_000, Just(1i64), Just(2_592_000_000)],
                1..400,
            ),
            q in 0.001f64..1.0,
        ) {
            let mut sketch = DurationSketch::default();
            for v in &values {
                sketch.add(*v, 1);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let reported = sketch.quantile(q).unwrap();
            let exact = exact(&sorted, q);
            prop_assert!(within_one_percent(reported, exact), "q={q} {reported} vs {exact}");
        }

        /// Removing values leaves the sketch of the rest; encoding round-trips; merging equals
        /// adding one by one.
        #[test]
        fn removal_merge_and_encoding_agree(
            a in proptest::collection::vec(0i64..10_000_000, 0..100),
            b in proptest::collection::vec(0i64..10_000_000, 0..100),
        ) {
            let mut both = DurationSketch::default();
            let mut only_a = DurationSketch::default();
            let mut only_b = DurationSketch::default();
            for v in &a { both.add(*v, 1); only_a.add(*v, 1); }
            for v in &b { both.add(*v, 1); only_b.add(*v, 1); }
            let mut merged = only_a.clone();
            merged.merge(&only_b);
            prop_assert_eq!(&merged, &both);
            for v in &b { both.add(*v, -1); }
            prop_assert_eq!(&both, &only_a);
            prop_assert_eq!(DurationSketch::decode(&merged.encode()).unwrap(), merged.clone());
            let mut sum = SketchSum::default();
            sum.add_encoded(&only_a.encode()).unwrap();
            sum.add_encoded(&only_b.encode()).unwrap();
            prop_assert_eq!(sum.into_sketch(), merged.clone());
            let mut sum = SketchSum::default();
            sum.add_encoded(&only_a.encode()).unwrap();
            sum.add_sketch(&only_b).unwrap();
            prop_assert_eq!(sum.into_sketch(), merged);
        }
    }

    #[test]
    fn several_quantiles_in_one_walk_equal_each_alone() {
        let mut sketch = DurationSketch::default();
        for v in [0, 0, 3, 17, 17, 250, 4_000, 4_001, 90_000, 7_200_000] {
            sketch.add(v, 1);
        }
        let qs = [0.01, 0.2, 0.5, 0.5, 0.9, 0.95, 0.99, 1.0];
        let together = sketch.quantiles(qs);
        for (q, value) in qs.iter().zip(together) {
            assert_eq!(value, sketch.quantile(*q), "q={q}");
        }
        assert_eq!(together[0], Some(0));
        assert_eq!(
            together[7],
            Some(7_200_000).map(|v: i64| {
                DurationSketch::representative(DurationSketch::index(v).unwrap()).round() as i64
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[2],
            &[1, 0x80],
            &[1, 0, 2, 0],
            // Buckets out of order (index 2, then 1) or repeated (2, 2).
            &[1, 0, 4, 1, 1, 1],
            &[1, 0, 4, 1, 0, 1],
            &[
                1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
            ],
        ] {
            assert!(DurationSketch::decode(bytes).is_err(), "{bytes:?}");
        }
        assert_eq!(DurationSketch::default().quantile(0.5), None);
    }
}
