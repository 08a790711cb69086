//! One call from start to end: bounds, routing, failover, and the mapping of
//! every outcome to a result, so no call is ever lost silently.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::client::{self, Answer, NotSent, Outcome, Pool};
use super::proto::{Refusal, RpcMsg};
use super::responder::{LocalRefusal, Responder};
use super::server::{Server, Serving};
use super::{CallInfo, CallTarget, HandlerError, RpcCounters};
use crate::error::{Error, Overload, Result};
use crate::stream::Security;

/// The call path of one node.
pub struct Rpc {
    /// What this node serves.
    pub server: Arc<Server>,
    /// Streams to other hosts.
    pub pool: Pool,
    /// Outcome counters.
    pub counters: Arc<RpcCounters>,
}

/// What a call needs to know about the cluster, read once at its start.
pub struct Snapshot {
    /// This node's name.
    pub me: String,
    /// Live members of the target tribe serving the plugin; `None` when the
    /// tribe does not exist.
    pub providers: Option<Vec<client::Candidate>>,
    /// Stream security.
    pub security: Security,
}

/// How a call's request and answer travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// On the host's shared stream, its answer read by a runtime thread.
    Shared,
    /// On a stream the call borrows whole, written and read by the thread
    /// that polls the call (one blocking on it, outside the runtime).
    Borrowed,
}

/// How many times a call whose known hosts all refused reads the target's
/// providers again for hosts that appeared meanwhile.
const REREADS: usize = 2;

/// Pauses (ms) before the hosts that said they do not serve a call, yet
/// are still listed as serving it, are tried again: a host's view may be
/// behind the caller's (the host was just put in the tribe, or just began
/// serving, and has not heard of it yet), which gossip closes within tens
/// of ms on a LAN. Within the call's deadline.
const NOT_YET_PAUSES_MS: [u64; 4] = [20, 50, 100, 250];

/// What one host's try at a call needs.
struct Host<'a> {
    snap: &'a Snapshot,
    target: &'a CallTarget,
    cand: &'a client::Candidate,
    deadline: Instant,
    carry: Carry,
    size: usize,
}

/// How one host's try ended.
enum Step {
    /// With the call's result.
    Done(Result<Vec<u8>>),
    /// Refused as busy; another host may take it (the payload, unless this
    /// node's own handler took it).
    Busy(Option<Vec<u8>>),
    /// This node's stream to the host carries as many calls as it allows.
    StreamFull(Option<Vec<u8>>),
    /// Refused or unreachable before it ran; another host may take it.
    Next(Option<Vec<u8>>),
    /// Refused by a remote host as not serving it (not a member of the
    /// tribe, or not serving the plugin, in its view): another host may
    /// take it, or this one once its view catches up with the caller's.
    NotServing(Option<Vec<u8>>),
    /// Refused by a host that is stopping; another host may take it.
    Stopping(Option<Vec<u8>>),
    /// Not sent: the host could not be reached; another host may take it.
    Unreachable(Option<Vec<u8>>),
    /// Not sent: this process could not open a connection (why), through
    /// no fault of the host; a host with an open stream may take it.
    Local(Option<Vec<u8>>, String),
}

/// A handler's error as the caller sees it; `host` ran the handler.
pub fn from_handler(e: HandlerError, host: &str) -> Error {
    if e.code == "timeout" {
        Error::Timeout {
            host: Some(host.to_string()),
        }
    } else {
        Error::Remote {
            code: e.code,
            message: e.message,
        }
    }
}

/// A call to this node's own handler.
pub struct Local<'a> {
    /// Calling node (this one).
    pub caller: &'a str,
    /// Tribe named by the call (empty for a local workflow step).
    pub tribe: &'a str,
    /// Plugin name.
    pub plugin: &'a str,
    /// Version, or any.
    pub version: Option<&'a str>,
    /// Kind.
    pub kind: crate::records::PluginKind,
}

impl Rpc {
    /// Refuses a call this node cannot make at all: stopping, or a payload
    /// over the limit.
    fn admit(&self, payload_len: usize) -> Result<()> {
        if self.server.is_stopping() {
            return Err(Error::ShuttingDown);
        }
        let limit = self.server.limits().max_payload;
        if payload_len > limit {
            return Err(Error::TooLarge {
                size: payload_len,
                limit,
            });
        }
        Ok(())
    }

    /// Runs this node's own handler with the same bounds and protection as
    /// a served call: `NoProvider` when it serves no such plugin.
    pub async fn run_local(
        &self,
        call: Local<'_>,
        payload: Vec<u8>,
        budget: Duration,
    ) -> Result<Vec<u8>> {
        self.admit(payload.len())?;
        // As a remote host caps what a caller asks for.
        let budget = budget.min(super::server::MAX_CALL_BUDGET);
        let (version, handler) = self
            .server
            .lookup(call.plugin, call.version, call.kind)
            .ok_or_else(|| Error::NoProvider {
                tribe: call.tribe.to_string(),
                plugin: call.plugin.to_string(),
                wanted: crate::error::wanted(call.kind, call.version),
                stopping: Vec::new(),
                unreachable: Vec::new(),
            })?;
        let place = self.server.try_slot().ok_or_else(|| Error::Overloaded {
            by: Overload::Hosts(vec![call.caller.to_string()]),
        })?;
        let info = CallInfo {
            caller: call.caller.to_string(),
            tribe: call.tribe.to_string(),
            plugin: call.plugin.to_string(),
            version,
            budget,
        };
        match handler {
            Serving::Future(handler) => {
                RpcCounters::bump(&self.counters.served);
                let result = self.server.run_handler(handler, info, payload).await;
                drop(place);
                result.map_err(|e| from_handler(e, call.caller))
            }
            Serving::Responder(handler) => {
                // The place goes with the responder: the host may hold the
                // call past this caller's wait.
                let (responder, slot, answer) = Responder::local(
                    place,
                    self.server.limits().max_payload,
                    self.counters.clone(),
                );
                self.server
                    .start_responder(&handler, info, payload, responder, &slot);
                // A caller that stops waiting (its task cancelled, a
                // timeout around the call) gives the call up: it is over,
                // and a stop does not wait for it. A no-op once answered.
                struct GiveUp<'a>(&'a super::responder::Slot);
                impl Drop for GiveUp<'_> {
                    fn drop(&mut self) {
                        self.0.abandon();
                    }
                }
                let _give_up = GiveUp(&slot);
                let answer = tokio::select! {
                    answer = tokio::time::timeout(budget, answer) => answer,
                    // Aborted: the handler is told, and the caller ends now
                    // (a graceful stop lets running calls be answered).
                    () = self.server.killed() => {
                        slot.abandon();
                        return Err(Error::ShuttingDown);
                    }
                };
                match answer {
                    Ok(Ok(Ok(reply))) => Ok(reply),
                    Ok(Ok(Err(LocalRefusal::Failed(e)))) => Err(from_handler(e, call.caller)),
                    // As a stopping host's refusal: the route moves on.
                    Ok(Ok(Err(LocalRefusal::Stopping))) => Err(Error::NoProvider {
                        tribe: call.tribe.to_string(),
                        plugin: call.plugin.to_string(),
                        wanted: crate::error::wanted(call.kind, call.version),
                        stopping: vec![call.caller.to_string()],
                        unreachable: Vec::new(),
                    }),
                    // Every path answers through the slot before it drops.
                    Ok(Err(_)) => Err(Error::Timeout { host: None }),
                    Err(_) => {
                        slot.overran(budget);
                        Err(Error::Timeout {
                            host: Some(call.caller.to_string()),
                        })
                    }
                }
            }
        }
    }

    /// Makes one call; see [`crate::Node::call`]. `refresh` reads the
    /// target's providers again, for hosts that appeared while the first
    /// ones refused. The outcome is counted when `counted`.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        snap: Snapshot,
        refresh: &(dyn Fn() -> Option<Vec<client::Candidate>> + Sync),
        target: &CallTarget,
        payload: Vec<u8>,
        timeout: Duration,
        carry: Carry,
        counted: bool,
    ) -> Result<Vec<u8>> {
        // Counts the call as abandoned if this future is dropped first.
        struct Abandon<'a>(Option<&'a RpcCounters>);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if let Some(c) = self.0 {
                    RpcCounters::bump(&c.abandoned);
                }
            }
        }
        let mut abandon = Abandon(counted.then_some(&*self.counters));
        let result = self
            .route(snap, refresh, target, payload, timeout, carry)
            .await;
        abandon.0 = None;
        if counted {
            client::count(&self.counters, &result);
        }
        result
    }

    async fn route(
        &self,
        mut snap: Snapshot,
        refresh: &(dyn Fn() -> Option<Vec<client::Candidate>> + Sync),
        target: &CallTarget,
        payload: Vec<u8>,
        timeout: Duration,
        carry: Carry,
    ) -> Result<Vec<u8>> {
        self.admit(payload.len())?;
        let size = payload.len();
        let mut payload = Some(payload);
        let providers = snap
            .providers
            .take()
            .ok_or_else(|| Error::UnknownTribe(target.tribe.clone()))?;
        let no_provider = |stopping, unreachable| Error::NoProvider {
            tribe: target.tribe.clone(),
            plugin: target.plugin.clone(),
            wanted: crate::error::wanted(target.kind, target.version.as_deref()),
            stopping,
            unreachable,
        };
        let mut cands = client::order(providers, &self.pool);
        if cands.is_empty() {
            return Err(no_provider(Vec::new(), Vec::new()));
        }
        let _slot = self.pool.try_inflight().ok_or(Error::Overloaded {
            by: Overload::Calls {
                limit: self.pool.limits().max_inflight,
            },
        })?;
        // A host runs a call for at most MAX_CALL_BUDGET and then answers
        // `Timeout`: a longer wait (`Duration::MAX` for "no limit") ends
        // the same way, and overflows no clock.
        let longest = super::server::MAX_CALL_BUDGET + Duration::from_secs(1);
        let deadline = Instant::now() + timeout.min(longest);
        // Hosts that refused it as running as many calls as they allow.
        let mut busy = Vec::new();
        // The host to which this node's own bound on a stream stopped it.
        let mut stream_full = None;
        let mut tried: Vec<String> = Vec::new();
        let mut stopping: Vec<String> = Vec::new();
        let mut not_serving: Vec<String> = Vec::new();
        let mut unreachable: Vec<String> = Vec::new();
        // Why this process could not open a connection, last time.
        let mut local: Option<String> = None;
        let mut last_was_local = false;
        // Whether some host was tried and failed for a reason of its own.
        let mut host_failed = false;
        let mut pauses = NOT_YET_PAUSES_MS.iter();
        let mut round = 0;
        loop {
            let may_reread = round < REREADS || pauses.len() > 0;
            let mut i = 0;
            while i < cands.len() {
                let cand = &cands[i];
                i += 1;
                // A remote host that refuses hands the bytes back; this
                // node's own handler takes them, so it gets a copy while
                // another host (or another version) may still need them.
                let keep = cand.local && (i != cands.len() || may_reread || !cand.older.is_empty());
                let Some(bytes) = (if keep {
                    payload.clone()
                } else {
                    payload.take()
                }) else {
                    break;
                };
                // A try after one this process could not open a connection
                // for is no failover: no host failed; nor is another
                // version of the same host.
                let same_host = tried.last() == Some(&cand.name);
                if !tried.is_empty() && !last_was_local && !same_host {
                    RpcCounters::bump(&self.counters.failovers);
                }
                tried.push(cand.name.clone());
                let at = Host {
                    snap: &snap,
                    target,
                    cand,
                    deadline,
                    carry,
                    size,
                };
                let step = self.attempt(at, bytes).await;
                last_was_local = matches!(step, Step::Local(..));
                host_failed |= !last_was_local;
                // A host that no longer serves the version it was asked for
                // (unserved since its record came) is asked next for the
                // next one it serves, when any version will do.
                let mut next_version = None;
                let step = match step {
                    Step::NotServing(back) | Step::Stopping(back) if !cand.older.is_empty() => {
                        let mut older = cand.clone();
                        older.version = older.older.remove(0);
                        next_version = Some(older);
                        Step::Next(back)
                    }
                    step => step,
                };
                let back = match step {
                    Step::Done(result) => return result,
                    Step::Busy(back) => {
                        busy.push(cand.name.clone());
                        back
                    }
                    Step::StreamFull(back) => {
                        stream_full = Some(cand.name.clone());
                        back
                    }
                    Step::Next(back) => back,
                    Step::NotServing(back) => {
                        not_serving.push(cand.name.clone());
                        back
                    }
                    Step::Stopping(back) => {
                        stopping.push(cand.name.clone());
                        back
                    }
                    Step::Unreachable(back) => {
                        if !unreachable.contains(&cand.name) {
                            unreachable.push(cand.name.clone());
                        }
                        back
                    }
                    Step::Local(back, why) => {
                        local = Some(why);
                        back
                    }
                };
                if payload.is_none() {
                    payload = back;
                }
                if let Some(older) = next_version {
                    cands.insert(i, older);
                }
            }
            if payload.is_none() || Instant::now() >= deadline {
                break;
            }
            // Every known host refused or could not be reached: members
            // that began serving meanwhile may take it.
            let listed = refresh().unwrap_or_default();
            let (fresh, seen): (Vec<_>, Vec<_>) =
                listed.into_iter().partition(|c| !tried.contains(&c.name));
            if !fresh.is_empty() && round < REREADS {
                round += 1;
                cands = client::order(fresh, &self.pool);
                continue;
            }
            // Hosts that said they do not serve it, and are still listed
            // as serving it: their view may be behind this node's.
            let again: Vec<_> = seen
                .into_iter()
                .filter(|c| not_serving.contains(&c.name))
                .collect();
            let Some(&pause) = pauses.next() else { break };
            if again.is_empty() {
                break;
            }
            let pause = Duration::from_millis(pause);
            if deadline.saturating_duration_since(Instant::now()) <= pause {
                break;
            }
            tokio::time::sleep(pause).await;
            not_serving.clear();
            cands = client::order(again, &self.pool);
        }
        Err(if !busy.is_empty() {
            Error::Overloaded {
                by: Overload::Hosts(busy),
            }
        } else if let Some(host) = stream_full {
            Error::Overloaded {
                by: Overload::Stream {
                    host,
                    limit: self.pool.limits().max_inflight_per_conn,
                },
            }
        } else if self.server.is_stopping() {
            // This node stops (its own handler refused the call for that),
            // and no other host took it.
            Error::ShuttingDown
        } else if let Some(why) = local.filter(|_| !host_failed) {
            // No host is to blame: the cause is this process's.
            Error::Io(format!(
                "call to {:?} in tribe {:?} not sent: {why}",
                target.plugin, target.tribe
            ))
        } else {
            no_provider(stopping, unreachable)
        })
    }

    /// One host's try at a call.
    async fn attempt(&self, at: Host<'_>, bytes: Vec<u8>) -> Step {
        let Host {
            snap,
            target,
            cand,
            deadline,
            carry,
            size,
        } = at;
        let limit = self.pool.limits().max_payload;
        let budget = deadline.saturating_duration_since(Instant::now());
        if budget.is_zero() {
            return Step::Done(Err(Error::Timeout { host: None }));
        }
        if cand.local {
            let local = Local {
                caller: &snap.me,
                tribe: &target.tribe,
                plugin: &target.plugin,
                version: Some(&cand.version),
                kind: target.kind,
            };
            // Boxed, as the borrowed request below: rarer paths whose
            // state would make every call's future as large as theirs.
            return match Box::pin(self.run_local(local, bytes, budget)).await {
                Err(Error::NoProvider { stopping, .. }) if !stopping.is_empty() => {
                    Step::Stopping(None)
                }
                // Its own record is current: no retry waits for it.
                Err(Error::NoProvider { .. }) => Step::NotServing(None),
                Err(Error::Overloaded { .. }) => Step::Busy(None),
                other => Step::Done(other),
            };
        }
        // Rounded up: a budget under a ms (a handler passing on what is
        // left of its own) would reach the host as none at all.
        let budget_ms = u32::try_from(budget.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let _load = self.pool.reserve(cand.addr);
        let large = bytes.len() >= super::client::LARGE_CALL;
        // Numbered by the stream it goes on.
        let mut msg = RpcMsg::Call {
            id: 0,
            caller: snap.me.clone(),
            tribe: target.tribe.clone(),
            plugin: target.plugin.clone(),
            version: cand.version.clone(),
            kind: target.kind,
            budget_ms,
            payload: bytes,
        };
        let (addr, security) = (cand.addr, &snap.security);
        let borrowed = match carry {
            Carry::Shared => None,
            Carry::Borrowed => {
                match Box::pin(self.pool.request_borrowing(addr, security, deadline, &mut msg))
                    .await
                {
                    Ok(Outcome::Done(answer)) => Some(Ok(answer)),
                    Ok(Outcome::Share) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        };
        let sent = match borrowed {
            Some(done) => done,
            None => {
                self.pool
                    .send_request(addr, security, deadline, large, &mut msg)
                    .await
            }
        };
        // The request did not run there: its bytes go to the next host.
        let back = || match msg {
            RpcMsg::Call { payload, .. } => Some(payload),
            _ => None,
        };
        let done = |r| Step::Done(r);
        match sent {
            Err(NotSent::Connect(e)) => {
                self.pool.mark_unreachable(cand.addr);
                tracing::debug!(host = %cand.name, error = %e, "call not sent; trying another host");
                Step::Unreachable(back())
            }
            // Not the host's fault: it is not marked unreachable; a host
            // with an open stream may still take the call.
            Err(NotSent::Local(why)) => {
                tracing::debug!(host = %cand.name, error = %why, "call not sent; trying another host");
                Step::Local(back(), why)
            }
            Err(NotSent::Busy) => Step::Busy(back()),
            Err(NotSent::StreamFull) => Step::StreamFull(back()),
            Err(NotSent::OutOfTime) | Ok(None) => done(Err(Error::Timeout {
                host: Some(cand.name.clone()),
            })),
            // The caller's own bound holds for what it accepts too.
            Ok(Some(Answer::Reply(Ok(bytes)))) if bytes.len() > limit => done(Err(Error::TooLarge {
                size: bytes.len(),
                limit,
            })),
            Ok(Some(Answer::Reply(Ok(bytes)))) => done(Ok(bytes)),
            Ok(Some(Answer::Reply(Err((code, message))))) => {
                done(Err(from_handler(HandlerError { code, message }, &cand.name)))
            }
            Ok(Some(Answer::Refused(Refusal::Overloaded))) => Step::Busy(back()),
            Ok(Some(Answer::Refused(Refusal::TooLarge))) => {
                done(Err(Error::TooLarge { size, limit }))
            }
            Ok(Some(Answer::Refused(Refusal::TooLargeFor { limit }))) => {
                done(Err(Error::TooLarge {
                    size,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                }))
            }
            Ok(Some(Answer::Refused(Refusal::NoSuchPlugin))) => Step::NotServing(back()),
            Ok(Some(Answer::Refused(Refusal::ShuttingDown))) => Step::Stopping(back()),
            Ok(Some(Answer::Lost | Answer::Unsent)) if self.pool.is_closed() => {
                done(Err(Error::ShuttingDown))
            }
            // The stream ended before the request left: another host
            // may take it.
            Ok(Some(Answer::Unsent)) => {
                self.pool.mark_unreachable(cand.addr);
                tracing::debug!(host = %cand.name, "call not sent before its stream ended; trying another host");
                Step::Unreachable(back())
            }
            Ok(Some(Answer::Lost)) => done(Err(Error::Disconnected {
                host: cand.name.clone(),
            })),
            Ok(Some(Answer::Chunk(_))) => done(Err(Error::Remote {
                code: "protocol".into(),
                message: "the host answered a call with artifact bytes".into(),
            })),
        }
    }
}
