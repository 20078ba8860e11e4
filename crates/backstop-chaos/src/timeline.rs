//! Outages scripted over time or over request counts.
//!
//! A [`Timeline`] says what a fake provider does at every moment after its
//! epoch: healthy until `t1`, a fault from `t1` to `t2`, flapping with a
//! period and a duty cycle... A [`Schedule::Sequence`] counts requests
//! instead ("fail 3 times, then succeed"). Both are pure functions of time
//! or count, so they are tested without sleeping and the report can shade
//! exactly the windows the fakes were down.

use std::time::Duration;

use crate::behaviour::Behaviour;

/// What a phase of a timeline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseMode {
    /// One behaviour for the whole phase.
    Steady(Behaviour),
    /// Cycles of `down_for` in `down`, then the rest of `period` in `up`,
    /// starting with the down part.
    Flapping {
        /// A whole cycle.
        period: Duration,
        /// The down part of each cycle (period x duty cycle).
        down_for: Duration,
        /// The behaviour while down.
        down: Behaviour,
        /// The behaviour while up.
        up: Behaviour,
    },
}

/// A phase: from `from` (since the epoch) until the next phase starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// When the phase starts, since the epoch.
    pub from: Duration,
    /// What it does.
    pub mode: PhaseMode,
}

/// Behaviour as a function of time since the fake's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    phases: Vec<Phase>,
}

impl Timeline {
    /// One behaviour forever.
    pub fn steady(behaviour: Behaviour) -> Self {
        Self {
            phases: vec![Phase {
                from: Duration::ZERO,
                mode: PhaseMode::Steady(behaviour),
            }],
        }
    }

    /// Healthy forever.
    pub fn healthy() -> Self {
        Self::steady(Behaviour::Healthy)
    }

    /// From `at` on, `behaviour`.
    #[must_use]
    pub fn then_at(mut self, at: Duration, behaviour: Behaviour) -> Self {
        self.push(at, PhaseMode::Steady(behaviour));
        self
    }

    /// From `at` on, flap: `down` for `period x duty` of every `period`,
    /// healthy for the rest. `duty` is clamped to 0..=1.
    #[must_use]
    pub fn flapping_at(
        mut self,
        at: Duration,
        period: Duration,
        duty: f64,
        down: Behaviour,
    ) -> Self {
        let down_for = period.mul_f64(duty.clamp(0.0, 1.0));
        self.push(
            at,
            PhaseMode::Flapping {
                period,
                down_for,
                down,
                up: Behaviour::Healthy,
            },
        );
        self
    }

    /// Down with `behaviour` from `from` to `to`, healthy before and after.
    pub fn outage(from: Duration, to: Duration, behaviour: Behaviour) -> Self {
        Self::healthy()
            .then_at(from, behaviour)
            .then_at(to, Behaviour::Healthy)
    }

    fn push(&mut self, from: Duration, mode: PhaseMode) {
        // A phase at the same instant as the last replaces it, so
        // `steady(..).then_at(0, ..)` means what it says.
        if let Some(last) = self.phases.last_mut()
            && last.from == from
        {
            last.mode = mode;
            return;
        }
        self.phases.push(Phase { from, mode });
    }

    /// The phases, in order.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Checks that phases are in order and every flapping period is at
    /// least a millisecond.
    pub fn validate(&self) -> Result<(), String> {
        for pair in self.phases.windows(2) {
            if pair[1].from < pair[0].from {
                return Err(format!(
                    "phase at {} ms comes after the phase at {} ms",
                    pair[1].from.as_millis(),
                    pair[0].from.as_millis()
                ));
            }
        }
        for phase in &self.phases {
            if let PhaseMode::Flapping { period, .. } = phase.mode
                && period < Duration::from_millis(1)
            {
                return Err("a flapping period must be at least 1 ms".to_owned());
            }
        }
        Ok(())
    }

    fn phase_index_at(&self, t: Duration) -> Option<usize> {
        self.phases.iter().rposition(|p| p.from <= t)
    }

    /// What the fake does at `t` since its epoch (healthy before the first
    /// phase).
    pub fn behaviour_at(&self, t: Duration) -> Behaviour {
        let Some(i) = self.phase_index_at(t) else {
            return Behaviour::Healthy;
        };
        let phase = self.phases[i];
        match phase.mode {
            PhaseMode::Steady(b) => b,
            PhaseMode::Flapping {
                period,
                down_for,
                down,
                up,
            } => {
                let into = cycle_position(t - phase.from, period);
                if into < down_for { down } else { up }
            }
        }
    }

    /// The first instant after `t` at which the behaviour may change, if
    /// any.
    pub fn next_change_after(&self, t: Duration) -> Option<Duration> {
        let next_phase = self.phases.iter().map(|p| p.from).find(|&from| from > t);
        let within = self.phase_index_at(t).and_then(|i| {
            let phase = self.phases[i];
            match phase.mode {
                PhaseMode::Steady(_) => None,
                PhaseMode::Flapping {
                    period, down_for, ..
                } => {
                    let since = t - phase.from;
                    let into = cycle_position(since, period);
                    let cycle_start = since - into;
                    let boundary = if into < down_for {
                        cycle_start + down_for
                    } else {
                        cycle_start + period
                    };
                    Some(phase.from + boundary)
                }
            }
        });
        match (next_phase, within) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The windows within `[0, until)` during which the behaviour is an
    /// outage ([`Behaviour::is_outage`]), merged and in order.
    pub fn outage_windows(&self, until: Duration) -> Vec<(Duration, Duration)> {
        let mut windows: Vec<(Duration, Duration)> = Vec::new();
        let mut t = Duration::ZERO;
        // Each step moves to the next change point, which is strictly later;
        // a flapping period is at least 1 ms, so this ends.
        while t < until {
            let next = self.next_change_after(t).unwrap_or(until).min(until);
            if self.behaviour_at(t).is_outage() {
                match windows.last_mut() {
                    Some(last) if last.1 == t => last.1 = next,
                    _ => windows.push((t, next)),
                }
            }
            if next <= t {
                break;
            }
            t = next;
        }
        windows
    }
}

fn cycle_position(since: Duration, period: Duration) -> Duration {
    let period_ns = period.as_nanos().max(1);
    let pos = since.as_nanos() % period_ns;
    Duration::from_nanos(u64::try_from(pos).unwrap_or(u64::MAX))
}

/// How a fake's behaviour is scripted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// By time since the epoch.
    Timeline(Timeline),
    /// By request count: each step serves that many requests, then `then`
    /// serves the rest ("fail N times, then succeed").
    Sequence {
        /// `(requests, behaviour)` in order.
        steps: Vec<(u64, Behaviour)>,
        /// The behaviour after the steps.
        then: Behaviour,
    },
}

impl Schedule {
    /// `count` requests answered with `failure`, then healthy.
    pub fn fail_then_succeed(count: u64, failure: Behaviour) -> Self {
        Schedule::Sequence {
            steps: vec![(count, failure)],
            then: Behaviour::Healthy,
        }
    }

    /// The behaviour for the request numbered `index` (from 0) arriving at
    /// `t` since the epoch.
    pub fn behaviour_for(&self, index: u64, t: Duration) -> Behaviour {
        match self {
            Schedule::Timeline(timeline) => timeline.behaviour_at(t),
            Schedule::Sequence { steps, then } => {
                let mut seen = 0u64;
                for &(count, behaviour) in steps {
                    seen = seen.saturating_add(count);
                    if index < seen {
                        return behaviour;
                    }
                }
                *then
            }
        }
    }

    /// Every behaviour the schedule can produce.
    pub fn behaviours(&self) -> Vec<Behaviour> {
        match self {
            Schedule::Timeline(timeline) => {
                let mut out = vec![Behaviour::Healthy];
                for phase in timeline.phases() {
                    match phase.mode {
                        PhaseMode::Steady(b) => out.push(b),
                        PhaseMode::Flapping { down, up, .. } => {
                            out.push(down);
                            out.push(up);
                        }
                    }
                }
                out
            }
            Schedule::Sequence { steps, then } => {
                let mut out: Vec<Behaviour> = steps.iter().map(|&(_, b)| b).collect();
                out.push(*then);
                out
            }
        }
    }

    /// Checks the schedule can be served. A refused connection carries no
    /// request to count, so `Refused` only appears in timelines.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Schedule::Timeline(timeline) => timeline.validate(),
            Schedule::Sequence { steps, then } => {
                if steps
                    .iter()
                    .map(|&(_, b)| b)
                    .chain([*then])
                    .any(|b| b == Behaviour::Refused)
                {
                    Err(
                        "a request-count sequence cannot refuse connections; use a timeline"
                            .to_owned(),
                    )
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl From<Timeline> for Schedule {
    fn from(timeline: Timeline) -> Self {
        Schedule::Timeline(timeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::ErrorKind;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn outage_is_down_between_its_bounds_only() {
        let t = Timeline::outage(ms(100), ms(300), Behaviour::Refused);
        assert_eq!(t.behaviour_at(ms(0)), Behaviour::Healthy);
        assert_eq!(t.behaviour_at(ms(99)), Behaviour::Healthy);
        assert_eq!(t.behaviour_at(ms(100)), Behaviour::Refused);
        assert_eq!(t.behaviour_at(ms(299)), Behaviour::Refused);
        assert_eq!(t.behaviour_at(ms(300)), Behaviour::Healthy);
        assert_eq!(t.next_change_after(ms(0)), Some(ms(100)));
        assert_eq!(t.next_change_after(ms(150)), Some(ms(300)));
        assert_eq!(t.next_change_after(ms(300)), None);
        assert_eq!(t.outage_windows(ms(1000)), vec![(ms(100), ms(300))]);
    }

    #[test]
    fn flapping_follows_period_and_duty_cycle() {
        let down = Behaviour::Error(ErrorKind::Unavailable);
        let t = Timeline::healthy().flapping_at(ms(1000), ms(400), 0.25, down);
        assert_eq!(t.behaviour_at(ms(999)), Behaviour::Healthy);
        assert_eq!(t.behaviour_at(ms(1000)), down);
        assert_eq!(t.behaviour_at(ms(1099)), down);
        assert_eq!(t.behaviour_at(ms(1100)), Behaviour::Healthy);
        assert_eq!(t.behaviour_at(ms(1399)), Behaviour::Healthy);
        assert_eq!(t.behaviour_at(ms(1400)), down);
        assert_eq!(t.next_change_after(ms(1050)), Some(ms(1100)));
        assert_eq!(t.next_change_after(ms(1100)), Some(ms(1400)));
        assert_eq!(
            t.outage_windows(ms(2000)),
            vec![
                (ms(1000), ms(1100)),
                (ms(1400), ms(1500)),
                (ms(1800), ms(1900))
            ]
        );
    }

    #[test]
    fn a_full_duty_cycle_is_one_window() {
        let t = Timeline::healthy().flapping_at(ms(0), ms(100), 1.0, Behaviour::Refused);
        assert_eq!(t.outage_windows(ms(450)), vec![(ms(0), ms(450))]);
    }

    #[test]
    fn a_phase_at_the_same_instant_replaces_the_last() {
        let t = Timeline::healthy().then_at(Duration::ZERO, Behaviour::Refused);
        assert_eq!(t.phases().len(), 1);
        assert_eq!(t.behaviour_at(ms(5)), Behaviour::Refused);
    }

    #[test]
    fn sequence_fails_n_times_then_succeeds() {
        let s = Schedule::fail_then_succeed(2, Behaviour::Error(ErrorKind::Server));
        assert_eq!(
            s.behaviour_for(0, ms(0)),
            Behaviour::Error(ErrorKind::Server)
        );
        assert_eq!(
            s.behaviour_for(1, ms(0)),
            Behaviour::Error(ErrorKind::Server)
        );
        assert_eq!(s.behaviour_for(2, ms(0)), Behaviour::Healthy);
        assert!(s.validate().is_ok());
        assert!(
            Schedule::fail_then_succeed(1, Behaviour::Refused)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn zero_period_and_disorder_are_rejected() {
        let zero = Timeline::healthy().flapping_at(ms(0), Duration::ZERO, 0.5, Behaviour::Refused);
        assert!(zero.validate().is_err());
        let disordered = Timeline::healthy()
            .then_at(ms(200), Behaviour::Refused)
            .then_at(ms(100), Behaviour::Healthy);
        assert!(disordered.validate().is_err());
    }
}
