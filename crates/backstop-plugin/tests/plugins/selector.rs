//! Selector plugins: a dynamic round robin orders the Router's chain, its
//! config and model table reach it, and a selector that panics or breaks
//! the candidate list leaves the configured order.

use std::sync::Arc;

use backstop_core::{Candidate, ModelSpec, RequestContext, RequestFacts, Selector};
use backstop_plugin::host::PluginError;
use serde_json::{Value, json};

use super::{echo, libraries, load, request, router};

fn models(ids: &[&str]) -> Vec<ModelSpec> {
    ids.iter().map(|id| ModelSpec::new(*id, *id)).collect()
}

fn selector(
    path: &std::path::PathBuf,
    type_name: &str,
    config: Value,
    models: &[ModelSpec],
) -> Arc<dyn Selector> {
    load(path)
        .selector_factory(type_name)
        .unwrap()
        .create(&config, models)
        .unwrap()
}

fn round_robin(config: Value, models: &[ModelSpec]) -> Arc<dyn Selector> {
    selector(&libraries().round_robin, "round_robin", config, models)
}

fn ordered(selector: &dyn Selector, models: &[ModelSpec]) -> Vec<String> {
    let facts = RequestFacts {
        scenario: "chat",
        caller: Some("team-a"),
        prompt_tokens: 12,
        max_tokens: Some(100),
        stream: false,
        tools: false,
    };
    let mut candidates: Vec<Candidate<'_>> = models
        .iter()
        .enumerate()
        .map(|(index, spec)| Candidate {
            index,
            spec,
            position: index,
        })
        .collect();
    selector.order(&facts, &mut candidates);
    candidates.iter().map(|c| c.spec.id.clone()).collect()
}

#[tokio::test]
async fn a_dynamic_round_robin_spreads_the_routers_requests() {
    let table = models(&["a", "b", "c"]);
    let selector = round_robin(json!({}), &table);
    assert_eq!(selector.name(), "round_robin");
    let (router, _) = router(
        vec![
            ("a", echo("from a")),
            ("b", echo("from b")),
            ("c", echo("from c")),
        ],
        Some(selector),
    );
    let mut served = Vec::new();
    for _ in 0..6 {
        let result = router
            .complete(request("hi"), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(result.outcome.fallback_level, 0);
        served.push(result.response.text());
    }
    assert_eq!(
        served,
        ["from a", "from b", "from c", "from a", "from b", "from c"]
    );
}

#[test]
fn weights_and_the_model_table_reach_the_plugin() {
    let table = models(&["a", "b", "c"]);
    let selector = round_robin(json!({"weights": {"a": 0, "b": 2, "c": 1}}), &table);
    let leads: Vec<String> = (0..6)
        .map(|_| ordered(&*selector, &table)[0].clone())
        .collect();
    assert_eq!(leads, ["b", "b", "c", "b", "b", "c"]);
    assert_eq!(
        ordered(&*selector, &table),
        ["b", "c", "a"],
        "the rest follow in chain order"
    );
}

#[test]
fn a_selector_that_refuses_its_config_is_a_clear_error() {
    let error = load(&libraries().round_robin)
        .selector_factory("round_robin")
        .unwrap()
        .create(&json!({"weights": {"gpt-5": 1}}), &models(&["a", "b"]))
        .unwrap_err();
    assert!(matches!(error, PluginError::New { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "plugin `round-robin` could not create selector `round_robin`: \
         weights names model `gpt-5`, which is not in the model table (a, b)"
    );
}

#[test]
fn a_panicking_selector_leaves_the_configured_order() {
    let table = models(&["a", "b", "c"]);
    let selector = selector(&libraries().panics, "panics", json!({}), &table);
    assert_eq!(ordered(&*selector, &table), ["a", "b", "c"]);
    assert_eq!(
        ordered(&*selector, &table),
        ["a", "b", "c"],
        "and keeps working"
    );
}

#[test]
fn a_selector_that_breaks_the_candidates_is_ignored() {
    let table = models(&["a", "b", "c"]);
    let selector = selector(&libraries().errors, "duplicates", json!({}), &table);
    assert_eq!(ordered(&*selector, &table), ["a", "b", "c"]);
}

#[tokio::test]
async fn the_router_serves_through_a_panicking_selector() {
    let table = models(&["a", "b"]);
    let selector = selector(&libraries().panics, "panics", json!({}), &table);
    let (router, _) = router(
        vec![("a", echo("from a")), ("b", echo("from b"))],
        Some(selector),
    );
    let result = router
        .complete(request("hi"), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(result.response.text(), "from a");
}
