//! Prometheus metrics. Every handle is registered once at startup, against this gateway's own
//! recorder (not the process-global one, so several gateways can run in one test process), and
//! kept in plain vectors indexed by deployment and model group: the hot path never looks a
//! metric up by name. Label values come only from config (deployment ids, model groups) and from
//! fixed enums (error classes, status classes).

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;
use crate::error::ErrorClass;

const METADATA: Metadata<'static> = Metadata::new("switchyard", Level::INFO, Some(module_path!()));

/// Latency buckets in seconds: 0.5 ms to 5 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Gateway overhead buckets in seconds: 10 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Every metric name, with its help text; the README's metrics table lists the same.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "gateway_requests_total",
        "Client requests by model group, serving deployment and HTTP status class.",
    ),
    (
        "gateway_upstream_attempts_total",
        "Upstream attempts by deployment and outcome (success, an error class, or cancelled).",
    ),
    (
        "gateway_upstream_latency_seconds",
        "Duration of successful upstream attempts (for streams, until the last byte).",
    ),
    (
        "gateway_upstream_ttft_seconds",
        "Time to first token of successful streamed attempts.",
    ),
    (
        "gateway_overhead_seconds",
        "Time the gateway itself spent on a request, upstream waits excluded.",
    ),
    (
        "gateway_tokens_total",
        "Tokens billed by upstreams, by deployment and direction (input, output).",
    ),
    (
        "gateway_cost_nanodollars_total",
        "Spend by deployment, in billionths of a US dollar.",
    ),
    (
        "gateway_retries_total",
        "Attempts after the first within a model group.",
    ),
    (
        "gateway_fallbacks_total",
        "Requests that moved to a fallback model group.",
    ),
    (
        "gateway_breaker_state",
        "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "gateway_inflight_requests",
        "Upstream attempts in flight per deployment.",
    ),
    (
        "gateway_deployment_declines_total",
        "Times a deployment declined a request, by reason.",
    ),
    (
        "gateway_stream_invalid_events_total",
        "Upstream stream events that were not valid JSON (skipped).",
    ),
    (
        "gateway_actor_errors_total",
        "Deployment actor messages that failed (timeout, closed) or outcomes dropped (full).",
    ),
    (
        "gateway_actor_respawns_total",
        "Deployment actors respawned after their mailbox closed.",
    ),
    (
        "gateway_deployment_alerts_total",
        "Deployments disabled for long because the upstream refused our quota or credentials.",
    ),
    (
        "gateway_retry_budget_exhausted_total",
        "Retries not made because the model group's retry budget was spent.",
    ),
    (
        "gateway_hedges_total",
        "Hedged second attempts by model group: started, and won (served the request).",
    ),
    (
        "gateway_queued_requests_total",
        "Requests that waited for a deployment at its concurrency limit, by how the wait ended.",
    ),
    (
        "gateway_concurrency_limit",
        "Concurrency limit in force per deployment (adaptive deployments move it).",
    ),
    (
        "gateway_ratelimit_headroom",
        "Share of the provider's rate limit left, from its x-ratelimit headers (0-1).",
    ),
];

/// Status classes for `gateway_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Ok,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            200..=399 => StatusClass::Ok,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StatusClass::Ok => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    const ALL: [StatusClass; 3] = [
        StatusClass::Ok,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];
}

/// Outcome slots of `gateway_upstream_attempts_total`: one per error class, then these.
pub const OUTCOME_SUCCESS: usize = ErrorClass::ALL.len();
pub const OUTCOME_CANCELLED: usize = ErrorClass::ALL.len() + 1;
const OUTCOMES: usize = ErrorClass::ALL.len() + 2;

/// Decline reasons of `gateway_deployment_declines_total`.
pub const DECLINE_REASONS: [&str; 6] = [
    "breaker_open",
    "cooling_down",
    "disabled",
    "rate_limited",
    "at_capacity",
    "unavailable",
];

/// Per-deployment handles.
pub struct DeploymentMetrics {
    /// Indexed by `ErrorClass::index()`, `OUTCOME_SUCCESS`, `OUTCOME_CANCELLED`.
    pub attempts: Vec<Counter>,
    pub latency: Histogram,
    pub ttft: Histogram,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
    pub cost_nanodollars: Counter,
    pub breaker_state: Gauge,
    pub in_flight: Gauge,
    /// Indexed like `DECLINE_REASONS`.
    pub declines: Vec<Counter>,
    pub invalid_events: Counter,
    pub actor_timeouts: Counter,
    pub actor_closed: Counter,
    pub outcomes_dropped: Counter,
    pub respawns: Counter,
    /// `[quota_exhausted, upstream_auth]`.
    pub alerts: [Counter; 2],
    pub concurrency_limit: Gauge,
    pub headroom: Gauge,
}

impl DeploymentMetrics {
    /// Counts an alert for a long-cooldown class (other classes are not alerts).
    pub fn alert(&self, class: ErrorClass) {
        match class {
            ErrorClass::QuotaExhausted => self.alerts[0].increment(1),
            ErrorClass::UpstreamAuth => self.alerts[1].increment(1),
            _ => {}
        }
    }

    pub fn decline(&self, reason: &str) {
        if let Some(i) = DECLINE_REASONS.iter().position(|r| *r == reason) {
            self.declines[i].increment(1);
        }
    }
}

pub struct Metrics {
    handle: PrometheusHandle,
    pub overhead: Histogram,
    pub deployments: Vec<DeploymentMetrics>,
    /// Per requested group (and a last slot for requests that matched none): the deployments
    /// that can serve it (its own and its fallback groups') and `None`, each with a counter
    /// per status class. Only these pairs exist, so the series count stays proportional to
    /// the config, not to groups x deployments.
    requests: Vec<Vec<(Option<usize>, [Counter; 3])>>,
    /// Per model group.
    pub retries: Vec<Counter>,
    /// `fallbacks[from]` counts moves from group `from` to each group of its chains.
    fallbacks: Vec<Vec<(usize, Counter)>>,
    /// Per model group.
    pub retry_budget_exhausted: Vec<Counter>,
    /// Per model group: `[started, won]`.
    pub hedges: Vec<[Counter; 2]>,
    /// Per model group: `[served, timed_out, queue_full]`.
    pub queued: Vec<[Counter; 3]>,
}

/// Every group a request for `g` may be served by: itself, then its fallback chains.
pub fn reachable_groups(config: &Config, g: usize) -> Vec<usize> {
    let group = &config.groups[g];
    let mut out = vec![g];
    for &to in group
        .fallbacks
        .iter()
        .chain(&group.context_window_fallbacks)
        .chain(&group.content_policy_fallbacks)
    {
        if !out.contains(&to) {
            out.push(to);
        }
    }
    out
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

impl Metrics {
    pub fn new(config: &Config) -> Metrics {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_latency_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_ttft_seconds".into()), LATENCY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("gateway_overhead_seconds".into()),
                    OVERHEAD_BUCKETS,
                )
            });
        // The bucket lists are non-empty constants, so the builder cannot refuse them; if it
        // ever did, summaries instead of histograms would still be correct.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        for (name, help) in DESCRIPTIONS {
            let unit = if name.ends_with("_seconds") {
                Some(Unit::Seconds)
            } else {
                None
            };
            if name.ends_with("_seconds") {
                recorder.describe_histogram((*name).into(), unit, (*help).into());
            } else if matches!(
                *name,
                "gateway_breaker_state"
                    | "gateway_inflight_requests"
                    | "gateway_concurrency_limit"
                    | "gateway_ratelimit_headroom"
            ) {
                recorder.describe_gauge((*name).into(), unit, (*help).into());
            } else {
                recorder.describe_counter((*name).into(), unit, (*help).into());
            }
        }

        let counter = |name: &'static str, l: &[(&'static str, &str)]| {
            recorder.register_counter(&Key::from_parts(name, labels(l)), &METADATA)
        };
        let gauge = |name: &'static str, l: &[(&'static str, &str)]| {
            recorder.register_gauge(&Key::from_parts(name, labels(l)), &METADATA)
        };
        let histogram = |name: &'static str, l: &[(&'static str, &str)]| {
            recorder.register_histogram(&Key::from_parts(name, labels(l)), &METADATA)
        };

        let deployments = config
            .deployments
            .iter()
            .map(|d| {
                let id = &*d.id;
                let provider = d.wire.name;
                let attempts = (0..OUTCOMES)
                    .map(|i| {
                        let outcome = match i {
                            OUTCOME_SUCCESS => "success",
                            OUTCOME_CANCELLED => "cancelled",
                            _ => ErrorClass::ALL[i].as_str(),
                        };
                        counter(
                            "gateway_upstream_attempts_total",
                            &[
                                ("deployment", id),
                                ("provider", provider),
                                ("outcome", outcome),
                            ],
                        )
                    })
                    .collect();
                let in_flight = gauge("gateway_inflight_requests", &[("deployment", id)]);
                let breaker_state = gauge("gateway_breaker_state", &[("deployment", id)]);
                in_flight.set(0.0);
                breaker_state.set(0.0);
                DeploymentMetrics {
                    attempts,
                    latency: histogram("gateway_upstream_latency_seconds", &[("deployment", id)]),
                    ttft: histogram("gateway_upstream_ttft_seconds", &[("deployment", id)]),
                    tokens_in: counter(
                        "gateway_tokens_total",
                        &[("deployment", id), ("direction", "input")],
                    ),
                    tokens_out: counter(
                        "gateway_tokens_total",
                        &[("deployment", id), ("direction", "output")],
                    ),
                    cost_nanodollars: counter(
                        "gateway_cost_nanodollars_total",
                        &[("deployment", id)],
                    ),
                    breaker_state,
                    in_flight,
                    declines: DECLINE_REASONS
                        .iter()
                        .map(|r| {
                            counter(
                                "gateway_deployment_declines_total",
                                &[("deployment", id), ("reason", r)],
                            )
                        })
                        .collect(),
                    invalid_events: counter(
                        "gateway_stream_invalid_events_total",
                        &[("deployment", id)],
                    ),
                    actor_timeouts: counter(
                        "gateway_actor_errors_total",
                        &[("deployment", id), ("kind", "timeout")],
                    ),
                    actor_closed: counter(
                        "gateway_actor_errors_total",
                        &[("deployment", id), ("kind", "closed")],
                    ),
                    outcomes_dropped: counter(
                        "gateway_actor_errors_total",
                        &[("deployment", id), ("kind", "outcome_dropped")],
                    ),
                    respawns: counter("gateway_actor_respawns_total", &[("deployment", id)]),
                    alerts: ["quota_exhausted", "upstream_auth"].map(|reason| {
                        counter(
                            "gateway_deployment_alerts_total",
                            &[("deployment", id), ("reason", reason)],
                        )
                    }),
                    concurrency_limit: gauge("gateway_concurrency_limit", &[("deployment", id)]),
                    headroom: gauge("gateway_ratelimit_headroom", &[("deployment", id)]),
                }
            })
            .collect();

        let series = |group: &str, dep: Option<usize>| {
            let dep_name = dep.map_or("", |d| &*config.deployments[d].id);
            let c = |class: StatusClass| {
                counter(
                    "gateway_requests_total",
                    &[
                        ("model_group", group),
                        ("deployment", dep_name),
                        ("status_class", class.as_str()),
                    ],
                )
            };
            (dep, StatusClass::ALL.map(c))
        };
        let mut requests: Vec<Vec<(Option<usize>, [Counter; 3])>> = config
            .groups
            .iter()
            .map(|g| {
                reachable_groups(config, g.index)
                    .into_iter()
                    .flat_map(|s| config.groups[s].deployments.iter().copied())
                    .map(Some)
                    .chain(std::iter::once(None))
                    .map(|d| series(&g.name, d))
                    .collect()
            })
            .collect();
        requests.push(vec![series("", None)]);
        let retries = config
            .groups
            .iter()
            .map(|g| counter("gateway_retries_total", &[("model_group", &g.name)]))
            .collect();
        let fallbacks = config
            .groups
            .iter()
            .map(|g| {
                reachable_groups(config, g.index)
                    .into_iter()
                    .skip(1)
                    .map(|to| {
                        let c = counter(
                            "gateway_fallbacks_total",
                            &[("from", &g.name), ("to", &config.groups[to].name)],
                        );
                        (to, c)
                    })
                    .collect()
            })
            .collect();
        let per_group = |name: &'static str| -> Vec<Counter> {
            config
                .groups
                .iter()
                .map(|g| counter(name, &[("model_group", &g.name)]))
                .collect()
        };
        let retry_budget_exhausted = per_group("gateway_retry_budget_exhausted_total");
        let hedges = config
            .groups
            .iter()
            .map(|g| {
                ["started", "won"].map(|o| {
                    counter(
                        "gateway_hedges_total",
                        &[("model_group", &g.name), ("outcome", o)],
                    )
                })
            })
            .collect();
        let queued = config
            .groups
            .iter()
            .map(|g| {
                ["served", "timed_out", "queue_full"].map(|o| {
                    counter(
                        "gateway_queued_requests_total",
                        &[("model_group", &g.name), ("outcome", o)],
                    )
                })
            })
            .collect();
        let overhead = histogram("gateway_overhead_seconds", &[]);

        Metrics {
            handle,
            overhead,
            deployments,
            requests,
            retries,
            fallbacks,
            retry_budget_exhausted,
            hedges,
            queued,
        }
    }

    /// Counts a move from group `from` to group `to` (one of its fallback chains).
    pub fn fallback(&self, from: usize, to: usize) {
        if let Some((_, c)) = self
            .fallbacks
            .get(from)
            .and_then(|list| list.iter().find(|(t, _)| *t == to))
        {
            c.increment(1);
        }
    }

    /// Counts one client request. `group`/`deployment` are `None` when the request never got
    /// that far (bad input, unknown model, nothing served it).
    pub fn request(&self, group: Option<usize>, deployment: Option<usize>, status: u16) {
        let slot = group.unwrap_or(self.requests.len() - 1);
        let class = match StatusClass::of(status) {
            StatusClass::Ok => 0,
            StatusClass::ClientError => 1,
            StatusClass::ServerError => 2,
        };
        let found = self
            .requests
            .get(slot)
            .and_then(|list| list.iter().find(|(d, _)| *d == deployment));
        if let Some((_, counters)) = found {
            counters[class].increment(1);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram buffers; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}
