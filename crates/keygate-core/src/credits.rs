//! Usage credits as written in plans and overrides:
//! `{remaining = 1000, refill = {amount = 1000, every = "30d"}}`.
//!
//! A key's credits are a balance that each admitted request spends its cost
//! from, decided in the same atomic decision as its rate limits (a balance
//! [`Rule`], crates/keygate-core/src/ratelimit.rs). The balance starts at
//! `remaining` when the credits were set (the key's creation, or the last
//! time an operator set them) and, with a refill, is set to `amount` at
//! every `every` after that: what is left does not roll over
//! (docs/decisions.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{format_duration, parse_duration};
use crate::limits::MAX_REQUESTS;
use crate::ratelimit::Rule;

/// The shortest refill period, as for a limit's window.
pub const MIN_REFILL: Duration = Duration::from_secs(1);

/// Credits as people write them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditSpec {
    /// The balance when the credits are set.
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<RefillSpec>,
}

/// How often, and to what, the balance is set back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefillSpec {
    pub amount: u64,
    /// A duration such as `"30d"`, at least a second.
    pub every: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CreditError {
    #[error("`remaining` must be at most 9223372036854775807")]
    TooManyRemaining,
    #[error("`refill.amount` must be 1 to 9223372036854775807")]
    RefillAmount,
    #[error("`refill.every`: {0}")]
    Every(#[from] crate::duration::DurationError),
    #[error("`refill.every` must be at least 1s")]
    EveryTooShort,
}

impl CreditSpec {
    /// Validates the spec and normalises its period (`720h` -> `30d`).
    pub fn validate(&self) -> Result<CreditSpec, CreditError> {
        if self.remaining > MAX_REQUESTS {
            return Err(CreditError::TooManyRemaining);
        }
        let refill = match &self.refill {
            None => None,
            Some(refill) => {
                if refill.amount == 0 || refill.amount > MAX_REQUESTS {
                    return Err(CreditError::RefillAmount);
                }
                let every = parse_duration(&refill.every)?;
                if every < MIN_REFILL {
                    return Err(CreditError::EveryTooShort);
                }
                Some(RefillSpec {
                    amount: refill.amount,
                    every: format_duration(every),
                })
            }
        };
        Ok(CreditSpec {
            remaining: self.remaining,
            refill,
        })
    }

    /// The refill period in milliseconds; `u64::MAX` when it never refills.
    fn period_ms(&self) -> u64 {
        self.refill
            .as_ref()
            .and_then(|refill| parse_duration(&refill.every).ok())
            .map_or(u64::MAX, |every| u64::try_from(every.as_millis()).unwrap_or(u64::MAX))
    }

    /// The spec in a counter's name: credits that change start a new count.
    pub fn tag(&self) -> String {
        match &self.refill {
            None => self.remaining.to_string(),
            Some(refill) => format!("{}+{}/{}", self.remaining, refill.amount, refill.every),
        }
    }

    /// The balance as a limit, for credits set at `origin_ms`.
    pub fn rule(&self, origin_ms: u64) -> Rule {
        let refill = self.refill.as_ref().map_or(0, |refill| refill.amount);
        Rule::balance(self.remaining, origin_ms, refill, self.period_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{decide, Counter};

    const DAY: u64 = 86_400_000;

    fn spec(remaining: u64, refill: Option<(u64, &str)>) -> CreditSpec {
        CreditSpec {
            remaining,
            refill: refill.map(|(amount, every)| RefillSpec {
                amount,
                every: every.into(),
            }),
        }
    }

    #[test]
    fn validates_and_names_the_field() {
        assert_eq!(
            spec(5, Some((10, "720h"))).validate().unwrap().refill.unwrap().every,
            "30d"
        );
        assert_eq!(
            spec(0, None).validate().unwrap(),
            spec(0, None),
            "an empty balance is allowed"
        );
        assert_eq!(
            spec(MAX_REQUESTS + 1, None).validate(),
            Err(CreditError::TooManyRemaining)
        );
        assert_eq!(spec(1, Some((0, "1d"))).validate(), Err(CreditError::RefillAmount));
        assert_eq!(spec(1, Some((1, "500ms"))).validate(), Err(CreditError::EveryTooShort));
        assert!(matches!(
            spec(1, Some((1, "soon"))).validate(),
            Err(CreditError::Every(_))
        ));
        let unknown = serde_json::from_str::<CreditSpec>(r#"{"remaining": 1, "refil": {}}"#);
        assert!(unknown.unwrap_err().to_string().contains("refil"));
    }

    #[test]
    fn spends_the_balance_then_refills_it_to_the_amount() {
        let origin = 1_700_000_000_000;
        let rule = spec(3, Some((5, "1d"))).rule(origin);
        let mut counter = Counter::default();
        let mut spend = |at: u64, cost: u64| decide(&mut [(rule, &mut counter)], at, cost, true);
        assert!(spend(origin, 2).allowed);
        let last = spend(origin + 1, 1);
        assert!(last.allowed);
        assert_eq!(last.balance().unwrap().remaining, 0);
        let refused = spend(origin + 2, 1);
        assert!(!refused.allowed && refused.out_of_credits());
        assert_eq!(refused.retry_at_ms, Some(origin + DAY), "the next refill");
        assert_eq!(rule.refills_at(origin + 2), Some(origin + DAY));
        assert!(!spend(origin + DAY - 1, 1).allowed);
        // Refilled to the amount, not added to what was left.
        let refilled = spend(origin + DAY, 5);
        assert!(refilled.allowed);
        assert_eq!(refilled.balance().unwrap().remaining, 0);
        assert!(!spend(origin + DAY + 1, 1).allowed);
        assert!(spend(origin + 2 * DAY, 1).allowed);
    }

    #[test]
    fn a_balance_without_refill_never_comes_back() {
        let rule = spec(1, None).rule(0);
        let mut counter = Counter::default();
        assert!(decide(&mut [(rule, &mut counter)], 10, 1, true).allowed);
        let refused = decide(&mut [(rule, &mut counter)], 20 * DAY, 1, true);
        assert!(refused.out_of_credits());
        assert_eq!(refused.retry_at_ms, Some(u64::MAX));
        assert_eq!(rule.refills_at(20 * DAY), None);
    }

    #[test]
    fn a_cost_larger_than_any_refill_is_never_admitted() {
        let rule = spec(10, Some((4, "1d"))).rule(0);
        let mut counter = Counter::default();
        assert!(decide(&mut [(rule, &mut counter)], 10, 8, true).allowed);
        let refused = decide(&mut [(rule, &mut counter)], 11, 5, true);
        assert!(refused.out_of_credits());
        assert_eq!(refused.retry_at_ms, Some(u64::MAX), "a refill of 4 never fits 5");
    }

    #[test]
    fn a_saved_spend_merges_into_a_counter_and_a_past_period_does_not() {
        use crate::ratelimit::Bucket;
        let rule = spec(10, Some((10, "1d"))).rule(0);
        let mut counter = Counter::default();
        let saved = |index, count| Bucket {
            index,
            count,
            newest_ms: index * DAY + 5,
        };
        counter.merge(&rule, saved(1, 6));
        assert_eq!(counter.live(&rule, DAY + 10), 6);
        assert!(decide(&mut [(rule, &mut counter)], DAY + 11, 1, true).allowed);
        counter.merge(&rule, saved(1, 3));
        assert_eq!(counter.live(&rule, DAY + 12), 7, "the larger count of the period stays");
        counter.merge(&rule, saved(0, 9));
        assert_eq!(counter.live(&rule, DAY + 12), 7, "a past period is not counted");
        assert_eq!(counter.live(&rule, 2 * DAY), 0, "the next period starts empty");
    }

    proptest::proptest! {
        /// Whatever the requests, the spend in each period never exceeds what
        /// that period allows, and a refusal is only ever for want of room.
        #[test]
        fn never_spends_more_than_a_period_allows(
            first in 0u64..20,
            refill in 1u64..20,
            steps in proptest::collection::vec((0u64..3 * 3_600_000, 1u64..6), 1..200),
        ) {
            let origin = 1_000_000;
            let period = 3_600_000;
            let rule = spec(first, Some((refill, "1h"))).rule(origin);
            let mut counter = Counter::default();
            let mut spent = std::collections::BTreeMap::<u64, u64>::new();
            let mut now = origin;
            for (advance, cost) in steps {
                now += advance / 7;
                let period_index = (now - origin) / period;
                let allowance = if period_index == 0 { first } else { refill };
                let used = spent.get(&period_index).copied().unwrap_or(0);
                let decision = decide(&mut [(rule, &mut counter)], now, cost, true);
                proptest::prop_assert_eq!(decision.allowed, used + cost <= allowance);
                if decision.allowed {
                    *spent.entry(period_index).or_default() += cost;
                }
                let left = allowance - spent.get(&period_index).copied().unwrap_or(0);
                proptest::prop_assert_eq!(decision.balance().unwrap().remaining, left);
            }
        }
    }
}
