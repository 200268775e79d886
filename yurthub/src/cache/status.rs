//! The cache's health, for operators: Prometheus series read from the store
//! at scrape time, and the `/v1/cache` status document (which also says
//! when the store was found corrupt and the hub started empty).

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Value, json};

use super::manager::CacheManager;

/// Exposes the cache series.
pub struct Collector(pub CacheManager);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cache::status::Collector")
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.store().stats();
        let error_keys = self.0.error_keys().len() as i64;
        let series: [(&str, &str, MetricType, i64); 12] = [
            (
                "node_yurthub_error_keys_count",
                "keys whose last cache write failed",
                MetricType::Gauge,
                error_keys,
            ),
            (
                // Upstream: 1 while its error-keys log can be written. Here the
                // failing keys live in the store itself, so: the store takes writes.
                "node_yurthub_error_keys_persistency_status",
                "1 when the cache store persists writes (not full, not unavailable)",
                MetricType::Gauge,
                i64::from(!stats.disk_full && !stats.unavailable),
            ),
            (
                "node_yurthub_cache_write_errors",
                "cache write operations that failed since start",
                MetricType::Unknown,
                stats.write_errors as i64,
            ),
            (
                "node_yurthub_cache_writes",
                "cache write operations applied durably since start",
                MetricType::Unknown,
                stats.writes as i64,
            ),
            (
                "node_yurthub_cache_store_bytes",
                "bytes the cache store occupies on disk",
                MetricType::Gauge,
                stats.bytes_on_disk as i64,
            ),
            (
                "node_yurthub_cache_objects",
                "objects in the cache store",
                MetricType::Gauge,
                stats.objects as i64,
            ),
            (
                "node_yurthub_cache_disk_full",
                "1 while the last cache write ran out of disk space",
                MetricType::Gauge,
                i64::from(stats.disk_full),
            ),
            (
                "node_yurthub_cache_recovered_empty",
                "1 when the store file was corrupt at start, moved aside, and the cache started empty",
                MetricType::Gauge,
                i64::from(self.0.recovered().is_some() || stats.corrupted_recovered > 0),
            ),
            (
                "node_yurthub_cache_stale_watch_scopes",
                "watch scopes that lost an event and must relist",
                MetricType::Gauge,
                stats.stale_watch_scopes as i64,
            ),
            (
                "node_yurthub_cache_copies_skipped",
                "responses not cached because their copy did not fit the memory budget",
                MetricType::Unknown,
                self.0.skipped_copies() as i64,
            ),
            (
                "node_yurthub_cache_unchanged_writes",
                "object writes skipped because the same resourceVersion was stored already",
                MetricType::Unknown,
                self.0.unchanged_writes() as i64,
            ),
            (
                "node_yurthub_cache_unavailable",
                "1 while the cache store cannot serve",
                MetricType::Gauge,
                i64::from(stats.unavailable),
            ),
        ];
        for (name, help, kind, value) in series {
            let g: Gauge = Gauge::default();
            g.set(value);
            g.encode(encoder.encode_descriptor(name, help, None, kind)?)?;
        }
        Ok(())
    }
}

/// The `/v1/cache` document.
pub fn document(cache: &CacheManager) -> Value {
    let s = cache.store().stats();
    let error_keys = cache.error_keys();
    json!({
        "path": cache.store().path().display().to_string(),
        "recoveredEmpty": cache.recovered(),
        "objects": s.objects,
        "bytesOnDisk": s.bytes_on_disk,
        "payloadBytes": s.payload_bytes,
        "maxBytes": s.max_bytes,
        "writes": s.writes,
        "writeErrors": s.write_errors,
        "lastWriteError": s.last_write_error,
        "diskFull": s.disk_full,
        "evictedEvents": s.evicted_events,
        "capacityRefusals": s.capacity_refusals,
        "staleWatchScopes": s.stale_watch_scopes,
        "unavailable": s.unavailable,
        "copiesSkipped": cache.skipped_copies(),
        "unchangedWrites": cache.unchanged_writes(),
        "errorKeys": error_keys,
        "cacheAgents": cache.agents().list(),
    })
}
