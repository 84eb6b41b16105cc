//! The Temporal SDK's own metrics (`temporal_*`) in our Prometheus registry.
//!
//! The SDK records through a [`CoreMeter`]; its Prometheus meter keeps its registry private
//! and serves it on a listener of its own. So this module is a `CoreMeter` whose instruments
//! live in a collector registered in *our* registry, and one `/metrics` shows both the SDK's
//! metrics and ours.
//!
//! The SDK may record one metric name with different label sets (worker-wide and per
//! workflow type, say), which a checked Prometheus collector refuses. Each instrument
//! therefore keeps one vector per label set, and they all sit in one *unchecked* collector
//! (it describes nothing up front), whose families the registry merges by name at scrape time.
//!
//! Names and units follow the SDK's Prometheus meter with its defaults, except durations:
//! they are recorded in seconds, like every other duration on our endpoint (the SDK's default
//! is milliseconds), under the SDK's names (`temporal_activity_execution_latency`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use temporalio_common::telemetry::metrics::{
    CoreMeter, Counter, CounterBase, Gauge, GaugeBase, GaugeF64, GaugeF64Base, Histogram,
    HistogramBase, HistogramDuration, HistogramDurationBase, HistogramF64, HistogramF64Base,
    MetricAttributable, MetricAttributes, MetricParameters, NewAttributes, OrderedPromLabelSet,
    UpDownCounter, UpDownCounterBase, default_buckets_for,
};

type BindError = Box<dyn std::error::Error>;

/// Every vector the SDK's instruments have created; the registry collects them as one.
#[derive(Clone, Default)]
pub struct SdkCollector {
    vectors: Arc<RwLock<Vec<AnyVector>>>,
}

#[derive(Clone)]
enum AnyVector {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    GaugeF64(GaugeVec),
    Histogram(HistogramVec),
}

impl Collector for SdkCollector {
    fn desc(&self) -> Vec<&Desc> {
        // Unchecked: the label sets are only known once the SDK records.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(vectors) = self.vectors.read() else {
            return Vec::new();
        };
        vectors
            .iter()
            .flat_map(|vector| match vector {
                AnyVector::Counter(v) => v.collect(),
                AnyVector::Gauge(v) => v.collect(),
                AnyVector::GaugeF64(v) => v.collect(),
                AnyVector::Histogram(v) => v.collect(),
            })
            .collect()
    }
}

/// The [`CoreMeter`] the SDK records through: every instrument lands in one [`SdkCollector`].
#[derive(Clone, Default)]
pub struct SdkMeter {
    collector: SdkCollector,
}

impl std::fmt::Debug for SdkMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkMeter").finish_non_exhaustive()
    }
}

impl SdkMeter {
    /// The collector to register in the registry that `/metrics` gathers.
    pub fn collector(&self) -> SdkCollector {
        self.collector.clone()
    }

    fn instrument<V>(&self, params: &MetricParameters, buckets: Option<Vec<f64>>) -> Instrument<V> {
        Instrument {
            // Prometheus names allow no dashes.
            name: params.name.replace('-', "_"),
            help: if params.description.is_empty() {
                params.name.to_string()
            } else {
                params.description.to_string()
            },
            buckets,
            vectors: RwLock::new(HashMap::new()),
            collector: self.collector.clone(),
        }
    }

    fn histogram_instrument(&self, params: &MetricParameters) -> Instrument<HistogramVec> {
        let base = params
            .name
            .strip_prefix("temporal_")
            .unwrap_or(&params.name);
        let buckets = default_buckets_for(base, true).to_vec();
        self.instrument(params, Some(buckets))
    }
}

impl CoreMeter for SdkMeter {
    fn new_attributes(&self, attributes: NewAttributes) -> MetricAttributes {
        MetricAttributes::Prometheus {
            labels: Arc::new(attributes.into()),
        }
    }

    fn extend_attributes(
        &self,
        existing: MetricAttributes,
        attributes: NewAttributes,
    ) -> MetricAttributes {
        let mut labels = match existing {
            MetricAttributes::Prometheus { labels } => Arc::unwrap_or_clone(labels),
            _ => OrderedPromLabelSet::default(),
        };
        for kv in attributes.attributes {
            labels.add_kv(kv);
        }
        MetricAttributes::Prometheus {
            labels: Arc::new(labels),
        }
    }

    fn counter(&self, params: MetricParameters) -> Counter {
        Counter::new(Arc::new(self.instrument::<IntCounterVec>(&params, None)))
    }

    fn histogram(&self, params: MetricParameters) -> Histogram {
        Histogram::new(Arc::new(self.histogram_instrument(&params)))
    }

    fn histogram_f64(&self, params: MetricParameters) -> HistogramF64 {
        HistogramF64::new(Arc::new(self.histogram_instrument(&params)))
    }

    fn histogram_duration(&self, params: MetricParameters) -> HistogramDuration {
        HistogramDuration::new(Arc::new(Seconds(self.histogram_instrument(&params))))
    }

    fn gauge(&self, params: MetricParameters) -> Gauge {
        Gauge::new(Arc::new(self.instrument::<IntGaugeVec>(&params, None)))
    }

    fn gauge_f64(&self, params: MetricParameters) -> GaugeF64 {
        GaugeF64::new(Arc::new(self.instrument::<GaugeVec>(&params, None)))
    }

    fn up_down_counter(&self, params: MetricParameters) -> UpDownCounter {
        UpDownCounter::new(Arc::new(self.instrument::<IntGaugeVec>(&params, None)))
    }
}

/// One SDK instrument: a vector per label set it has been recorded with.
struct Instrument<V> {
    name: String,
    help: String,
    buckets: Option<Vec<f64>>,
    vectors: RwLock<HashMap<Vec<String>, V>>,
    collector: SdkCollector,
}

/// The Prometheus vectors the instruments are made of.
trait Vector: Clone + Sized {
    type Metric;
    fn create(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<Self, prometheus::Error>;
    fn any(&self) -> AnyVector;
    fn metric(&self, labels: &HashMap<&str, String>) -> Result<Self::Metric, prometheus::Error>;
}

macro_rules! plain_vector {
    ($vector:ty, $metric:ty, $variant:ident) => {
        impl Vector for $vector {
            type Metric = $metric;
            fn create(
                name: &str,
                help: &str,
                labels: &[&str],
                _buckets: Option<&[f64]>,
            ) -> Result<Self, prometheus::Error> {
                <$vector>::new(Opts::new(name, help), labels)
            }
            fn any(&self) -> AnyVector {
                AnyVector::$variant(self.clone())
            }
            fn metric(&self, labels: &HashMap<&str, String>) -> Result<$metric, prometheus::Error> {
                self.get_metric_with(labels)
            }
        }
    };
}

plain_vector!(IntCounterVec, prometheus::IntCounter, Counter);
plain_vector!(IntGaugeVec, prometheus::IntGauge, Gauge);
plain_vector!(GaugeVec, prometheus::Gauge, GaugeF64);

impl Vector for HistogramVec {
    type Metric = prometheus::Histogram;
    fn create(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<Self, prometheus::Error> {
        let mut opts = HistogramOpts::new(name, help);
        if let Some(buckets) = buckets {
            opts = opts.buckets(buckets.to_vec());
        }
        HistogramVec::new(opts, labels)
    }
    fn any(&self) -> AnyVector {
        AnyVector::Histogram(self.clone())
    }
    fn metric(
        &self,
        labels: &HashMap<&str, String>,
    ) -> Result<prometheus::Histogram, prometheus::Error> {
        self.get_metric_with(labels)
    }
}

impl<V: Vector> Instrument<V> {
    /// The metric for `attributes`, creating the vector of their label set on first use.
    fn bind(&self, attributes: &MetricAttributes) -> Result<V::Metric, BindError> {
        let empty = OrderedPromLabelSet::default();
        let labels = match attributes {
            MetricAttributes::Prometheus { labels } => labels.as_ref(),
            MetricAttributes::Empty => &empty,
            other => {
                return Err(
                    format!("{}: attributes of another meter: {other:?}", self.name).into(),
                );
            }
        };
        let schema: Vec<String> = labels.keys_ordered().map(str::to_string).collect();
        let values = labels.as_prom_labels();
        let known = self
            .vectors
            .read()
            .map_err(|_| "an SDK metric's lock is poisoned")?
            .get(&schema)
            .cloned();
        let vector = match known {
            Some(vector) => vector,
            None => self.add_vector(schema)?,
        };
        Ok(vector.metric(&values)?)
    }

    fn add_vector(&self, schema: Vec<String>) -> Result<V, BindError> {
        let mut vectors = self
            .vectors
            .write()
            .map_err(|_| "an SDK metric's lock is poisoned")?;
        // Another thread may have added it between our read and this write.
        if let Some(vector) = vectors.get(&schema) {
            return Ok(vector.clone());
        }
        let names: Vec<&str> = schema.iter().map(String::as_str).collect();
        let vector = V::create(&self.name, &self.help, &names, self.buckets.as_deref())?;
        self.collector
            .vectors
            .write()
            .map_err(|_| "the SDK metrics' lock is poisoned")?
            .push(vector.any());
        vectors.insert(schema, vector.clone());
        Ok(vector)
    }
}

/// The bound forms the SDK records into.
struct Bound<M>(M);

impl CounterBase for Bound<prometheus::IntCounter> {
    fn adds(&self, value: u64) {
        self.0.inc_by(value);
    }
}

impl GaugeBase for Bound<prometheus::IntGauge> {
    fn records(&self, value: u64) {
        self.0.set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

impl UpDownCounterBase for Bound<prometheus::IntGauge> {
    fn adds(&self, value: i64) {
        self.0.add(value);
    }
}

impl GaugeF64Base for Bound<prometheus::Gauge> {
    fn records(&self, value: f64) {
        self.0.set(value);
    }
}

impl HistogramBase for Bound<prometheus::Histogram> {
    fn records(&self, value: u64) {
        // Integer histograms hold counts and sizes; precision beyond 2^53 does not matter.
        #[allow(clippy::cast_precision_loss)]
        self.0.observe(value as f64);
    }
}

impl HistogramF64Base for Bound<prometheus::Histogram> {
    fn records(&self, value: f64) {
        self.0.observe(value);
    }
}

impl HistogramDurationBase for Bound<prometheus::Histogram> {
    fn records(&self, value: Duration) {
        self.0.observe(value.as_secs_f64());
    }
}

macro_rules! attributable {
    ($vector:ty, $base:ident) => {
        impl MetricAttributable<Box<dyn $base>> for Instrument<$vector> {
            fn with_attributes(
                &self,
                attributes: &MetricAttributes,
            ) -> Result<Box<dyn $base>, BindError> {
                Ok(Box::new(Bound(self.bind(attributes)?)))
            }
        }
    };
}

attributable!(IntCounterVec, CounterBase);
attributable!(IntGaugeVec, GaugeBase);
attributable!(IntGaugeVec, UpDownCounterBase);
attributable!(GaugeVec, GaugeF64Base);
attributable!(HistogramVec, HistogramBase);
attributable!(HistogramVec, HistogramF64Base);

/// A duration histogram, recorded in seconds.
struct Seconds(Instrument<HistogramVec>);

impl MetricAttributable<Box<dyn HistogramDurationBase>> for Seconds {
    fn with_attributes(
        &self,
        attributes: &MetricAttributes,
    ) -> Result<Box<dyn HistogramDurationBase>, BindError> {
        Ok(Box::new(Bound(self.0.bind(attributes)?)))
    }
}

#[cfg(test)]
mod tests {
    use temporalio_common::telemetry::metrics::MetricKeyValue;

    use super::*;

    fn text(registry: &prometheus::Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn one_name_recorded_with_two_label_sets_is_one_family() {
        let meter = SdkMeter::default();
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(meter.collector()))
            .unwrap_or_else(|e| panic!("{e}"));
        let counter = meter.counter(MetricParameters::from("temporal_request"));
        let worker = meter.new_attributes(NewAttributes::new(vec![MetricKeyValue::new(
            "task_queue",
            "mainloop",
        )]));
        let rpc = meter.extend_attributes(
            worker.clone(),
            NewAttributes::new(vec![MetricKeyValue::new(
                "operation",
                "PollWorkflowTaskQueue",
            )]),
        );
        counter.add(2, &worker);
        counter.add(3, &rpc);
        counter.add(1, &MetricAttributes::Empty);
        let latency = meter.histogram_duration(MetricParameters::from(
            "temporal_activity_execution_latency",
        ));
        latency.record(Duration::from_millis(250), &worker);

        let text = text(&registry);
        assert_eq!(
            text.matches("# TYPE temporal_request counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("temporal_request{task_queue=\"mainloop\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "temporal_request{operation=\"PollWorkflowTaskQueue\",task_queue=\"mainloop\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("temporal_request 1"), "{text}");
        // Seconds, with the SDK's buckets for activities in seconds.
        assert!(
            text.contains("temporal_activity_execution_latency_sum{task_queue=\"mainloop\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains(
                "temporal_activity_execution_latency_bucket{task_queue=\"mainloop\",le=\"0.5\"} 1"
            ),
            "{text}"
        );
    }
}
