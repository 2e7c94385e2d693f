//! What the api keeps of its recent ledger reads, so that a hot read (the key behind every
//! request, a finished job polled again) is not a ledger round trip each time. `FreshCache` is
//! one map under one lock: every entry carries its own deadline, never later than the cache's
//! time to live, and the cache carries a budget of weight (entries for keys, bytes for answers).
//! A put that would pass the budget first drops the stale entries, and if the fresh ones alone
//! still leave no room, all of them: a cache that fills within one time to live is read by more
//! distinct keys than it can help, and clearing it keeps memory bounded without an eviction
//! order to maintain on every read.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Values by key, each for at most the time to live after it was put.
pub struct FreshCache<K, V> {
    ttl: Duration,
    budget: usize,
    entries: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    map: HashMap<K, Entry<V>>,
    /// The sum of the entries' weights.
    weight: usize,
}

struct Entry<V> {
    value: V,
    until: Instant,
    weight: usize,
}

impl<K: Hash + Eq, V: Clone> FreshCache<K, V> {
    /// A cache whose entries live at most `ttl` (nothing is kept when it is zero) and whose
    /// weights sum to at most `budget`.
    pub fn new(ttl: Duration, budget: usize) -> Self {
        FreshCache {
            ttl,
            budget,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                weight: 0,
            }),
        }
    }

    /// The value under `key`, while it is fresh.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.lock();
        entries
            .map
            .get(key)
            .filter(|entry| Instant::now() < entry.until)
            .map(|entry| entry.value.clone())
    }

    /// Keeps `value`, read at `read_at`, under `key` for the time to live counted from that read,
    /// or until `true_until` if that is sooner (a value that holds only until a known moment).
    /// A value already past either, or heavier than the whole budget, is not kept, and neither
    /// is an older value under its key.
    pub fn put(
        &self,
        key: K,
        value: V,
        weight: usize,
        read_at: Instant,
        true_until: Option<Instant>,
    ) {
        // A weight of zero would let the entries outgrow any budget.
        let weight = weight.max(1);
        // Worked out before locking: nothing that can panic runs under the lock. A time to live
        // past what `Instant` can hold keeps nothing.
        let until = read_at
            .checked_add(self.ttl)
            .map(|until| true_until.map_or(until, |t| t.min(until)));
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(old) = entries.map.remove(&key) {
            entries.weight -= old.weight;
        }
        let Some(until) = until.filter(|until| now < *until && weight <= self.budget) else {
            return;
        };
        if entries.weight + weight > self.budget {
            entries.map.retain(|_, entry| now < entry.until);
            entries.weight = entries.map.values().map(|entry| entry.weight).sum();
            if entries.weight + weight > self.budget {
                entries.map.clear();
                entries.weight = 0;
            }
        }
        entries.weight += weight;
        entries.map.insert(
            key,
            Entry {
                value,
                until,
                weight,
            },
        );
    }

    /// How many entries are held, fresh or not.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// The sum of the held entries' weights.
    #[cfg(test)]
    fn weight(&self) -> usize {
        self.lock().weight
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        self.entries
            .lock()
            .expect("a fresh cache's lock is never poisoned: nothing panics while holding it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn put<K: Hash + Eq, V: Clone>(cache: &FreshCache<K, V>, key: K, value: V, weight: usize) {
        cache.put(key, value, weight, Instant::now(), None);
    }

    #[test]
    fn a_value_is_kept_for_its_time_and_never_without_one() {
        let cache = FreshCache::new(HOUR, 10);
        assert_eq!(cache.get("a"), None);
        put(&cache, "a".to_owned(), 1, 1);
        assert_eq!(cache.get("a"), Some(1));

        let off = FreshCache::new(Duration::ZERO, 10);
        put(&off, "a".to_owned(), 1, 1);
        assert_eq!(off.get("a"), None);
        assert_eq!(off.len(), 0);
    }

    #[test]
    fn the_time_to_live_counts_from_the_read() {
        let cache = FreshCache::new(Duration::from_millis(1), 10);
        let read_at = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        cache.put("a".to_owned(), 1, 1, read_at, None);
        assert_eq!(
            cache.get("a"),
            None,
            "read longer ago than the time to live"
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_value_true_until_a_moment_is_not_kept_past_it() {
        let cache = FreshCache::new(HOUR, 10);
        let now = Instant::now();
        cache.put("past".to_owned(), 1, 1, now, Some(now));
        assert_eq!(cache.get("past"), None);
        assert_eq!(cache.len(), 0, "a value already untrue is not stored");
        cache.put(
            "soon".to_owned(),
            2,
            1,
            now,
            Some(now + Duration::from_millis(1)),
        );
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get("soon"), None);
        // And a value that can no longer be kept takes the older one under its key with it.
        put(&cache, "gone".to_owned(), 3, 1);
        cache.put("gone".to_owned(), 4, 1, now, Some(now));
        assert_eq!(cache.get("gone"), None);
    }

    #[test]
    fn a_time_to_live_past_any_instant_keeps_nothing_and_breaks_nothing() {
        let cache = FreshCache::new(Duration::MAX, 10);
        put(&cache, "a".to_owned(), 1, 1);
        assert_eq!(cache.get("a"), None);
        put(&cache, "b".to_owned(), 2, 1);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_weights_never_pass_the_budget() {
        let cache = FreshCache::new(HOUR, 100);
        for i in 0..1_000 {
            put(&cache, i, i, 7);
            assert!(
                cache.weight() <= 100,
                "weight {} at put {i}",
                cache.weight()
            );
        }
        assert!(cache.len() <= 100 / 7);
        // The latest put is always kept.
        assert_eq!(cache.get(&999), Some(999));
        put(&cache, 5_000, 0, 101);
        assert_eq!(cache.get(&5_000), None, "heavier than the whole budget");
        let weightless = FreshCache::new(HOUR, 3);
        for i in 0..10 {
            put(&weightless, i, i, 0);
        }
        assert!(weightless.len() <= 3, "a weight of zero counts as one");
    }

    #[test]
    fn putting_a_key_again_replaces_its_weight() {
        let cache = FreshCache::new(HOUR, 10);
        for _ in 0..100 {
            put(&cache, "a".to_owned(), 1, 6);
        }
        assert_eq!(cache.weight(), 6);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn stale_entries_go_first_when_the_budget_is_reached() {
        let cache = FreshCache::new(HOUR, 10);
        let now = Instant::now();
        cache.put(
            "stale".to_owned(),
            0,
            5,
            now,
            Some(now + Duration::from_millis(1)),
        );
        put(&cache, "fresh".to_owned(), 1, 4);
        std::thread::sleep(Duration::from_millis(2));
        put(&cache, "new".to_owned(), 2, 5);
        assert_eq!(
            cache.get("fresh"),
            Some(1),
            "room was made from the stale one"
        );
        assert_eq!(cache.get("new"), Some(2));
        assert_eq!(cache.weight(), 9);
    }
}
