//! `[limits]`: rate limits on callers. (A model's provider quota, `rpm` /
//! `tpm`, is read with the model.)

use backstop_core::RateQuota;

use super::Builder;
use crate::problem::KeyPath;
use crate::schema::LimitsSection;

impl Builder<'_> {
    /// `[limits] per_caller`, checked: `None` when unset or after a problem.
    pub(super) fn limits(&mut self) -> Option<RateQuota> {
        let path = KeyPath::root().key("limits");
        let section = match self.section("limits") {
            Some(value) => self.decode::<LimitsSection>(&path, value)?.value,
            None => return None,
        };
        let per_caller = section.per_caller?;
        let at = path.key("per_caller");
        let quota = RateQuota {
            rpm: self.per_minute(&at.key("rpm"), per_caller.rpm),
            tpm: self.per_minute(&at.key("tpm"), per_caller.tpm),
        };
        if per_caller.rpm.is_none() && per_caller.tpm.is_none() {
            self.warn(
                &at,
                "sets no limit: add rpm and/or tpm, or remove per_caller",
            );
        }
        (!quota.is_unlimited()).then_some(quota)
    }
}
