//! Members declared failed, as the call streams they opened to this node
//! learn it: a caller that froze (or lost its network) sends no reset, and
//! the handlers of its calls would run on, holding their places, until
//! their budgets ran out (up to 5 minutes). Its streams are cut instead,
//! as a caller's streams to a failed host are.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Names the membership declared failed, each with the count of failures
/// declared up to it.
#[derive(Debug)]
pub(crate) struct FailedCallers {
    count: watch::Sender<u64>,
    names: Mutex<HashMap<String, u64>>,
}

/// Names kept at most: a stream only asks about failures declared since it
/// began, so the oldest are dropped first.
const KEPT: usize = 4096;

impl Default for FailedCallers {
    fn default() -> Self {
        FailedCallers {
            count: watch::Sender::new(0),
            names: Mutex::new(HashMap::new()),
        }
    }
}

impl FailedCallers {
    /// `name` was declared failed.
    pub(crate) fn fail(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let count = *self.count.borrow() + 1;
        if names.len() >= KEPT && !names.contains_key(name) {
            let oldest = names.iter().min_by_key(|(_, at)| **at).map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                names.remove(&oldest);
            }
        }
        names.insert(name.to_string(), count);
        self.count.send_replace(count);
    }

    /// Changes each time a member is declared failed.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }

    /// Whether `name` was declared failed after the count `since`.
    pub(crate) fn failed_since(&self, name: &str, since: u64) -> bool {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.get(name).is_some_and(|at| *at > since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_hears_only_of_failures_after_it_began() {
        let failed = FailedCallers::default();
        failed.fail("a");
        let mut watch = failed.watch();
        let since = *watch.borrow_and_update();
        assert!(!failed.failed_since("a", since));
        failed.fail("b");
        assert!(watch.has_changed().unwrap());
        assert!(failed.failed_since("b", since));
        assert!(!failed.failed_since("a", since));
        failed.fail("a");
        assert!(failed.failed_since("a", since));
    }
}
