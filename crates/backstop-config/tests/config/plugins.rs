//! `[[plugins]]`: a dynamic library's types become usable by name, exactly
//! like compiled-in ones.

use std::path::PathBuf;
use std::sync::OnceLock;

use backstop_core::{ChatRequest, RequestContext};
use backstop_plugin::testing::{Profile, build_plugins};
use figment::Jail;

use backstop_config::{ConfigFile, Options, Registry};

use crate::{load, problems};

/// The example provider plugin (`echo`) and the round-robin selector
/// plugin (`round_robin`), built once per test binary.
fn libraries() -> &'static (PathBuf, PathBuf) {
    static LIBRARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    LIBRARIES.get_or_init(|| {
        let paths = build_plugins(
            &["backstop-plugin-example", "backstop-plugin-round-robin"],
            Profile::Dev,
        )
        .expect("the plugins build");
        let [echo, round_robin] = <[PathBuf; 2]>::try_from(paths).expect("two libraries");
        (echo, round_robin)
    })
}

fn config(echo: &std::path::Path, round_robin: &std::path::Path) -> String {
    format!(
        r#"
[[plugins]]
path = {echo:?}

[[plugins]]
path = {round_robin:?}

[providers.echo]
type = "echo"
reply = "hello from a plugin"

[providers.rules]
type = "template"

[models.parrot]
provider = "echo"

[scenarios.chat]
chain = ["parrot", "rules"]
selector = {{ type = "round_robin" }}
"#
    )
}

#[tokio::test]
async fn plugin_types_serve_requests_by_name() {
    let (echo, round_robin) = libraries();
    let mut resolved = None;
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", &config(echo, round_robin))?;
        resolved = Some(load("backstop.toml").map_err(|p| p.to_string())?);
        Ok(())
    });
    let resolved = resolved.expect("the jail ran");
    let chat = resolved.router.route("chat").expect("chat");
    assert_eq!(chat.strategies.selector.name(), "round_robin");

    let answer = resolved
        .router
        .complete(ChatRequest::user("parrot", "hi"), RequestContext::default())
        .await
        .expect("the plugin answers");
    assert_eq!(answer.response.text(), "hello from a plugin");

    let report = resolved.report.to_string();
    assert!(report.contains(" echo (plugin "), "{report}");
    assert!(report.contains(r#": provider "echo""#), "{report}");
    assert!(report.contains(r#": selector "round_robin""#), "{report}");
}

#[test]
fn plugin_problems_name_the_entry() {
    let (echo, _) = libraries();
    Jail::expect_with(|jail| {
        jail.create_file(
            "backstop.toml",
            &format!(
                r#"
[[plugins]]
path = "missing/libnothing.so"

[[plugins]]
path = {echo:?}

[[plugins]]
path = {echo:?}

[[plugins]]
pth = "x"

[providers.echo]
type = "echo"
replay = "typo"

[models.parrot]
provider = "echo"
"#
            ),
        )?;
        let found = problems("backstop.toml");
        assert_eq!(found.len(), 5, "{found:#?}");
        // A relative path is resolved against the working directory, and
        // the error says where that led.
        let resolved = jail.directory().join("missing/libnothing.so");
        assert_eq!(
            found[0],
            format!(
                "backstop.toml: plugins[0].path: plugin library `missing/libnothing.so` does not exist (relative to the working directory: `{}`)",
                resolved.display()
            )
        );
        assert_eq!(
            found[1],
            format!(
                "backstop.toml: plugins[2].path: plugin {echo:?} is already loaded by plugins[1]"
            )
        );
        assert_eq!(
            found[2],
            r#"backstop.toml: plugins[3].pth: unknown key "pth" (did you mean "path"?); expected one of "path""#
        );
        assert_eq!(
            found[3],
            r#"backstop.toml: plugins[3]: missing required key "path""#
        );
        assert_eq!(
            found[4],
            r#"backstop.toml: providers.echo.replay: echo: unknown key "replay" (did you mean "reply"?); expected one of "reply", "latency_ms", "chunk_delay_ms""#
        );
        Ok(())
    });
}

#[test]
fn a_reload_registers_plugin_types_from_the_libraries_already_open() {
    let (echo, round_robin) = libraries();
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", &config(echo, round_robin))?;
        let file = ConfigFile::new("backstop.toml", Registry::builtin(), Options::default());
        let first = file.load().map_err(|p| p.to_string())?;
        assert_eq!(file.opened_plugins().len(), 2);

        let second = file.reload(&first.handover).map_err(|p| p.to_string())?;
        let chat = second.router.route("chat").expect("chat");
        assert_eq!(chat.strategies.selector.name(), "round_robin");
        let carried = second.handover.carried();
        assert!(
            carried.kept.iter().any(|k| k == "selector round_robin #2"),
            "{carried:?}"
        );
        assert!(
            carried.kept.iter().any(|k| k == "provider echo"),
            "{carried:?}"
        );

        // Dropped from [[plugins]], its types are unknown to the reload...
        let without =
            config(echo, round_robin).replacen(&format!("[[plugins]]\npath = {echo:?}\n"), "", 1);
        jail.create_file("backstop.toml", &without)?;
        let refused = file
            .reload(&second.handover)
            .expect_err("echo is not registered")
            .to_string();
        assert!(
            refused.contains(r#"unknown provider type "echo""#),
            "{refused}"
        );
        // ...and named again, they come from the library already open.
        jail.create_file("backstop.toml", &config(echo, round_robin))?;
        file.reload(&second.handover).map_err(|p| p.to_string())?;
        let opened = file.opened_plugins();
        assert_eq!(opened.len(), 2, "no library opened twice: {opened:?}");
        Ok(())
    });
}
