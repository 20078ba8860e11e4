//! # backstop-plugin-round-robin
//!
//! A strategy plugin: [`RoundRobin`] (`type = "round_robin"`), a selector
//! that spreads requests over a chain's models by weight. Built as a
//! `cdylib` it proves strategies load at run time like providers; linked as
//! a crate (without the default `dynamic` feature) it is the same selector
//! compiled in.

mod round_robin;

pub use round_robin::{RoundRobin, RoundRobinConfig};

#[cfg(feature = "dynamic")]
backstop_plugin::export_plugin! {
    name: "round-robin",
    selector "round_robin" => RoundRobin,
}
