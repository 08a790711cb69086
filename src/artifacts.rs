//! Plugin artifacts: a `PluginLoad` whose entry carries an artifact reaches
//! the application only once the bytes are fetched from a member holding
//! them, in chunks, and their SHA-256 matches. A holder with wrong bytes is
//! reported and skipped; rounds over all holders back off; after the last
//! round the artifact is reported unavailable. Verified bytes are kept and
//! advertised, so every loader becomes a holder.

use tracing::Instrument as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::engine::view::{MemberInfo, MemberState, PluginEntry};
use crate::engine::Event;
use crate::records::ArtifactRef;
use crate::rpc::client::Answer;
use crate::rpc::proto::RpcMsg;
use crate::rpc::server::MAX_CHUNK;
use crate::runtime::Shared;
use crate::Command;

/// Largest artifact fetched.
pub const MAX_ARTIFACT: u64 = 256 * 1024 * 1024;
/// Most artifact bytes one node keeps in memory (held or fetched).
pub const MAX_HELD_BYTES: u64 = 1024 * 1024 * 1024;
/// Longest pause between rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Longest wait for one chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Artifacts fetched at once; more wait their turn.
pub const CONCURRENT_FETCHES: usize = 2;
/// Slowest transfer accepted from one holder, in bytes per second (plus a
/// fixed allowance): a holder that drips bytes is left for another.
const MIN_RATE: u64 = 1024 * 1024;

/// Fetches under way, by plugin entry `(tribe, name, version)`, and the
/// bound on how many run at once.
pub struct Loads {
    pending: std::sync::Mutex<
        std::collections::HashMap<(String, String, String), tokio::task::AbortHandle>,
    >,
    slots: Arc<tokio::sync::Semaphore>,
    /// Bytes of the artifacts this node holds.
    held_bytes: std::sync::atomic::AtomicU64,
    /// Held artifacts no plugin entry names, since when (see
    /// [`release_unreferenced`]).
    unreferenced: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
    /// Entries reported unavailable, with the holders there were then and
    /// when: tried again when another holder appears (see [`retry_unavailable`]).
    unavailable: std::sync::Mutex<std::collections::HashMap<EntryKey, Unavailable>>,
}

type EntryKey = (String, String, String);

struct Unavailable {
    entry: PluginEntry,
    holders: Vec<String>,
    at: std::time::Instant,
}

impl Default for Loads {
    fn default() -> Self {
        Loads {
            pending: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FETCHES)),
            held_bytes: Default::default(),
            unreferenced: Default::default(),
            unavailable: Default::default(),
        }
    }
}

fn entry_key(entry: &PluginEntry) -> EntryKey {
    (
        entry.tribe.clone(),
        entry.name.clone(),
        entry.version.clone(),
    )
}

/// Cancels a load still waiting for its artifact; true when there was one
/// (also one reported unavailable: neither was handed over).
pub(crate) fn cancel(shared: &Shared, entry: &PluginEntry) -> bool {
    let unavailable = shared
        .artifact_loads
        .unavailable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&entry_key(entry))
        .is_some();
    let handle = shared
        .artifact_loads
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&entry_key(entry));
    match handle {
        Some(h) => {
            h.abort();
            true
        }
        None => unavailable,
    }
}

/// How often an entry reported unavailable is tried again while its
/// holders stay the same (at once when a new holder appears).
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(60);

/// Notes an entry reported unavailable, to try it again later.
fn note_unavailable(shared: &Shared, entry: &PluginEntry, sha: &[u8; 32]) {
    let holders = holders(shared, sha).into_iter().map(|(n, _)| n).collect();
    shared
        .artifact_loads
        .unavailable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            entry_key(entry),
            Unavailable {
                entry: entry.clone(),
                holders,
                at: std::time::Instant::now(),
            },
        );
}

/// Tries again the entries reported unavailable whose artifact a holder
/// not tried before now advertises (a member that loaded the same bytes,
/// a holder back), or any holder after [`RETRY_UNAVAILABLE`].
pub(crate) fn retry_unavailable(shared: &Arc<Shared>) {
    let list = || {
        shared
            .artifact_loads
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    // Looked at without the list's lock: the members' view takes the
    // engine's, which is held where entries are cancelled.
    let waiting: Vec<(EntryKey, PluginEntry, Vec<String>, std::time::Instant)> = list()
        .iter()
        .map(|(k, u)| (k.clone(), u.entry.clone(), u.holders.clone(), u.at))
        .collect();
    if waiting.is_empty() {
        return;
    }
    let now = std::time::Instant::now();
    // One copy of the members for every waiting entry.
    let members = shared.engine().members();
    let due: Vec<(EntryKey, PluginEntry)> = waiting
        .into_iter()
        .filter(|(_, entry, tried, at)| {
            let Some(artifact) = &entry.artifact else {
                return false;
            };
            let current = holders_among(&members, &artifact.sha256);
            let fresh = current.iter().any(|(n, _)| !tried.contains(n));
            fresh || (!current.is_empty() && now.duration_since(*at) >= RETRY_UNAVAILABLE)
        })
        .map(|(k, entry, _, _)| (k, entry))
        .collect();
    let due: Vec<PluginEntry> = {
        let mut list = list();
        due.into_iter()
            .filter(|(k, _)| list.remove(k).is_some())
            .map(|(_, entry)| entry)
            .collect()
    };
    for entry in due {
        tracing::info!(plugin = %entry.name, "a holder of an unavailable artifact appeared: fetching it again");
        load(shared.clone(), entry);
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why one holder did not give verified bytes.
enum Miss {
    /// It answered with bytes that do not match.
    Corrupt,
    /// It did not have them, or could not be reached.
    Unavailable,
}

/// Live holders other than this node.
fn holders(shared: &Shared, sha: &[u8; 32]) -> Vec<(String, SocketAddr)> {
    holders_among(&shared.engine().members(), sha)
}

/// Live holders other than this node, among `members`.
fn holders_among(members: &[MemberInfo], sha: &[u8; 32]) -> Vec<(String, SocketAddr)> {
    members
        .iter()
        .filter(|m| {
            !m.is_local
                && matches!(m.state, MemberState::Alive | MemberState::Suspect)
                && m.artifacts.contains(sha)
        })
        .map(|m| (m.name.clone(), m.addr))
        .collect()
}

async fn fetch_from(
    shared: &Shared,
    addr: SocketAddr,
    artifact: &ArtifactRef,
) -> Result<Vec<u8>, Miss> {
    let security = shared.engine().stream_security();
    let mut bytes = Vec::new();
    let allowance = Duration::from_secs(30 + artifact.size / MIN_RATE);
    let holder_deadline = Instant::now() + allowance;
    while (bytes.len() as u64) < artifact.size {
        let offset = bytes.len() as u64;
        let deadline = (Instant::now() + CHUNK_TIMEOUT).min(holder_deadline);
        let answer = shared
            .rpc
            .pool
            // Chunks are large answers: fetches beside other large calls
            // may get a stream of their own.
            .request(addr, &security, deadline, true, |id| RpcMsg::Fetch {
                id,
                sha256: artifact.sha256,
                offset,
                len: MAX_CHUNK,
            })
            .await;
        match answer {
            Ok(Some(Answer::Chunk(data))) => {
                // Every chunk is full size except the last: anything else is
                // a holder that does not have the bytes it claims.
                let expected = (artifact.size - offset).min(u64::from(MAX_CHUNK));
                if data.len() as u64 != expected {
                    return Err(Miss::Corrupt);
                }
                bytes.extend_from_slice(&data);
            }
            _ => return Err(Miss::Unavailable),
        }
    }
    if sha256(&bytes) == artifact.sha256 {
        Ok(bytes)
    } else {
        Err(Miss::Corrupt)
    }
}

/// Fetches and verifies an artifact; reports corrupt holders as they come.
async fn fetch(
    shared: &Shared,
    entry: &PluginEntry,
    artifact: &ArtifactRef,
) -> Result<Vec<u8>, String> {
    if artifact.size > MAX_ARTIFACT {
        return Err(format!(
            "the artifact has {} bytes, over the limit of {MAX_ARTIFACT}",
            artifact.size
        ));
    }
    let limits = shared.rpc.pool.limits();
    let rounds = limits.artifact_rounds.max(1);
    let mut backoff = limits.artifact_backoff;
    // What the rounds met, to say why they failed.
    let (mut asked, mut corrupt) = (0usize, 0usize);
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let mut holders = holders(shared, &artifact.sha256);
        holders.shuffle(&mut rand::rng());
        for (name, addr) in holders {
            asked += 1;
            match fetch_from(shared, addr, artifact).await {
                Ok(bytes) => return Ok(bytes),
                Err(Miss::Corrupt) => {
                    corrupt += 1;
                    crate::rpc::RpcCounters::bump(&shared.rpc.counters.artifacts_corrupt);
                    tracing::warn!(holder = %name, plugin = %entry.name, "artifact bytes do not match their hash; trying another holder");
                    shared.deliver(Event::ArtifactCorrupt {
                        plugin: entry.clone(),
                        holder: name,
                    });
                }
                Err(Miss::Unavailable) => {}
            }
        }
        if shared.rpc.server.is_stopping() {
            return Err("the node is shutting down".into());
        }
    }
    Err(match (asked, corrupt) {
        (0, _) => format!("no live member held it in {rounds} rounds (its holders left or failed)"),
        (_, 0) => format!("no live holder could hand it out in {rounds} rounds ({asked} asked)"),
        _ => format!(
            "no live holder gave bytes matching the hash in {rounds} rounds ({corrupt} of {asked} gave others)"
        ),
    })
}

/// Bytes over [`MAX_ARTIFACT`] are refused where the artifact is made
/// (members would refuse to fetch them); a C host's are checked before
/// they are copied.
pub(crate) fn check_size(len: usize) -> crate::Result<()> {
    if len as u64 > MAX_ARTIFACT {
        return Err(crate::Error::TooLarge {
            size: len,
            limit: MAX_ARTIFACT as usize,
        });
    }
    Ok(())
}

/// Keeps verified bytes and advertises them. Bounded in count (the node
/// record advertises at most `MAX_ARTIFACTS`) and in total bytes
/// ([`MAX_HELD_BYTES`]); refused bytes are not kept.
pub(crate) fn hold(shared: &Shared, bytes: Arc<Vec<u8>>) -> crate::Result<ArtifactRef> {
    use std::sync::atomic::Ordering;
    check_size(bytes.len())?;
    let artifact = ArtifactRef {
        sha256: sha256(&bytes),
        size: bytes.len() as u64,
    };
    if shared.rpc.server.artifact(&artifact.sha256).is_some() {
        return Ok(artifact);
    }
    let held = &shared.artifact_loads.held_bytes;
    let before = held.fetch_add(artifact.size, Ordering::Relaxed);
    if before.saturating_add(artifact.size) > MAX_HELD_BYTES {
        held.fetch_sub(artifact.size, Ordering::Relaxed);
        return Err(crate::Error::LimitReached {
            what: "bytes of artifacts held".into(),
            limit: MAX_HELD_BYTES as usize,
        });
    }
    if let Err(e) = shared.command(Command::HoldArtifact(artifact.sha256)) {
        held.fetch_sub(artifact.size, Ordering::Relaxed);
        return Err(e);
    }
    shared.rpc.server.hold_artifact(artifact.sha256, bytes);
    Ok(artifact)
}

/// How long held bytes that no plugin entry names are kept: time for the
/// entry a hold is made for to be written.
pub const RELEASE_AFTER: Duration = Duration::from_secs(30);

/// Lets go of the artifacts no plugin entry of the replicated state has
/// named for [`RELEASE_AFTER`] (unloaded, replaced by a newer version, or
/// held for a load that was refused), so that the node's bounds on
/// artifacts held count what it holds now, not what it ever held.
pub(crate) fn release_unreferenced(shared: &Shared) {
    use std::sync::atomic::Ordering;
    let held = shared.rpc.server.held_artifacts();
    let mut since = shared
        .artifact_loads
        .unreferenced
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if held.is_empty() {
        since.clear();
        return;
    }
    let referenced = shared.engine().referenced_artifacts();
    let now = std::time::Instant::now();
    since.retain(|sha, _| !referenced.contains(sha) && held.iter().any(|(h, _)| h == sha));
    let mut gone = Vec::new();
    for (sha, size) in held {
        if referenced.contains(&sha) {
            continue;
        }
        let first = *since.entry(sha).or_insert(now);
        if now.duration_since(first) >= RELEASE_AFTER {
            since.remove(&sha);
            shared.rpc.server.release_artifact(&sha);
            shared
                .artifact_loads
                .held_bytes
                .fetch_sub(size, Ordering::Relaxed);
            gone.push(sha);
        }
    }
    drop(since);
    if !gone.is_empty() {
        tracing::debug!(count = gone.len(), "released artifacts no plugin entry names");
        let _ = shared.command(Command::ReleaseArtifacts(gone));
    }
}

/// Delivers `PluginLoad(entry)` once its artifact is here and verified. A
/// newer load of the same entry replaces one still waiting.
pub(crate) fn load(shared: Arc<Shared>, entry: PluginEntry) {
    let Some(artifact) = entry.artifact.clone() else {
        shared.deliver(Event::PluginLoad(entry));
        return;
    };
    cancel(&shared, &entry);
    if shared.rpc.server.artifact(&artifact.sha256).is_some() {
        shared.deliver(Event::PluginLoad(entry));
        return;
    }
    let key = entry_key(&entry);
    let task_shared = shared.clone();
    let task_key = key.clone();
    // Registered before the task can finish: it removes itself at the end.
    let mut pending = shared
        .artifact_loads
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let task = tokio::spawn(async move {
        let shared = task_shared;
        let slots = shared.artifact_loads.slots.clone();
        let Ok(_slot) = slots.acquire_owned().await else {
            return;
        };
        // Another entry with the same bytes may have fetched them meanwhile.
        let result = match shared.rpc.server.artifact(&artifact.sha256) {
            Some(_) => Ok(None),
            None => fetch(&shared, &entry, &artifact).await.map(Some),
        };
        let still_wanted = shared
            .artifact_loads
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_key)
            .is_some();
        match result {
            Ok(fetched) => {
                let kept = match fetched {
                    Some(bytes) => {
                        crate::rpc::RpcCounters::bump(&shared.rpc.counters.artifacts_fetched);
                        hold(&shared, Arc::new(bytes)).map(|_| ())
                    }
                    None => Ok(()),
                };
                match kept {
                    Ok(()) if still_wanted => shared.deliver(Event::PluginLoad(entry)),
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(plugin = %entry.name, error = %e, "artifact fetched but not kept");
                        if still_wanted {
                            note_unavailable(&shared, &entry, &artifact.sha256);
                            shared.deliver(Event::ArtifactUnavailable {
                                plugin: entry,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
            Err(reason) => {
                crate::rpc::RpcCounters::bump(&shared.rpc.counters.artifacts_unavailable);
                tracing::warn!(plugin = %entry.name, %reason, "artifact unavailable");
                if still_wanted {
                    note_unavailable(&shared, &entry, &artifact.sha256);
                    shared.deliver(Event::ArtifactUnavailable {
                        plugin: entry,
                        reason,
                    });
                }
            }
        }
    }.in_current_span());
    pending.insert(key, task.abort_handle());
}
