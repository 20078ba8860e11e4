//! Errors of building a strategy from its config table.
//!
//! Every built-in strategy is built from a table (its config without the
//! `type` key) by a constructor that first deserializes it with serde (which
//! refuses unknown and misspelled keys and names them) and then checks the
//! values (ratios above 0 and at most 1, non-zero windows, non-negative
//! costs). The config crate prefixes these messages with the key path of
//! the table: `strategies.health: unknown field `failur_ratio`, expected one
//! of ...`.

use serde::Deserialize;

/// A strategy could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// The table does not deserialize: an unknown or misspelled key, a value
    /// of the wrong type, a missing required key. serde's message names the
    /// key (`unknown field `failur_ratio`, expected one of ...`).
    #[error("{0}")]
    Config(#[from] serde_json::Error),
    /// A key's value is out of range.
    #[error("`{field}` {problem}")]
    Invalid {
        /// The key, relative to the strategy's table (`failure_ratio`,
        /// `weights.gpt-4o`).
        field: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// No strategy of that name exists for the seam.
    #[error("unknown {seam} strategy `{name}`, expected one of {}", expected.join(", "))]
    UnknownType {
        /// The seam: `selector`, `health`, `budget`, `result`, `monitor`.
        seam: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist.
        expected: Vec<&'static str>,
    },
}

impl StrategyError {
    /// An out-of-range value of `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        StrategyError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The offending key when the error names one structurally (range
    /// errors); serde's own messages name theirs in the text.
    pub fn field(&self) -> Option<&str> {
        match self {
            StrategyError::Invalid { field, .. } => Some(field),
            StrategyError::Config(_) | StrategyError::UnknownType { .. } => None,
        }
    }
}

/// Deserializes a strategy's table. `null` (a strategy given only by its
/// `type`) reads as an empty table, so every default applies.
pub fn parse<T>(value: &serde_json::Value) -> Result<T, StrategyError>
where
    T: for<'de> Deserialize<'de>,
{
    if value.is_null() {
        return Ok(T::deserialize(&serde_json::Value::Object(
            serde_json::Map::new(),
        ))?);
    }
    Ok(T::deserialize(value)?)
}

/// Checks that a ratio lies within (0, 1]: above 0 and at most 1. Every
/// window meets a ratio of 0, so what it guards would trip on calls that
/// all succeeded.
pub(crate) fn check_ratio(field: &str, value: f64) -> Result<(), StrategyError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else if value <= 0.0 {
        Err(StrategyError::invalid(
            field,
            format!(
                "must be greater than 0 (got {value}): every window meets a ratio of 0, so it would trip even when every call succeeds"
            ),
        ))
    } else {
        Err(StrategyError::invalid(
            field,
            format!("must be within 0..=1 (got {value})"),
        ))
    }
}

/// Checks that a duration or count is not zero.
pub(crate) fn check_non_zero(field: &str, value: u64) -> Result<(), StrategyError> {
    if value == 0 {
        Err(StrategyError::invalid(field, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// Checks that a cost is a finite, non-negative number.
pub(crate) fn check_cost(field: &str, value: f64) -> Result<(), StrategyError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(StrategyError::invalid(
            field,
            format!("must be a non-negative number of USD (got {value})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Knobs {
        #[serde(default)]
        failure_ratio: f64,
    }

    #[test]
    fn serde_message_names_the_unknown_field_and_the_expected_ones() {
        let err = parse::<Knobs>(&serde_json::json!({"failur_ratio": 0.5})).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("unknown field `failur_ratio`"),
            "{message}"
        );
        assert!(message.contains("`failure_ratio`"), "{message}");
    }

    #[test]
    fn null_reads_as_an_empty_table() {
        let knobs = parse::<Knobs>(&serde_json::Value::Null).unwrap();
        assert_eq!(knobs.failure_ratio, 0.0);
    }

    #[test]
    fn range_errors_name_their_field() {
        let err = check_ratio("failure_ratio", 1.5).unwrap_err();
        assert_eq!(err.field(), Some("failure_ratio"));
        assert_eq!(
            err.to_string(),
            "`failure_ratio` must be within 0..=1 (got 1.5)"
        );
        assert!(check_ratio("r", f64::NAN).is_err());
        assert!(check_ratio("r", 1.0).is_ok());
        assert!(check_ratio("r", f64::MIN_POSITIVE).is_ok());
        assert!(check_cost("max_cost", -0.01).is_err());
        assert!(check_cost("max_cost", f64::INFINITY).is_err());
        assert!(check_non_zero("window_ms", 0).is_err());
    }
}
