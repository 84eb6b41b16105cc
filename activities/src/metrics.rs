//! The worker's own Prometheus metrics (`mainloop_*`): what chat turns and jobs did, and what
//! they spent. The activities record them as they work; the binary registers them in the
//! registry its `/metrics` serves.
//!
//! Activities run at least once: a retried activity is counted again (a job that a new worker
//! re-attaches to after a crash is timed and counted twice, say). The store's per-task totals
//! are exact; these are for rates and alerts.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Where tokens were spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Chat,
    Job,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Chat => "chat",
            Source::Job => "job",
        }
    }
}

/// Tokens of one turn or one job, as the model reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cache writes and reads together.
    pub cache_tokens: u64,
    /// In US dollars; none when neither the backend nor the price list knew it.
    pub cost_usd: Option<f64>,
}

/// The metrics of the chat and task activities.
pub struct ActivityMetrics {
    ci_fix_attempts: IntCounter,
    tokens: IntCounterVec,
    cost_usd: CounterVec,
    job_duration: HistogramVec,
    jobs_running: IntGauge,
    chat_turns: IntCounterVec,
}

impl std::fmt::Debug for ActivityMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityMetrics").finish_non_exhaustive()
    }
}

/// Job durations run from seconds (a fake model) to the job timeout (an hour by default).
const JOB_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

impl ActivityMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// If `registry` already holds metrics of these names.
    pub fn register(registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = ActivityMetrics {
            ci_fix_attempts: IntCounter::new(
                "mainloop_ci_fix_attempts_total",
                "Fix jobs started after a CI failure",
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "mainloop_tokens_total",
                    "Model tokens spent, by source (chat, job) and kind (input, output, cache)",
                ),
                &["source", "kind"],
            )?,
            cost_usd: CounterVec::new(
                Opts::new(
                    "mainloop_cost_usd_total",
                    "Model cost in US dollars, by source (chat, job)",
                ),
                &["source"],
            )?,
            job_duration: HistogramVec::new(
                HistogramOpts::new(
                    "mainloop_job_duration_seconds",
                    "How long jobs ran, by mode and outcome",
                )
                .buckets(JOB_BUCKETS.to_vec()),
                &["mode", "outcome"],
            )?,
            jobs_running: IntGauge::new(
                "mainloop_jobs_running",
                "Jobs running in this worker now",
            )?,
            chat_turns: IntCounterVec::new(
                Opts::new("mainloop_chat_turns_total", "Chat turns, by outcome"),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(metrics.ci_fix_attempts.clone()))?;
        registry.register(Box::new(metrics.tokens.clone()))?;
        registry.register(Box::new(metrics.cost_usd.clone()))?;
        registry.register(Box::new(metrics.job_duration.clone()))?;
        registry.register(Box::new(metrics.jobs_running.clone()))?;
        registry.register(Box::new(metrics.chat_turns.clone()))?;
        Ok(Arc::new(metrics))
    }

    /// Counts what a turn or a job spent.
    pub fn spent(&self, source: Source, spent: Spent) {
        let source = source.label();
        for (kind, count) in [
            ("input", spent.input_tokens),
            ("output", spent.output_tokens),
            ("cache", spent.cache_tokens),
        ] {
            self.tokens.with_label_values(&[source, kind]).inc_by(count);
        }
        // A counter never goes down: a negative or unknown cost adds nothing.
        if let Some(cost) = spent.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            self.cost_usd.with_label_values(&[source]).inc_by(cost);
        }
    }

    /// Counts one chat turn by how it ended.
    pub fn chat_turn(&self, outcome: TurnOutcome) {
        self.chat_turns.with_label_values(&[outcome.label()]).inc();
    }

    /// A job of `mode` starts now; the returned timer records it when dropped.
    pub fn job_started(self: &Arc<Self>, mode: &'static str) -> JobTimer {
        if mode == "fix" {
            self.ci_fix_attempts.inc();
        }
        self.jobs_running.inc();
        JobTimer {
            metrics: self.clone(),
            mode,
            started: Instant::now(),
            outcome: JobOutcomeLabel::Error,
        }
    }
}

/// How a chat turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// A reply was written.
    Answered,
    /// The message had its reply already (a repeated or retried turn): nothing was done.
    Duplicate,
    /// It failed and Temporal will try again.
    Error,
    /// It failed for good (no model configured, the message is gone).
    Failed,
    /// Temporal cancelled it (a timeout, or a shutdown).
    Cancelled,
}

impl TurnOutcome {
    fn label(self) -> &'static str {
        match self {
            TurnOutcome::Answered => "answered",
            TurnOutcome::Duplicate => "duplicate",
            TurnOutcome::Error => "error",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Cancelled => "cancelled",
        }
    }
}

/// How a job ended, as its duration is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcomeLabel {
    /// The agent produced its result (a plan, or a pushed branch).
    Succeeded,
    /// The agent reported a failure, or the runner refused the job for good.
    Failed,
    /// The runner lost the job or it timed out, or recording it failed: the activity retries.
    Error,
    /// The workflow cancelled it, or the activity timed out.
    Cancelled,
}

impl JobOutcomeLabel {
    fn label(self) -> &'static str {
        match self {
            JobOutcomeLabel::Succeeded => "succeeded",
            JobOutcomeLabel::Failed => "failed",
            JobOutcomeLabel::Error => "error",
            JobOutcomeLabel::Cancelled => "cancelled",
        }
    }
}

/// One running job: counted in `mainloop_jobs_running` until dropped, then observed in
/// `mainloop_job_duration_seconds` with the last outcome set (`error` if none was: the
/// activity left early on a failure).
pub struct JobTimer {
    metrics: Arc<ActivityMetrics>,
    mode: &'static str,
    started: Instant,
    outcome: JobOutcomeLabel,
}

impl JobTimer {
    pub fn outcome(&mut self, outcome: JobOutcomeLabel) {
        self.outcome = outcome;
    }
}

impl Drop for JobTimer {
    fn drop(&mut self) {
        self.metrics.jobs_running.dec();
        self.metrics
            .job_duration
            .with_label_values(&[self.mode, self.outcome.label()])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_fix_job_is_an_attempt_and_is_timed_with_its_outcome() {
        let registry = Registry::new();
        let metrics = ActivityMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
        let mut fix = metrics.job_started("fix");
        let plan = metrics.job_started("plan");
        assert!(text(&registry).contains("mainloop_jobs_running 2"));
        fix.outcome(JobOutcomeLabel::Succeeded);
        drop(fix);
        drop(plan);
        let text = text(&registry);
        assert!(text.contains("mainloop_ci_fix_attempts_total 1"), "{text}");
        assert!(text.contains("mainloop_jobs_running 0"), "{text}");
        assert!(
            text.contains(
                "mainloop_job_duration_seconds_count{mode=\"fix\",outcome=\"succeeded\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("mainloop_job_duration_seconds_count{mode=\"plan\",outcome=\"error\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn spending_counts_tokens_by_kind_and_only_positive_costs() {
        let registry = Registry::new();
        let metrics = ActivityMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
        let spent = Spent {
            input_tokens: 10,
            output_tokens: 4,
            cache_tokens: 2,
            cost_usd: Some(0.5),
        };
        metrics.spent(Source::Job, spent);
        metrics.spent(
            Source::Chat,
            Spent {
                cost_usd: Some(-1.0),
                ..spent
            },
        );
        metrics.chat_turn(TurnOutcome::Answered);
        let text = text(&registry);
        assert!(
            text.contains("mainloop_tokens_total{kind=\"input\",source=\"job\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("mainloop_tokens_total{kind=\"cache\",source=\"chat\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mainloop_cost_usd_total{source=\"job\"} 0.5"),
            "{text}"
        );
        assert!(
            !text.contains("mainloop_cost_usd_total{source=\"chat\"}"),
            "{text}"
        );
        assert!(
            text.contains("mainloop_chat_turns_total{outcome=\"answered\"} 1"),
            "{text}"
        );
    }
}
