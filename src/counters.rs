//! Plain counters kept by the engine; the runtime and the admin API read a
//! snapshot of them.

/// Counts of what the engine saw and did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes of datagrams received.
    pub datagram_bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes of datagrams sent.
    pub datagram_bytes_out: u64,
    /// Stream frames received.
    pub frames_in: u64,
    /// Bytes of stream frames received.
    pub frame_bytes_in: u64,
    /// Stream frames queued for sending (a frame to a peer that cannot be
    /// reached is counted too).
    pub frames_out: u64,
    /// Bytes of stream frames queued for sending.
    pub frame_bytes_out: u64,
    /// Datagrams dropped: bad envelope (magic, version, truncated, oversized).
    pub datagram_decode_errors: u64,
    /// Datagrams dropped: sealed with an unknown key or failing authentication.
    pub datagram_auth_errors: u64,
    /// Plaintext datagrams refused because encryption is required.
    pub plaintext_datagrams_refused: u64,
    /// Plaintext streams refused because encryption is required.
    pub plaintext_streams_refused: u64,
    /// Streams whose frames failed authentication (tampered, replayed,
    /// reordered, another cluster's label).
    pub stream_auth_errors: u64,
    /// Streams whose peer did not finish the setup (hello, channel) in time.
    pub streams_stalled: u64,
    /// Accepted connections closed at once: every place held an exchange,
    /// or their host had as many setups under way as allowed (a flood).
    pub streams_over_cap: u64,
    /// Connections the TCP listener failed to accept (the process out of
    /// file descriptors, say); accepting pauses 100 ms after such a failure.
    pub accept_errors: u64,
    /// Writes of the data dir (state or keyring) that failed; retried each
    /// second.
    pub data_dir_errors: u64,
    /// Lookups of a seed given by name that failed (no such name yet, DNS
    /// down); retried while the node is alone.
    pub seed_lookups_failed: u64,
    /// Suspects declared down early because their address refused a
    /// connection (nothing listens there any more).
    pub suspects_confirmed: u64,
    /// Pings that told a member this node suspects it, so that it can
    /// refute at once (Lifeguard's buddy system).
    pub suspects_told: u64,
    /// Streams refused for using a key this node does not hold.
    pub stream_unknown_keys: u64,
    /// Streams on which a peer refused this node's key (this node is behind
    /// a key rotation).
    pub key_rejections: u64,
    /// Keyring records refused because this node does not require
    /// encryption (they could have come over a plaintext link).
    pub keyring_records_refused: u64,
    /// Datagrams dropped: another cluster's label.
    pub label_mismatches: u64,
    /// Datagrams the membership protocol refused: a malformed SWIM payload,
    /// or one it refuses for its state (the reason is logged at most every
    /// 10 minutes).
    pub gossip_errors: u64,
    /// Stream frames dropped as malformed or unexpected, and connections that are no tribe stream (an HTTP or TLS client at the gossip port); logged at a limited rate with the peer.
    pub frame_decode_errors: u64,
    /// Records refused by validation.
    pub invalid_records: u64,
    /// Records refused for carrying a version too far in the future.
    pub clock_drift_rejections: u64,
    /// Records merged that were news.
    pub records_merged: u64,
    /// Deltas sent as gossip broadcasts.
    pub deltas_broadcast: u64,
    /// Deltas too large for gossip (left to anti-entropy).
    pub deltas_too_large: u64,
    /// Anti-entropy exchanges started by this node.
    pub push_pulls_started: u64,
    /// Anti-entropy exchanges completed (either side).
    pub push_pulls_completed: u64,
    /// Anti-entropy exchanges that failed (connect error, timeout, bad frame).
    pub push_pulls_failed: u64,
    /// Of the completed exchanges, those whose digests showed both sides in
    /// step, so no member list or record travelled (either side).
    pub push_pulls_in_sync: u64,
    /// Tombstones collected.
    pub tombstones_collected: u64,
    /// Identities refused for a generation beyond the clock horizon.
    pub identities_refused: u64,
    /// Identities heard that claim this node's name and would displace it.
    pub identity_claims: u64,
    /// New generations this node took because peers had found it down
    /// while it ran (repeated: they do not hear its gossip).
    pub renewals: u64,
    /// Times a peer's clock was found off ours by more than the report bound.
    pub clock_skew_reports: u64,
    /// Median offset of the peers' clocks from this node's, in ms (a gauge).
    pub clock_offset_ms: i64,
    /// Records kept from before a long absence that the cluster no longer
    /// knew (deleted since) and that were dropped instead of restored, and
    /// records of a tribe whose deletion was collected (written into it
    /// while it was being deleted).
    pub stale_records_dropped: u64,
    /// Records in gossip datagrams written longer ago than the tombstone
    /// grace (recorded traffic replayed, or a writer whose clock is that
    /// far behind), refused: only exchanges bring records that old.
    pub stale_gossip_refused: u64,
    /// Members gossip hears alive whose state exchanges with this node
    /// failed 3 or more times in a row, now (a gauge; see the warning in
    /// the log).
    pub members_failing_exchanges: u64,
    /// Records from peers refused because their kind is at its limit.
    pub records_over_limit: u64,
    /// Events dropped for subscribers that fell behind (kept by the runtime;
    /// through the C ABI, also those of the host's event queue).
    pub events_dropped: u64,
}
