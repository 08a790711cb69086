//! Seeds given by name: looked up by the runtime (the engine never waits
//! on the network), right after the start and again, with a growing pause,
//! whenever the node has no live peer. A name that does not resolve yet (a
//! machine booting before its DNS, a peer its scheduler has not placed)
//! costs a warning and a counter, not the start.
//!
//! Each lookup runs on a thread of its own that nobody waits for: the
//! system resolver cannot be cancelled, and a node must stop (and its
//! runtime shut down) at once even while DNS hangs. A name whose lookup is
//! still running is not looked up again.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Weak;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use crate::runtime::{DriverInput, Shared};

/// How long a round waits for its lookups (they run at the same time).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two rounds of lookups.
const MAX_PAUSE: Duration = Duration::from_secs(30);

pub(crate) type Answer = Result<Vec<SocketAddr>, String>;

/// One name, its lookup under way and the addresses it last gave.
struct Seed {
    name: String,
    running: Option<oneshot::Receiver<Answer>>,
    last: Vec<SocketAddr>,
    warned: bool,
}

/// Looks `names` up while the node runs; `first_pause` is the pause after
/// the first round, doubled after each round up to [`MAX_PAUSE`].
pub(crate) async fn follow(names: Vec<String>, shared: Weak<Shared>, first_pause: Duration) {
    let first_pause = first_pause.clamp(Duration::from_millis(100), MAX_PAUSE);
    let mut pause = first_pause;
    let mut seeds: Vec<Seed> = names
        .into_iter()
        .map(|name| Seed {
            name,
            running: None,
            last: Vec::new(),
            warned: false,
        })
        .collect();
    loop {
        let Some(node) = shared.upgrade() else {
            return;
        };
        let wake = node.wake.clone();
        let alone = !node.engine().is_active();
        drop(node);
        if alone {
            round(&mut seeds, &shared).await;
        } else {
            pause = first_pause;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // The driver has stopped: so does this.
            _ = wake.closed() => return,
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Starts the lookups not running yet and waits for them, at most
/// [`LOOKUP_TIMEOUT`], handing the addresses to the engine as each answer
/// comes (a name that hangs holds up no other); a lookup still running at
/// the end is waited for again in the next round.
async fn round(seeds: &mut [Seed], shared: &Weak<Shared>) {
    let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
    let mut answers: FuturesUnordered<_> = seeds
        .iter_mut()
        .enumerate()
        .map(|(i, seed)| {
            let mut running = seed
                .running
                .take()
                .unwrap_or_else(|| start_lookup(&seed.name));
            async move {
                let answer = tokio::time::timeout_at(deadline, &mut running).await;
                (i, answer, running)
            }
        })
        .collect();
    while let Some((i, answer, running)) = answers.next().await {
        let seed = &mut seeds[i];
        match answer {
            Ok(Ok(Ok(addrs))) => {
                seed.warned = false;
                seed.last = addrs;
                hand_over(seeds, shared);
            }
            // The addresses it gave before stay: DNS may only be down.
            Ok(Ok(Err(why))) => fail(seed, &why, shared),
            Ok(Err(_)) => fail(seed, "the lookup thread ended without an answer", shared),
            Err(_) => {
                seed.running = Some(running);
                fail(seed, "the lookup takes over 5 s", shared);
            }
        }
    }
}

/// Gives the engine every address the names last gave.
fn hand_over(seeds: &[Seed], shared: &Weak<Shared>) {
    let found: Vec<SocketAddr> = seeds.iter().flat_map(|s| s.last.iter().copied()).collect();
    if let Some(s) = shared.upgrade().filter(|s| !s.wake.is_closed()) {
        let fresh = s.engine().set_named_seeds(s.now_ms(), &found);
        if fresh > 0 {
            let _ = s.wake.send(DriverInput::Wake);
        }
    }
}

fn fail(seed: &mut Seed, why: &str, shared: &Weak<Shared>) {
    if !std::mem::replace(&mut seed.warned, true) {
        tracing::warn!(seed = %seed.name, %why, "a seed name does not resolve; it is looked up again whenever this node is alone");
    }
    if let Some(s) = shared.upgrade() {
        s.engine().seed_lookup_failed();
    }
}

/// Name lookups under way in this process, each on its thread: a lookup
/// cannot be cancelled and may outlive its node (until the resolver gives
/// up), so their number is bounded.
static LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Lookups under way at most; a name asked for beyond that fails at once.
pub(crate) const MAX_LOOKUPS: usize = 32;

/// Takes one of the [`MAX_LOOKUPS`] places; gives it back when dropped.
struct LookupPlace;

impl LookupPlace {
    fn take() -> Option<LookupPlace> {
        use std::sync::atomic::Ordering;
        LOOKUPS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LOOKUPS).then_some(n + 1)
            })
            .ok()
            .map(|_| LookupPlace)
    }
}

impl Drop for LookupPlace {
    fn drop(&mut self) {
        LOOKUPS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Looks `name` up on a thread of its own (at most [`MAX_LOOKUPS`] at once
/// in the process: beyond that the answer is a failure, at once).
pub(crate) fn start_lookup(name: &str) -> oneshot::Receiver<Answer> {
    let (tx, rx) = oneshot::channel();
    let Some(place) = LookupPlace::take() else {
        let _ = tx.send(Err(format!(
            "{MAX_LOOKUPS} name lookups are under way in this process (a resolver that does \
             not answer holds each up to its own timeout); try again later"
        )));
        return rx;
    };
    let name = name.to_string();
    let inherited = crate::blocking::inherited();
    #[cfg(test)]
    let mark = crate::blocking::mark();
    let spawned = std::thread::Builder::new()
        .name("tribe-seed-lookup".into())
        .spawn(move || {
            if let Some(take_over) = inherited {
                take_over();
            }
            #[cfg(test)]
            crate::blocking::note_mask(mark);
            let _place = place;
            let answer = match name.to_socket_addrs() {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    if addrs.is_empty() {
                        Err("no address".to_string())
                    } else {
                        Ok(addrs)
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(answer);
        });
    // No thread (the process at its thread limit): `tx` is gone, and the
    // round reads that as a failed lookup.
    drop(spawned);
    rx
}
