//! Open-loop load spread round-robin over the replicas of a fleet: request
//! `i` goes to replica `i % N` at its intended time, whatever the answers
//! before it, and every answer is checked (the complete expected text of
//! the model that says it answered).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LoadError;

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetOutcome {
    /// A complete, correct answer from `model`.
    Answered {
        /// The model that answered.
        model: String,
        /// The answer's `usage.completion_tokens`.
        completion_tokens: u64,
    },
    /// A clean OpenAI-shaped error.
    Clean {
        /// Its HTTP status.
        status: u16,
    },
    /// No answer within the deadline, a transport error, a wrong or
    /// unreadable answer.
    Lost(String),
}

/// One request of a fleet run.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRecord {
    /// Its number, from 0.
    pub index: u64,
    /// The replica it was sent to.
    pub replica: usize,
    /// When it was due, since the epoch.
    pub intended_at: Duration,
    /// From its intended time to the end of the answer.
    pub latency: Duration,
    /// What became of it.
    pub outcome: FleetOutcome,
}

/// The load of one fleet run.
#[derive(Debug, Clone)]
pub(crate) struct FleetLoad<'a> {
    /// Each replica's OpenAI base URL (`http://ADDR/v1`).
    pub replicas: &'a [String],
    /// The scenario the requests name.
    pub scenario: &'a str,
    pub rate_per_sec: f64,
    pub requests: u64,
    pub max_tokens: u32,
    /// A request unanswered this long after its intended time is lost.
    pub deadline: Duration,
    /// `(model, text)` of every model that may answer.
    pub expected: &'a [(String, String)],
}

/// The records, by index, and the most requests in flight at once.
pub(crate) async fn drive(
    load: &FleetLoad<'_>,
    epoch: Instant,
) -> Result<(Vec<FleetRecord>, usize), LoadError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()
        .map_err(LoadError::Client)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let expected: Arc<Vec<(String, String)>> = Arc::new(load.expected.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    let period = 1.0 / load.rate_per_sec.max(f64::MIN_POSITIVE);
    for index in 0..load.requests {
        let intended_at = Duration::from_secs_f64(period * index as f64);
        tokio::time::sleep_until(epoch + intended_at).await;
        let replica = usize::try_from(index).unwrap_or(0) % load.replicas.len().max(1);
        let url = format!("{}/chat/completions", load.replicas[replica]);
        let body = serde_json::json!({
            "model": load.scenario,
            "max_tokens": load.max_tokens,
            "messages": [{"role": "user", "content": format!("fleet request {index}")}],
        });
        let (client, in_flight, most, expected) = (
            client.clone(),
            Arc::clone(&in_flight),
            Arc::clone(&most),
            Arc::clone(&expected),
        );
        let deadline = load.deadline;
        tasks.spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            most.fetch_max(now, Ordering::AcqRel);
            let outcome = match tokio::time::timeout_at(
                epoch + intended_at + deadline,
                send(&client, &url, &body, &expected),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => FleetOutcome::Lost("deadline".into()),
            };
            in_flight.fetch_sub(1, Ordering::AcqRel);
            FleetRecord {
                index,
                replica,
                intended_at,
                latency: Instant::now().saturating_duration_since(epoch + intended_at),
                outcome,
            }
        });
    }
    let mut records = Vec::with_capacity(usize::try_from(load.requests).unwrap_or(0));
    while let Some(done) = tasks.join_next().await {
        if let Ok(record) = done {
            records.push(record);
        }
    }
    records.sort_by_key(|r| r.index);
    Ok((records, most.load(Ordering::Acquire)))
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    expected: &[(String, String)],
) -> FleetOutcome {
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return FleetOutcome::Lost(format!("transport: {e}")),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return FleetOutcome::Lost(format!("body: {e}")),
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return FleetOutcome::Lost("unreadable body".into());
    };
    if status != 200 {
        return if value["error"].is_object() {
            FleetOutcome::Clean { status }
        } else {
            FleetOutcome::Lost(format!("{status} without an error object"))
        };
    }
    let model = value["model"].as_str().unwrap_or_default();
    let text = value["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    match expected.iter().find(|(m, _)| m == model) {
        Some((_, want)) if want == text => FleetOutcome::Answered {
            model: model.to_owned(),
            completion_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
        Some(_) => FleetOutcome::Lost("wrong or truncated answer".into()),
        None => FleetOutcome::Lost(format!("answered by unexpected model `{model}`")),
    }
}
