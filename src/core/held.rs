//! What the process holds in memory, by holder: entries and bytes of every bounded cache and
//! map, on `/metrics`.
//!
//! Why: memory is reported by what holds it (issue 23), so that growth has a name. Each
//! holder estimates its own bytes from what it stores (slots, the heap blocks of its strings,
//! the spare capacity of its tables); it is an estimate, not an allocator count, and is cheap
//! enough to compute on every scrape (lengths, capacities, a small sample; never a walk over a
//! whole map).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// One holder's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// A fixed name (`names`, `deliveries`, …): a closed set, never user input.
    pub holder: &'static str,
    pub entries: usize,
    /// Estimated bytes held now.
    pub bytes: usize,
    /// The most it may hold, in bytes (estimated the same way); `0` when bounded by count
    /// only in a way bytes do not express.
    pub capacity: usize,
}

/// Anything holding memory worth naming.
pub trait Holds: Send + Sync {
    /// Appends this holder's figures (one or more holders).
    fn held(&self, out: &mut Vec<Held>);

    /// Appends counters worth showing beside them: (holder, result, count), such as a cache's
    /// hits and misses (each miss a Planhat call).
    fn counted(&self, _out: &mut Vec<(&'static str, &'static str, u64)>) {}
}

/// The holders `/metrics` reports, registered once at start.
pub struct HeldCollector(pub Vec<Arc<dyn Holds>>);

impl HeldCollector {
    /// Every holder's figures now.
    pub fn figures(&self) -> (Vec<Held>, Vec<(&'static str, &'static str, u64)>) {
        let (mut held, mut counted) = (Vec::new(), Vec::new());
        for h in &self.0 {
            h.held(&mut held);
            h.counted(&mut counted);
        }
        (held, counted)
    }
}

impl std::fmt::Debug for HeldCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldCollector({} holders)", self.0.len())
    }
}

/// A gauge family of [`Held`]: its name, its help, and which figure it shows.
type Family = (&'static str, &'static str, fn(&Held) -> usize);

impl Collector for HeldCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (held, counted) = self.figures();
        let families: [Family; 3] = [
            ("held_entries", "Entries held now, by holder", |h| h.entries),
            (
                "held_bytes",
                "Bytes held now, by holder (an estimate from what each stores)",
                |h| h.bytes,
            ),
            (
                "held_capacity_bytes",
                "The most each holder may hold, in bytes (the same estimate)",
                |h| h.capacity,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for h in &held {
                let gauge = ConstGauge::new(value(h) as i64);
                gauge.encode(family.encode_family(&[("holder", h.holder)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "held_lookups",
            "Lookups in a cache by result (a miss costs a Planhat call)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (holder, result, n) in counted {
            let counter = prometheus_client::metrics::counter::ConstCounter::new(n);
            counter.encode(family.encode_family(&[("holder", holder), ("result", result)])?)?;
        }
        Ok(())
    }
}

/// Bytes of a `HashMap` holding `capacity` slots of `slot` bytes (hashbrown: a control byte a
/// slot, the table at least 8/7 of its capacity).
pub fn table_bytes(capacity: usize, slot: usize) -> usize {
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (slot + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl Holds for Two {
        fn held(&self, out: &mut Vec<Held>) {
            out.push(Held {
                holder: "a",
                entries: 3,
                bytes: 300,
                capacity: 1000,
            });
        }
        fn counted(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
            out.push(("a", "hit", 7));
        }
    }

    #[test]
    fn every_holder_appears_in_the_exposition() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("portal_bot");
        registry.register_collector(Box::new(HeldCollector(vec![Arc::new(Two)])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "portal_bot_held_entries{holder=\"a\"} 3",
            "portal_bot_held_bytes{holder=\"a\"} 300",
            "portal_bot_held_capacity_bytes{holder=\"a\"} 1000",
            "portal_bot_held_lookups_total{holder=\"a\",result=\"hit\"} 7",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
