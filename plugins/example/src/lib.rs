//! # backstop-plugin-example
//!
//! The worked example of a Backstop plugin: one provider, [`Echo`]
//! (`type = "echo"`), that answers with canned or echoed text after a
//! configurable latency. Built as a `cdylib` it is loaded at run time
//! (`[[plugins]] path = ".../libbackstop_plugin_example.so"`); linked as a
//! crate (without the default `dynamic` feature) it is the same provider
//! compiled in.

mod echo;

pub use echo::{Echo, EchoConfig};

#[cfg(feature = "dynamic")]
backstop_plugin::export_plugin! {
    name: "example",
    provider "echo" => Echo,
}
