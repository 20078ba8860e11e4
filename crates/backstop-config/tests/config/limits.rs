//! Rate limits: a model's `rpm` / `tpm` and `[limits] per_caller`, checked
//! key by key and handed to the Router.

use figment::Jail;

use crate::{load, problems};

const BASE: &str = r#"
[providers.rules]
type = "template"

[providers.sim]
type = "simulated"

[models.primary]
provider = "sim"
"#;

fn problems_with(jail: &mut Jail, extra: &str) -> figment::Result<Vec<String>> {
    jail.create_file("c.toml", &format!("{BASE}{extra}\n"))?;
    Ok(problems("c.toml"))
}

#[test]
fn without_limits_the_router_has_no_rate_limiter() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let resolved = load("c.toml").expect("loads");
        assert!(resolved.router.rate_limiter().is_none());
        let report = resolved.report.to_string();
        assert!(report.contains("\nlimits\n  callers: none\n"), "{report}");
        assert!(!report.contains("quota"), "{report}");
        Ok(())
    });
}

#[test]
fn a_model_quota_and_a_caller_limit_reach_the_router() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            &format!(
                "{BASE}rpm = 500\ntpm = 200000\n\n[limits]\nper_caller = {{ rpm = 60, tpm = 100000 }}\n"
            ),
        )?;
        let resolved = load("c.toml").expect("loads");
        let spec = &resolved.router.models()[0];
        assert_eq!((spec.quota.rpm, spec.quota.tpm), (Some(500), Some(200_000)));
        let limiter = resolved.router.rate_limiter().expect("limits set");
        let snapshot = limiter.snapshot();
        assert_eq!(snapshot.len(), 1, "callers appear once they call");
        assert_eq!(snapshot[0].name, "primary");
        assert_eq!(snapshot[0].rpm, Some(500));
        let report = resolved.report.to_string();
        assert!(report.contains(", quota rpm 500, tpm 200000\n"), "{report}");
        assert!(
            report.contains("\nlimits\n  each caller rpm 60, tpm 100000\n"),
            "{report}"
        );
        Ok(())
    });
}

#[test]
fn every_bad_limit_is_named_at_its_key() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        assert_eq!(
            problems_with(jail, "rpm = 0\ntpm = -5")?,
            [
                "c.toml: models.primary.rpm: must be a whole number greater than 0 (got 0); remove the key for no limit",
                "c.toml: models.primary.tpm: must be a whole number greater than 0 (got -5); remove the key for no limit",
            ]
        );
        let wrong_type = problems_with(jail, "rpm = \"fast\"")?;
        assert_eq!(wrong_type.len(), 1, "{wrong_type:?}");
        assert!(
            wrong_type[0].starts_with("c.toml: models.primary.rpm: "),
            "{wrong_type:?}"
        );
        assert_eq!(
            problems_with(jail, "\n[limits]\nper_caller = { rpm = -1, tpm = 0 }")?,
            [
                "c.toml: limits.per_caller.rpm: must be a whole number greater than 0 (got -1); remove the key for no limit",
                "c.toml: limits.per_caller.tpm: must be a whole number greater than 0 (got 0); remove the key for no limit",
            ]
        );
        let unknown = problems_with(jail, "\n[limits]\nper_caller = { rps = 3 }")?;
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(
            unknown[0].starts_with("c.toml: limits.per_caller.rps: "),
            "{unknown:?}"
        );
        let unknown = problems_with(jail, "\n[limits]\nper_model = { rpm = 3 }")?;
        assert!(
            unknown[0].starts_with("c.toml: limits.per_model: "),
            "{unknown:?}"
        );
        Ok(())
    });
}
