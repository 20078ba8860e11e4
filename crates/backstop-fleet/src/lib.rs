//! # backstop-fleet
//!
//! Fleet state on Redis (or Valkey, which speaks the same protocol): what
//! several gateway replicas behind one load balancer share so that they
//! behave as one gateway. It implements core's
//! [`FleetState`](backstop_core::FleetState); strategies never see Redis.
//!
//! What is shared, and how:
//!
//! 1. **Circuit transitions.** A replica that opens, cools down, disables or
//!    closes a model runs one Lua script that keeps the state as a key with
//!    the state's remaining time as its TTL and publishes it on a pub/sub
//!    channel, atomically. Every other replica hears it on its subscription
//!    and hands it to its health policies
//!    ([`CircuitListener::adopt`](backstop_core::CircuitListener::adopt)).
//!    An open break or a cooldown only ever lengthens: a shorter one than
//!    the key's is neither stored nor published. A replica that starts or
//!    reconnects reads every model's key (reconcile) before it listens.
//! 2. **One prober per model per fleet**: a lease key per model
//!    (`SET NX PX`, renewed by its holder), so only one replica probes it.
//! 3. **Budgets**: a reservation holds its estimate on all of a request's
//!    accounts in one Lua script (all or none, against each cap); a settle
//!    replaces it by the actual cost in another, queued like publications.
//! 4. **Rate limits**: an admission counts the call on the model's quota and
//!    the caller's limit in one Lua script, all or none, in one-second
//!    slots of a sliding minute on the store's clock (`TIME`); a settle
//!    corrects the tokens from the estimate to the usage, queued.
//!
//! The hot path never waits on the store except for a budget reservation
//! or a rate-limit admission (one round trip each, bounded by
//! `timeout_ms`): publications and settlements are queued and written by a
//! background task, and adoption happens on the
//! subscription's task. Every store call is bounded by `timeout_ms`; a call that fails or
//! times out marks the store down (`backstop_state_store_up 0`, logged once),
//! and each replica carries on with its own state. A heartbeat notices when
//! the store answers again, and the subscription reconnects, resubscribes and
//! reconciles.
//!
//! Keys carry the model in a hash tag (`backstop:{gpt-4o}:circuit`), so
//! every script touches one slot and runs on Redis Cluster too.
//!
//! The URL is a secret (it may hold a password): it is never printed, not
//! in errors, not in `Debug`.

mod keys;
mod settings;
mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use settings::{RedisSettings, SettingsError};
pub use store::{FleetError, FleetHandle, RedisState, ping};
