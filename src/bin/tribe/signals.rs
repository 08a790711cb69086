//! The signals the `tribe` command stops on, taken by signal-hook on a
//! thread of their own. tokio's signal driver is left out of the build: it
//! would be in every runtime of the library too, whose process-wide socket
//! pair a C daemon that closes every descriptor would lose (and a later
//! node's runtime would take whatever file came to sit at its number).

use signal_hook::iterator::{Handle, Signals};
use tokio::sync::mpsc;

/// Signals received, in order, for async code.
pub struct Watch {
    received: mpsc::UnboundedReceiver<i32>,
    handle: Handle,
}

impl Watch {
    /// Starts taking `signals` (their default action no longer runs).
    pub fn new(signals: &[i32]) -> Result<Watch, String> {
        let mut taken = Signals::new(signals).map_err(|e| format!("cannot watch signals: {e}"))?;
        let handle = taken.handle();
        let (tx, received) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("tribe-signals".into())
            .spawn(move || {
                for signal in taken.forever() {
                    if tx.send(signal).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| {
                format!(
                    "cannot start the tribe-signals thread ({e}); is the process at its thread limit?"
                )
            })?;
        Ok(Watch { received, handle })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> i32 {
        match self.received.recv().await {
            Some(signal) => signal,
            // The thread never ends while the watch lives.
            None => std::future::pending().await,
        }
    }

    /// The next signal received, blocking this thread.
    pub fn wait(&mut self) -> i32 {
        match self.received.blocking_recv() {
            Some(signal) => signal,
            None => loop {
                std::thread::park();
            },
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.handle.close();
    }
}
