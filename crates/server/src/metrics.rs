//! `/metrics` in Prometheus' text format. One registry per server, so that several servers
//! in one process (the tests) count apart. Stage histograms use the stage names of
//! `cutout_core::timing`, which the log line and `cutout remove --timings` share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cutout_core::timing::{Stage, StageTimes};
use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The routes requests are counted under; any other path counts as `other`, so that
/// scanners probing random paths cannot grow the label set.
const ROUTES: [&str; 19] = [
    "/v1/segment",
    "/v2/edit",
    "/v1/account",
    "/v2/account",
    "/v1.0/removebg",
    "/v1.0/account",
    "/v1/remove-background",
    "/remove-background",
    "/openapi.json",
    "/health",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/playground.js",
    "/playground.css",
    "/dashboard",
    "/dashboard.js",
    "/dashboard/data",
];

/// The label a path is counted under.
pub fn route_label(path: &str) -> &'static str {
    let path = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("other")
}

/// Latency buckets in seconds: 1 ms to 1 min (a CPU forward of a large model takes seconds).
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    stage_seconds: HistogramVec,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
    megapixels: CounterVec,
    images: IntCounterVec,
    credits: CounterVec,
    /// Jobs per model batch (observed by the model thread).
    pub batch_size: Histogram,
    /// Megapixels of the images queued or being rendered.
    pub in_flight_megapixels: Gauge,
    queue_depth: IntGauge,
    memory_in_flight: IntGauge,
    memory_budget: IntGauge,
}

/// What one request did, as its log line and the metrics report it.
#[derive(Debug, Default)]
pub struct RequestRecord<'a> {
    pub route: &'static str,
    pub status: u16,
    pub key: Option<&'a str>,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// Stage timings of a rendered image (`None` for every other reply).
    pub rendered: Option<&'a Rendered>,
    pub total: std::time::Duration,
}

/// What a rendered image adds to its reply, for the log line and the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendered {
    pub timings: StageTimes,
    /// The input image's megapixels.
    pub megapixels: f64,
    /// Credits the key was charged.
    pub credits: f64,
}

/// The name of the caller's key, put on the reply for the log line and the metrics.
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

/// Request body bytes read so far: put on the request, counted by the body reader.
#[derive(Debug, Clone, Default)]
pub struct Received(pub Arc<AtomicU64>);

impl Received {
    pub fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The label for requests without a key (`--no-auth`).
const NO_KEY: &str = "-";

impl Metrics {
    pub fn new(model: &str, gpu: &cutout_core::gpu::Gpu) -> Self {
        let registry = Registry::new();
        let build_info: IntGaugeVec = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "cutout_build_info",
                    "Always 1: the version, model and device as labels",
                ),
                &["version", "model", "device", "backend", "device_type"],
            ),
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                model,
                &gpu.info.name,
                &format!("{:?}", gpu.info.backend).to_lowercase(),
                &format!("{:?}", gpu.info.device_type).to_lowercase(),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("a metric name used once");
        let latency = |name: &str, help: &str, label: &str| {
            let opts = HistogramOpts::new(name, help).buckets(SECONDS.to_vec());
            HistogramVec::new(opts, &[label])
        };
        Self {
            requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "cutout_requests_total",
                        "Requests answered, by route and status",
                    ),
                    &["route", "status"],
                ),
            ),
            request_seconds: registered(
                &registry,
                latency(
                    "cutout_request_duration_seconds",
                    "Time from a request's first byte to its response, by route",
                    "route",
                ),
            ),
            stage_seconds: registered(
                &registry,
                latency(
                    "cutout_stage_duration_seconds",
                    "Time a rendered image spent in each stage (admission, read_body, decode, queue_wait, preprocess, forward, effects, readback, encode, total)",
                    "stage",
                ),
            ),
            received_bytes: registered(
                &registry,
                IntCounter::new("cutout_received_bytes_total", "Request body bytes received"),
            ),
            sent_bytes: registered(
                &registry,
                IntCounter::new("cutout_sent_bytes_total", "Response body bytes sent"),
            ),
            megapixels: registered(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "cutout_processed_megapixels_total",
                        "Megapixels of the input images rendered, by route",
                    ),
                    &["route"],
                ),
            ),
            images: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "cutout_images_total",
                        "Images rendered, by key name ('-' without accounts)",
                    ),
                    &["key"],
                ),
            ),
            credits: registered(
                &registry,
                CounterVec::new(
                    Opts::new("cutout_credits_total", "Credits charged, by key name"),
                    &["key"],
                ),
            ),
            batch_size: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("cutout_batch_size", "Jobs per model batch")
                        .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]),
                ),
            ),
            in_flight_megapixels: registered(
                &registry,
                Gauge::new(
                    "cutout_in_flight_megapixels",
                    "Megapixels of the images queued for or being rendered on the device",
                ),
            ),
            queue_depth: registered(
                &registry,
                IntGauge::new(
                    "cutout_queue_depth",
                    "Jobs queued for or being rendered on the device",
                ),
            ),
            memory_in_flight: registered(
                &registry,
                IntGauge::new(
                    "cutout_memory_in_flight_bytes",
                    "Bytes the requests in flight hold of the memory budget",
                ),
            ),
            memory_budget: registered(
                &registry,
                IntGauge::new(
                    "cutout_memory_budget_bytes",
                    "The memory budget for work in flight (--max-inflight-memory)",
                ),
            ),
            registry,
        }
    }

    /// Counts one answered request.
    pub fn record(&self, request: &RequestRecord) {
        let status = request.status.to_string();
        self.requests
            .with_label_values(&[request.route, &status])
            .inc();
        self.request_seconds
            .with_label_values(&[request.route])
            .observe(request.total.as_secs_f64());
        self.received_bytes.inc_by(request.received_bytes);
        self.sent_bytes.inc_by(request.sent_bytes);
        if let Some(rendered) = request.rendered {
            let key = request.key.unwrap_or(NO_KEY);
            for stage in Stage::ALL {
                let seconds = match stage {
                    Stage::Total => request.total,
                    stage => rendered.timings.get(stage),
                };
                self.stage_seconds
                    .with_label_values(&[stage.name()])
                    .observe(seconds.as_secs_f64());
            }
            self.megapixels
                .with_label_values(&[request.route])
                .inc_by(rendered.megapixels);
            self.images.with_label_values(&[key]).inc();
            self.credits
                .with_label_values(&[key])
                .inc_by(rendered.credits);
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, queue_depth: usize, memory_in_flight: u64, memory_budget: u64) -> String {
        self.queue_depth.set(queue_depth as i64);
        self.memory_in_flight.set(memory_in_flight as i64);
        self.memory_budget.set(memory_budget as i64);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("text encoding to memory");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

/// `metric`, registered in `registry`. prometheus' constructors fail only on an invalid
/// name or label, and registering only on a name used twice: both bugs in this file.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric name used once");
    metric
}

/// Holds an image's megapixels in `cutout_in_flight_megapixels` until dropped.
pub struct InFlight<'a> {
    gauge: &'a Gauge,
    megapixels: f64,
}

impl<'a> InFlight<'a> {
    pub fn new(gauge: &'a Gauge, megapixels: f64) -> Self {
        gauge.add(megapixels);
        Self { gauge, megapixels }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.megapixels);
    }
}

/// The routes that render images, whose latency the dashboard reports.
const IMAGE_ROUTES: [&str; 5] = [
    "/v1/segment",
    "/v2/edit",
    "/v1.0/removebg",
    "/v1/remove-background",
    "/remove-background",
];

/// The metrics since the server started, as the dashboard shows them.
#[derive(Debug, serde::Serialize)]
pub struct Overview {
    /// Requests by status code, over every route.
    pub by_status: std::collections::BTreeMap<u16, u64>,
    /// Median and 95th percentile time of image requests, in milliseconds, estimated from
    /// the histogram's buckets; `None` before the first.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub batches: u64,
    pub mean_batch_size: Option<f64>,
    pub queue_depth: usize,
    pub in_flight_megapixels: f64,
}

impl Metrics {
    pub fn overview(&self, queue_depth: usize) -> Overview {
        let mut by_status = std::collections::BTreeMap::new();
        for family in prometheus::core::Collector::collect(&self.requests) {
            for metric in family.get_metric() {
                let status = metric
                    .get_label()
                    .iter()
                    .find(|label| label.name() == "status")
                    .and_then(|label| label.value().parse().ok())
                    .unwrap_or(0);
                *by_status.entry(status).or_insert(0) += metric.get_counter().get_value() as u64;
            }
        }
        // The image routes' buckets, summed (every route has the same bounds).
        let mut buckets: Vec<(f64, u64)> = SECONDS.iter().map(|&upper| (upper, 0)).collect();
        let mut total = 0;
        for route in IMAGE_ROUTES {
            let histogram = self.request_seconds.with_label_values(&[route]);
            let family = prometheus::core::Collector::collect(&histogram);
            for metric in family.iter().flat_map(|f| f.get_metric()) {
                let histogram = metric.get_histogram();
                total += histogram.get_sample_count();
                for (sum, bucket) in buckets.iter_mut().zip(histogram.get_bucket()) {
                    sum.1 += bucket.cumulative_count();
                }
            }
        }
        let batches = self.batch_size.get_sample_count();
        Overview {
            by_status,
            p50_ms: quantile(0.5, &buckets, total).map(|s| s * 1e3),
            p95_ms: quantile(0.95, &buckets, total).map(|s| s * 1e3),
            batches,
            mean_batch_size: (batches > 0)
                .then(|| self.batch_size.get_sample_sum() / batches as f64),
            queue_depth,
            in_flight_megapixels: self.in_flight_megapixels.get(),
        }
    }
}

/// The `q`-quantile of a histogram from its cumulative buckets (upper bound, count at or
/// below it) and its total count, interpolated linearly inside the bucket it falls in, as
/// Prometheus' `histogram_quantile` does; past the last finite bound, that bound.
fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0);
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let inside = (cumulative - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                0.0
            };
            return Some(lower + (upper - lower) * fraction);
        }
        (lower, below) = (upper, cumulative);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 10 samples: 2 at or below 0.1 s, 8 at or below 0.5 s, 10 at or below 1 s.
        let buckets = [(0.1, 2), (0.5, 8), (1.0, 10)];
        // Rank 5 is the 3rd of the 6 samples in (0.1, 0.5]: 0.1 + 0.4 × 3/6.
        assert!((quantile(0.5, &buckets, 10).unwrap() - 0.3).abs() < 1e-12);
        // Rank 9.5 is 1.5 of the 2 samples in (0.5, 1]: 0.5 + 0.5 × 0.75.
        assert!((quantile(0.95, &buckets, 10).unwrap() - 0.875).abs() < 1e-12);
        // Rank 1 is half of the first bucket, which starts at 0.
        assert!((quantile(0.1, &buckets, 10).unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(quantile(0.5, &buckets, 0), None);
        // Samples above every finite bound: the last bound.
        assert_eq!(quantile(0.99, &[(0.1, 1), (1.0, 1)], 4), Some(1.0));
    }

    #[test]
    fn paths_outside_the_api_count_as_other() {
        assert_eq!(route_label("/v1/segment/"), "/v1/segment");
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/wp-login.php"), "other");
    }
}
