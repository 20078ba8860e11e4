//! Rate limits: requests and tokens per minute, for a model's provider
//! quota and for each caller.
//!
//! - [`sliding_minute`]: counts over a sliding minute of one-second slots,
//!   on this replica's clock, and through the fleet's store when a fleet
//!   shares rate limits (`[state] backend = "redis"`).
//!
//! Unlike the other seams, rate limits are not chosen per scenario: a
//! model's quota is the provider's, whatever route calls it, and a
//! caller's limit is the caller's. The Router holds one
//! [`RateLimiter`](backstop_core::RateLimiter), built from the models'
//! `rpm` / `tpm` and `[limits] per_caller`.

pub mod sliding_minute;

pub use sliding_minute::SlidingMinute;
