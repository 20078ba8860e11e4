//! The many-open-streams load generator: the paced mock
//! ([`super::paced_mock`]) and the raw client ([`super::paced_client`])
//! together on one thread with a single-threaded tokio runtime (no
//! cross-thread wake-ups, no locks; the thread inherits this process's
//! core, CPU 1 when pinned). The mock serves as long as the harness
//! lives; [`PacedHarness::run`] runs one client plan on the same thread
//! and returns how it went with what the mock counted meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::paced_client::{self, PacedPlan};
use super::paced_mock::{PacedMock, Pacing};
use super::stream_client::{Gauge, StreamRun};
use crate::TaskError;

/// One client run and the mock's counters over it.
#[derive(Debug)]
pub struct PacedRun {
    /// How the streams went.
    pub run: StreamRun,
    /// What the mock counted during the run (differences).
    pub pacing: Pacing,
}

struct Job {
    plan: PacedPlan,
    gauge: Arc<Gauge>,
    done: oneshot::Sender<PacedRun>,
}

/// The harness thread; stops (and joins) when dropped.
pub struct PacedHarness {
    addr: SocketAddr,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacedHarness {
    /// Starts the thread and its mock on 127.0.0.1 (a free port), pacing
    /// chunks `gap` apart.
    pub fn start(gap: Duration) -> Result<Self, TaskError> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let thread = std::thread::Builder::new()
            .name("paced-harness".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("its runtime: {e}")));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let started = listen().and_then(|listener| {
                        let addr = listener.local_addr().map_err(|e| e.to_string())?;
                        Ok((addr, PacedMock::start(listener, gap)?))
                    });
                    let mock = match started {
                        Ok((addr, mock)) => {
                            let _ = ready_tx.send(Ok(addr));
                            mock
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Until the harness is dropped; each job is bounded by
                    // its streams' deadline.
                    while let Some(job) = queue.recv().await {
                        let before = mock.pacing();
                        let run = paced_client::run(job.plan, job.gauge).await;
                        let after = mock.pacing();
                        let _ = job.done.send(PacedRun {
                            run,
                            pacing: Pacing {
                                streams: after.streams - before.streams,
                                open: after.open,
                                paced: after.paced - before.paced,
                                late: after.late - before.late,
                                broken: after.broken - before.broken,
                            },
                        });
                    }
                });
            })
            .map_err(|e| TaskError::new("starting the paced harness thread", e))?;
        let mut harness = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            jobs: Some(jobs),
            thread: Some(thread),
        };
        match ready.recv() {
            Ok(Ok(addr)) => {
                harness.addr = addr;
                Ok(harness)
            }
            Ok(Err(e)) => Err(TaskError::msg(format!("the paced mock: {e}"))),
            Err(_) => Err(TaskError::msg("the paced harness thread ended at start")),
        }
    }

    /// The mock's address.
    pub fn mock_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API root to configure as an `openai` provider's `base_url`.
    pub fn api_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Runs `plan` on the harness thread.
    pub async fn run(&self, plan: PacedPlan, gauge: Arc<Gauge>) -> Result<PacedRun, TaskError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| TaskError::msg("the paced harness has stopped"))?
            .send(Job { plan, gauge, done })
            .map_err(|_| TaskError::msg("the paced harness thread has ended"))?;
        result
            .await
            .map_err(|_| TaskError::msg("the paced harness thread ended mid-run"))
    }
}

/// 127.0.0.1 on a free port with a deep accept queue: thousands of
/// streams start within seconds, and an overflowing queue resets them.
fn listen() -> Result<tokio::net::TcpListener, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("binding: {e}"))?;
    socket
        .listen(ACCEPT_QUEUE)
        .map_err(|e| format!("listening: {e}"))
}

/// The accept queue asked for (the kernel caps it at `net.core.somaxconn`).
const ACCEPT_QUEUE: u32 = 8192;

impl Drop for PacedHarness {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop (after a run under way,
        // which its deadline bounds); the runtime then drops every task
        // and socket.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream_client::{self, StreamPlan};
    use super::super::stream_mock::Ask;
    use super::*;

    const ASK: Ask = Ask {
        chunks: 4,
        gap: Duration::from_millis(2),
        timestamps: true,
    };

    #[tokio::test]
    async fn the_paced_client_gets_every_chunk_of_every_stream_from_the_paced_mock() {
        let harness = PacedHarness::start(ASK.gap).unwrap_or_else(|e| panic!("{e}"));
        let gauge = Arc::new(Gauge::default());
        let plan = PacedPlan {
            addr: harness.mock_addr(),
            path: "/v1/chat/completions".into(),
            model: "mock-upstream".into(),
            ask: ASK,
            streams: 50,
            ramp: Duration::from_millis(20),
            deadline: Duration::from_secs(20),
        };
        let out = harness
            .run(plan, gauge.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let run = &out.run;
        assert_eq!(
            (run.complete, run.cut, run.lost),
            (50, 0, 0),
            "{:?}",
            run.first_problem
        );
        assert_eq!(run.chunks, 200);
        assert_eq!(gauge.chunks(), 200);
        assert_eq!(gauge.open(), 0);
        assert_eq!(run.timings.transit.len(), 200);
        assert_eq!(run.timings.gap_added.len(), 150);
        // The first chunk goes with the head; the other three are paced.
        assert_eq!(
            (out.pacing.streams, out.pacing.paced, out.pacing.open),
            (50, 150, 0)
        );
    }

    #[tokio::test]
    async fn hyper_reads_the_paced_mock_on_kept_alive_connections() {
        // The gateway's upstream client is hyper: the raw mock must speak
        // HTTP/1.1 it accepts, several answers per connection included.
        let harness = PacedHarness::start(ASK.gap).unwrap_or_else(|e| panic!("{e}"));
        let plan = Arc::new(StreamPlan {
            authority: harness.mock_addr().to_string(),
            path: "/v1/chat/completions".into(),
            models: vec!["mock-upstream".into()],
            ask: ASK,
            streams: 12,
            concurrency: 3,
            ramp: Duration::ZERO,
            deadline: Duration::from_secs(20),
        });
        let run = stream_client::run(plan, Arc::new(Gauge::default())).await;
        assert_eq!(
            (run.complete, run.cut, run.lost),
            (12, 0, 0),
            "{:?}",
            run.first_problem
        );
        assert_eq!(run.chunks, 48);
    }

    #[tokio::test]
    async fn the_paced_mock_refuses_another_gap_with_a_reason() {
        let harness = PacedHarness::start(ASK.gap).unwrap_or_else(|e| panic!("{e}"));
        let plan = PacedPlan {
            addr: harness.mock_addr(),
            path: "/v1/chat/completions".into(),
            model: "mock-upstream".into(),
            ask: Ask {
                gap: Duration::from_millis(3),
                ..ASK
            },
            streams: 1,
            ramp: Duration::ZERO,
            deadline: Duration::from_secs(20),
        };
        let out = harness
            .run(plan, Arc::new(Gauge::default()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.run.lost, 1);
        let problem = out.run.first_problem.unwrap_or_default();
        assert!(problem.contains("400"), "{problem}");
    }
}
