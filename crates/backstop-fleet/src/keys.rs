//! Key and channel names, and the text of what they hold.
//!
//! Every key puts the model id in a hash tag so a script's keys share one
//! Redis Cluster slot: `{prefix}:{<model>}:circuit`, `{prefix}:{<model>}:probe`.
//! The circuit key holds `state|explicit|then_half_open` (`open|0|0`), with the
//! state's remaining time as its TTL (none for `disabled`). A message on the
//! channel `{prefix}:circuits` is `replica|state|remaining_ms|explicit|then_half_open|model`,
//! the model last so an id may hold any character.

use std::time::Duration;

use backstop_core::{CircuitState, SharedCircuit};

/// Names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn circuit(&self, model: &str) -> String {
        format!("{}:{{{model}}}:circuit", self.prefix)
    }

    pub fn probe(&self, model: &str) -> String {
        format!("{}:{{{model}}}:probe", self.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}:circuits", self.prefix)
    }

    /// A window of counts the fleet sums: one hash, a field per bucket
    /// and counter (`<bucket>:0`, `<bucket>:1`).
    pub fn counts(&self, name: &str) -> String {
        format!("{}:{{c:{name}}}:counts", self.prefix)
    }

    /// A claim (an alert's firing): held by one replica for a while.
    pub fn claim(&self, name: &str) -> String {
        format!("{}:{{claim:{name}}}", self.prefix)
    }

    /// A rate limit's hash of per-second counts (`model:<id>`,
    /// `caller:<label>`). Every limit shares one hash tag, so a call's
    /// model and caller are counted by one single-slot script.
    pub fn rate(&self, name: &str) -> String {
        format!("{}:{{rl}}:{name}", self.prefix)
    }

    /// A budget account's key in one window; every account of one budget
    /// shares the hash tag, so a reservation is one single-slot script.
    pub fn budget(&self, scope: &str, account: &str, window: u64) -> String {
        format!("{}:{{b:{scope}}}:{account}:{window}", self.prefix)
    }
}

fn state_name(state: CircuitState) -> &'static str {
    state.as_str()
}

fn state_of(name: &str) -> Option<CircuitState> {
    Some(match name {
        "open" => CircuitState::Open,
        "cooling_down" => CircuitState::CoolingDown,
        "disabled" => CircuitState::Disabled,
        "closed" => CircuitState::Closed,
        _ => return None,
    })
}

fn flag(b: bool) -> char {
    if b { '1' } else { '0' }
}

/// The value of a circuit key.
pub(crate) fn circuit_value(c: &SharedCircuit) -> String {
    format!(
        "{}|{}|{}",
        state_name(c.state),
        flag(c.explicit),
        flag(c.then_half_open)
    )
}

/// Reads a circuit key's value and its PTTL (`-1`: no TTL).
pub(crate) fn parse_value(value: &str, pttl_ms: i64) -> Option<SharedCircuit> {
    let mut parts = value.split('|');
    let state = state_of(parts.next()?)?;
    let explicit = parts.next()? == "1";
    let then_half_open = parts.next()? == "1";
    let remaining = match state {
        CircuitState::Open | CircuitState::CoolingDown => {
            // A timed state's key always has a TTL; 0 or less means it is
            // ending or ended.
            if pttl_ms <= 0 {
                return None;
            }
            Some(Duration::from_millis(pttl_ms.unsigned_abs()))
        }
        _ => None,
    };
    Some(SharedCircuit {
        state,
        remaining,
        explicit,
        then_half_open,
    })
}

/// Milliseconds a timed state lasts from now (at least 1: `PX 0` is refused);
/// 0 for untimed states.
pub(crate) fn ttl_ms(c: &SharedCircuit) -> u64 {
    c.remaining.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// The message announcing `c` for `model`, from `replica`.
pub(crate) fn message(replica: u64, model: &str, c: &SharedCircuit) -> String {
    format!(
        "{replica:016x}|{}|{}|{}|{}|{model}",
        state_name(c.state),
        ttl_ms(c),
        flag(c.explicit),
        flag(c.then_half_open)
    )
}

/// A message heard on the channel: who sent it, for which model, what.
pub(crate) fn parse_message(text: &str) -> Option<(u64, &str, SharedCircuit)> {
    let mut parts = text.splitn(6, '|');
    let replica = u64::from_str_radix(parts.next()?, 16).ok()?;
    let state = state_of(parts.next()?)?;
    let ms: u64 = parts.next()?.parse().ok()?;
    let explicit = parts.next()? == "1";
    let then_half_open = parts.next()? == "1";
    let model = parts.next()?;
    let remaining = matches!(state, CircuitState::Open | CircuitState::CoolingDown)
        .then(|| Duration::from_millis(ms));
    Some((
        replica,
        model,
        SharedCircuit {
            state,
            remaining,
            explicit,
            then_half_open,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_put_the_model_in_a_hash_tag() {
        let k = Keys::new("backstop");
        assert_eq!(k.circuit("gpt-4o"), "backstop:{gpt-4o}:circuit");
        assert_eq!(k.probe("gpt-4o"), "backstop:{gpt-4o}:probe");
        assert_eq!(k.channel(), "backstop:circuits");
        assert_eq!(k.counts("alerts"), "backstop:{c:alerts}:counts");
        assert_eq!(
            k.claim("alert:fallbacks"),
            "backstop:{claim:alert:fallbacks}"
        );
        assert_eq!(
            k.budget("rolling", "caller:alice", 7),
            "backstop:{b:rolling}:caller:alice:7"
        );
        assert_eq!(k.rate("model:gpt-4o"), "backstop:{rl}:model:gpt-4o");
    }

    #[test]
    fn messages_round_trip_every_state_and_a_model_with_bars() {
        for c in [
            SharedCircuit::open(Duration::from_millis(5000)),
            SharedCircuit::cooling_down(Duration::from_millis(1200), true, false),
            SharedCircuit::cooling_down(Duration::from_millis(7), false, true),
            SharedCircuit::disabled(),
            SharedCircuit::closed(),
        ] {
            let text = message(42, "odd|model", &c);
            let (replica, model, back) = parse_message(&text).expect("parses");
            assert_eq!((replica, model, back), (42, "odd|model", c), "{text}");
        }
        assert!(parse_message("zz|open|1|0|0|m").is_none());
        assert!(parse_message("01|half_open|1|0|0|m").is_none());
    }

    #[test]
    fn key_values_take_their_remaining_time_from_the_ttl() {
        let c = SharedCircuit::cooling_down(Duration::from_millis(900), true, true);
        let v = circuit_value(&c);
        assert_eq!(v, "cooling_down|1|1");
        assert_eq!(parse_value(&v, 900), Some(c));
        assert_eq!(parse_value(&v, 0), None, "an ending state is not adopted");
        assert_eq!(
            parse_value("disabled|0|0", -1),
            Some(SharedCircuit::disabled())
        );
        assert_eq!(parse_value("bogus|0|0", 5), None);
    }

    #[test]
    fn a_timed_state_never_asks_for_a_zero_ttl() {
        assert_eq!(ttl_ms(&SharedCircuit::open(Duration::ZERO)), 1);
        assert_eq!(ttl_ms(&SharedCircuit::disabled()), 0);
    }
}
