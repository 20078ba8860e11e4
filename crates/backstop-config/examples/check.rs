//! `backstop check` without the gateway: loads, validates and builds a
//! configuration, then prints the resolved setup (exit 0) or every problem
//! (exit 1).
//!
//! ```sh
//! cargo run -p backstop-config --example check -- examples/backstop.toml
//! ```

use std::io::Write;
use std::process::ExitCode;

use backstop_config::Registry;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        let _ = writeln!(std::io::stderr(), "usage: check CONFIG_FILE");
        return ExitCode::from(2);
    };
    match backstop_config::check(&path, Registry::builtin()) {
        Ok(report) => {
            let _ = writeln!(std::io::stdout(), "{report}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            let _ = writeln!(std::io::stderr(), "{problems}");
            ExitCode::FAILURE
        }
    }
}
