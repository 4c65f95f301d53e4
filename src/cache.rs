//! The one bounded cache type of the service: entries weighed in bytes, so no client can grow
//! memory by sending large keys (a 7.8 KB token) or asking for large answers, and evicted by
//! quick_cache's CLOCK-Pro policy, which keeps hot entries through a scan (a job list that
//! reads every job does not flush the stats answers a dashboard polls).

use std::hash::Hash;

/// A concurrent cache holding at most a given number of bytes, as its weigher estimates them.
pub type ByteBounded<K, V> = quick_cache::sync::Cache<K, V, Weigher<K, V>>;

/// Estimates an entry's bytes (key and value, heap included).
pub struct Weigher<K, V>(fn(&K, &V) -> u64);

impl<K, V> Clone for Weigher<K, V> {
    fn clone(&self) -> Self {
        Weigher(self.0)
    }
}

impl<K, V> quick_cache::Weighter<K, V> for Weigher<K, V> {
    fn weight(&self, key: &K, value: &V) -> u64 {
        // quick_cache never evicts zero-weight entries: everything weighs something.
        (self.0)(key, value).max(1)
    }
}

/// A cache of at most `max_bytes`, sized for entries of about `typical_entry_bytes`.
pub fn byte_bounded<K, V>(
    max_bytes: u64,
    typical_entry_bytes: u64,
    weigh: fn(&K, &V) -> u64,
) -> ByteBounded<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    let estimated_items = (max_bytes / typical_entry_bytes.max(1)).max(16) as usize;
    quick_cache::sync::Cache::with_weighter(estimated_items, max_bytes, Weigher(weigh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_holds_its_byte_budget_whatever_the_entries_weigh() {
        let cache = byte_bounded::<u32, String>(100_000, 1_000, |_, v| v.len() as u64);
        for i in 0..10_000 {
            cache.insert(i, "x".repeat(1 + (i as usize * 37) % 5_000));
        }
        assert!(cache.weight() <= 100_000, "{}", cache.weight());
        assert!(cache.len() > 10, "still caches: {}", cache.len());
        // An entry larger than the whole budget is not kept at all.
        cache.insert(99_999, "y".repeat(200_000));
        assert!(cache.get(&99_999).is_none());
        assert!(cache.weight() <= 100_000);
    }
}
