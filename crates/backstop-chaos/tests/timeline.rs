//! Timelines switch a fake's behaviour at the scripted times: on a paused
//! clock, and end to end under load.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use backstop_chaos::load::LostReason;
use backstop_chaos::{
    Api, Behaviour, ErrorKind, FakeProvider, FakeSpec, Mode, Outcome, Report, ScenarioRunner,
    Timeline, scenario,
};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn behaviour_follows_the_timeline_on_a_paused_clock() {
    let down = Behaviour::Error(ErrorKind::Unavailable);
    let fake = FakeProvider::start(FakeSpec::new("primary", Api::OpenAi).schedule(
        Timeline::outage(ms(100), ms(200), Behaviour::Refused).flapping_at(
            ms(1000),
            ms(50),
            0.2,
            down,
        ),
    ))
    .await
    .unwrap();
    fake.arm(Instant::now());
    let mut seen = Vec::new();
    for step in [0, 100, 150, 200, 999, 1000, 1009, 1010, 1049, 1050] {
        let now = Instant::now() - fake.epoch();
        tokio::time::advance(ms(step) - now).await;
        seen.push((step, fake.behaviour_now()));
    }
    assert_eq!(
        seen,
        [
            (0, Behaviour::Healthy),
            (100, Behaviour::Refused),
            (150, Behaviour::Refused),
            (200, Behaviour::Healthy),
            (999, Behaviour::Healthy),
            (1000, down),
            (1009, down),
            (1010, Behaviour::Healthy),
            (1049, Behaviour::Healthy),
            (1050, down),
        ]
    );
    // A run-time switch wins over the timeline, from now on only.
    let switched_at = Instant::now() - fake.epoch();
    fake.set_behaviour(Behaviour::NeverAnswer).unwrap();
    tokio::time::advance(ms(5)).await;
    assert_eq!(fake.behaviour_now(), Behaviour::NeverAnswer);
    assert_eq!(fake.behaviour_at(switched_at - ms(1)), Behaviour::Healthy);
    assert_eq!(fake.behaviour_at(switched_at), Behaviour::NeverAnswer);
    fake.resume_schedule();
    assert_eq!(
        fake.behaviour_now(),
        fake.behaviour_at(Instant::now() - fake.epoch())
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn runner_sees_the_scripted_outage_under_load() {
    // The `recovery` scenario, shortened, with the load aimed straight at
    // the primary (no gateway): requests meant for the refused window fail
    // in transport, the others succeed, and the fake saw none in between.
    let mut spec = scenario("recovery", Mode::Quick).unwrap();
    spec.sizes.quick.requests = 120;
    spec.fakes[0].schedule = Timeline::outage(ms(300), ms(700), Behaviour::Refused).into();
    let fakes = spec.start_fakes().await.unwrap();
    let primary_url = fakes.get("primary").unwrap().api_base_url();

    let run = ScenarioRunner::new()
        .run(&spec, &fakes, &primary_url)
        .await
        .unwrap();
    assert_eq!(run.records.len(), 120);
    assert_eq!(run.outages, vec![(ms(300), ms(700))]);
    // Leave a margin for the time a request takes to reach the fake on a
    // busy machine.
    for r in &run.records {
        let t = r.intended_at;
        if t >= ms(320) && t < ms(660) {
            assert_eq!(r.outcome, Outcome::Lost(LostReason::Transport), "at {t:?}");
        } else if t < ms(260) || t >= ms(760) {
            assert_eq!(r.outcome, Outcome::Succeeded, "at {t:?}");
        }
    }
    let log = &run.fakes["primary"].requests;
    // While down, only requests on connections opened before the outage
    // reach the fake, and each is reset.
    assert!(
        log.iter()
            .filter(|r| r.at >= ms(300) && r.at < ms(700))
            .all(|r| r.behaviour == "refused"),
        "{log:?}"
    );
    assert!(log.iter().any(|r| r.at >= ms(700)), "traffic came back");
    let secondary = &run.fakes["secondary"];
    assert_eq!(secondary.stats.requests, 0);

    let log = log.clone();
    let report = Report::build("test", true, &[run]);
    let s = &report.scenarios[0];
    assert_eq!(s.requests, 120);
    assert!((34..=44).contains(&s.lost), "lost {}", s.lost);
    let served = log.iter().filter(|r| r.behaviour == "healthy").count() as u64;
    assert_eq!(served + s.lost, 120);
    assert_eq!(s.upstream_attempts["primary"], log.len() as u64);
    assert_eq!(s.outages_ms, vec![[300.0, 700.0]]);
    fakes.shutdown().await;
}
