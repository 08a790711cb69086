//! Evaluating a node's policies outside the engine. The engine asks with a
//! [`PolicyRequest`] (its facts and every policy) and takes the answer in
//! [`Engine::handle_policy_results`](crate::engine::Engine::handle_policy_results);
//! the tokio runtime answers on a blocking thread, the simulator and tests
//! answer at once. So the engine never holds its lock over CEL, never starts
//! a thread, and a slow expression never delays the protocol.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::Condition;

/// One policy as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInput {
    /// Policy name.
    pub name: String,
    /// Target tribe.
    pub tribe: String,
    /// CEL source.
    pub when: String,
}

/// What the engine asks: evaluate these policies over these facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest {
    /// Ordinal of the request; an answer to an older one is ignored.
    pub seq: u64,
    /// The node's facts.
    pub facts: BTreeMap<String, String>,
    /// Every live policy, by name.
    pub policies: Vec<PolicyInput>,
}

/// The outcome of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// The node satisfies it.
    Holds,
    /// It does not.
    DoesNotHold,
    /// It could not be evaluated (reported once, counts as not holding).
    Failed {
        /// Why, for people.
        message: String,
        /// Nothing is wrong with the expression (a thread could not start):
        /// the engine asks again at its next change.
        transient: bool,
    },
}

/// The answer to a [`PolicyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResults {
    /// The request's ordinal.
    pub seq: u64,
    /// One outcome per policy of the request, same order.
    pub outcomes: Vec<(PolicyInput, PolicyOutcome)>,
}

/// Compiled policies by source text, kept across requests of one node.
#[derive(Debug, Default)]
pub struct PolicySet {
    compiled: BTreeMap<String, Result<Condition, String>>,
}

impl PolicySet {
    /// An empty cache.
    #[cfg(any(test, feature = "internals"))]
    pub fn new() -> Self {
        PolicySet::default()
    }

    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Compiles what is new (a transient failure is not remembered),
    /// evaluates every policy, and forgets sources no longer asked for.
    pub fn answer(&mut self, request: &PolicyRequest) -> PolicyResults {
        self.answer_unless(request, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`PolicySet::answer`], given up between two policies once `stop` is
    /// set (the node stops: what is answered then goes nowhere).
    pub fn answer_unless(
        &mut self,
        request: &PolicyRequest,
        stop: &std::sync::atomic::AtomicBool,
    ) -> PolicyResults {
        let mut outcomes = Vec::with_capacity(request.policies.len());
        for p in &request.policies {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if !self.compiled.contains_key(&p.when) {
                match Condition::compile(&p.when) {
                    Err(e) if e.is_transient() => {
                        let failed = PolicyOutcome::Failed {
                            message: format!("does not compile: {e}"),
                            transient: true,
                        };
                        outcomes.push((p.clone(), failed));
                        continue;
                    }
                    result => {
                        self.compiled
                            .insert(p.when.clone(), result.map_err(|e| e.to_string()));
                    }
                }
            }
            let outcome = match self.compiled.get(&p.when) {
                // A panic in the evaluator fails this policy only (and the
                // same way every time): the node keeps its other tribes.
                Some(Ok(cond)) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || cond.evaluate(&request.facts),
                )) {
                    Ok(Ok(true)) => PolicyOutcome::Holds,
                    Ok(Ok(false)) => PolicyOutcome::DoesNotHold,
                    Ok(Err(e)) => PolicyOutcome::Failed {
                        message: e.message,
                        transient: false,
                    },
                    Err(_) => PolicyOutcome::Failed {
                        message: "the evaluation panicked".into(),
                        transient: false,
                    },
                },
                Some(Err(e)) => PolicyOutcome::Failed {
                    message: format!("does not compile: {e}"),
                    transient: false,
                },
                None => continue,
            };
            outcomes.push((p.clone(), outcome));
        }
        let live: BTreeSet<&String> = request.policies.iter().map(|p| &p.when).collect();
        self.compiled.retain(|src, _| live.contains(src));
        PolicyResults {
            seq: request.seq,
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seq: u64, whens: &[&str]) -> PolicyRequest {
        PolicyRequest {
            seq,
            facts: BTreeMap::from([("rack".into(), "r1".into())]),
            policies: whens
                .iter()
                .enumerate()
                .map(|(i, w)| PolicyInput {
                    name: format!("p{i}"),
                    tribe: "t".into(),
                    when: (*w).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_answer_given_up_evaluates_nothing_more() {
        let mut set = PolicySet::new();
        let stop = std::sync::atomic::AtomicBool::new(true);
        let got = set.answer_unless(&request(3, &["true", "true"]), &stop);
        assert!(got.outcomes.is_empty());
    }

    #[test]
    fn outcomes_follow_the_request_and_the_cache_follows_the_policies() {
        let mut set = PolicySet::new();
        let got = set.answer(&request(
            7,
            &[
                r#"facts.rack == "r1""#,
                r#"facts.rack == "r2""#,
                "1 +",
                "facts.nope == 1",
            ],
        ));
        assert_eq!(got.seq, 7);
        let kinds: Vec<_> = got.outcomes.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(kinds[0], PolicyOutcome::Holds);
        assert_eq!(kinds[1], PolicyOutcome::DoesNotHold);
        assert!(
            matches!(&kinds[2], PolicyOutcome::Failed { transient: false, message } if message.starts_with("does not compile"))
        );
        assert!(matches!(
            &kinds[3],
            PolicyOutcome::Failed {
                transient: false,
                ..
            }
        ));
        assert_eq!(set.compiled.len(), 4);
        set.answer(&request(8, &["true"]));
        assert_eq!(set.compiled.len(), 1);
    }

    #[test]
    fn a_compile_that_could_not_start_its_thread_is_not_remembered() {
        let mut set = PolicySet::new();
        crate::policy::FAIL_THREAD_START.with(|f| f.set(true));
        let got = set.answer(&request(1, &["true"]));
        crate::policy::FAIL_THREAD_START.with(|f| f.set(false));
        assert!(matches!(
            got.outcomes[0].1,
            PolicyOutcome::Failed {
                transient: true,
                ..
            }
        ));
        assert_eq!(
            set.answer(&request(2, &["true"])).outcomes[0].1,
            PolicyOutcome::Holds
        );
    }
}
