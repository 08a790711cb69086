//! Seeds given by name: looked up by the runtime (the engine never waits
//! on the network), right after the start and again, with a growing pause,
//! whenever the node has no live peer. A name that does not resolve yet (a
//! machine booting before its DNS, a peer its scheduler has not placed)
//! costs a warning and a counter, not the start.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use crate::runtime::{DriverInput, Shared};

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two rounds of lookups.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Looks `names` up while the node runs; `first_pause` is the pause after
/// the first round, doubled after each round up to [`MAX_PAUSE`].
pub(crate) async fn follow(names: Vec<String>, shared: Weak<Shared>, first_pause: Duration) {
    let first_pause = first_pause.clamp(Duration::from_millis(100), MAX_PAUSE);
    let mut pause = first_pause;
    let mut warned = vec![false; names.len()];
    loop {
        let Some(wake) = shared.upgrade().map(|s| s.wake.clone()) else {
            return;
        };
        if alone(&shared) {
            let mut found = Vec::new();
            for (name, warned) in names.iter().zip(&mut warned) {
                match lookup(name).await {
                    Ok(addrs) => {
                        *warned = false;
                        found.extend(addrs);
                    }
                    Err(why) => {
                        if !std::mem::replace(warned, true) {
                            tracing::warn!(seed = %name, %why, "a seed name does not resolve; retrying while alone");
                        }
                        if let Some(s) = shared.upgrade() {
                            s.engine().seed_lookup_failed();
                        }
                    }
                }
            }
            if let Some(s) = shared.upgrade() {
                let added = s.engine().add_seeds(s.now_ms(), &found);
                if added > 0 {
                    let _ = s.wake.send(DriverInput::Wake);
                }
            }
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

fn alone(shared: &Weak<Shared>) -> bool {
    shared.upgrade().is_some_and(|s| !s.engine().is_active())
}

async fn lookup(name: &str) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the lookup timed out".into()),
    }
}
