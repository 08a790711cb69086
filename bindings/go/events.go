package tribe

import (
	"encoding/json"
	"fmt"
)

// EventKind says what an Event is about.
type EventKind uint32

// Event kinds (the numbers of the C ABI's TRIBE_EVENT_*).
const (
	EventJoined              EventKind = 1  // this node has a live peer
	EventIsolated            EventKind = 2  // this node lost every peer
	EventMemberJoined        EventKind = 3  // Member became alive (Addr): new, back, or restarted before it was found down
	EventMemberUpdated       EventKind = 4  // Member's facts or endpoints changed
	EventMemberLeft          EventKind = 5  // Member left on purpose
	EventMemberFailed        EventKind = 6  // Member stopped answering
	EventMemberReaped        EventKind = 7  // Member was forgotten
	EventTribeCreated        EventKind = 8  // Tribe came into existence
	EventTribeDeleted        EventKind = 9  // Tribe was deleted
	EventTribeJoined         EventKind = 10 // this node is in Tribe (ByHand, ByPolicy)
	EventTribeLeft           EventKind = 11 // this node is no longer in Tribe
	EventPluginLoad          EventKind = 12 // load Plugin of Tribe
	EventPluginUnload        EventKind = 13 // unload Plugin of Tribe
	EventTaskRun             EventKind = 14 // run Task of Tribe (already running: restart it with its changed manifest)
	EventTaskStop            EventKind = 15 // stop Task of Tribe
	EventArtifactCorrupt     EventKind = 16 // Holder sent bad bytes for Plugin
	EventArtifactUnavailable EventKind = 17 // Plugin's artifact could not be fetched (Message)
	EventPolicyError         EventKind = 18 // Policy could not be evaluated (Message)
	EventLog                 EventKind = 21 // a log record of libtribe's (Level, Target, Message; Config.LogLevel)
	EventIdentityClaimed     EventKind = 22 // another identity claims this node's name (Addr, Generation)
	EventClockSkew           EventKind = 23 // Member's clock is off this node's by OffsetMs
)

var eventNames = map[string]EventKind{
	"joined":               EventJoined,
	"isolated":             EventIsolated,
	"member_joined":        EventMemberJoined,
	"member_updated":       EventMemberUpdated,
	"member_left":          EventMemberLeft,
	"member_failed":        EventMemberFailed,
	"member_reaped":        EventMemberReaped,
	"tribe_created":        EventTribeCreated,
	"tribe_deleted":        EventTribeDeleted,
	"tribe_joined":         EventTribeJoined,
	"tribe_left":           EventTribeLeft,
	"plugin_load":          EventPluginLoad,
	"plugin_unload":        EventPluginUnload,
	"task_run":             EventTaskRun,
	"task_stop":            EventTaskStop,
	"artifact_corrupt":     EventArtifactCorrupt,
	"artifact_unavailable": EventArtifactUnavailable,
	"policy_error":         EventPolicyError,
	"identity_claimed":     EventIdentityClaimed,
	"clock_skew":           EventClockSkew,
	"log":                  EventLog,
}

// String gives the kind's stable snake_case name, e.g. "member_joined".
func (k EventKind) String() string {
	for name, kind := range eventNames {
		if kind == k {
			return name
		}
	}
	return fmt.Sprintf("EventKind(%d)", uint32(k))
}

// Event is something that happened to the node or the cluster. Which fields
// are set depends on Kind (see each EventKind).
type Event struct {
	// Kind is what happened; it says which of the other fields are set.
	Kind EventKind
	// Tribe the event is about (tribe, plugin, task and artifact events);
	// empty for other kinds.
	Tribe string
	// Member is the node a member event (EventMemberJoined ...
	// EventMemberReaped) or an EventClockSkew is about; empty for other
	// kinds.
	Member string
	// Addr is Member's address ("ip:port") for EventMemberJoined, or the
	// claiming identity's address for EventIdentityClaimed; empty for
	// other kinds.
	Addr string
	// ByHand is true when this node is in Tribe by hand (Join), for
	// EventTribeJoined; ByHand and ByPolicy may both be true.
	ByHand bool
	// ByPolicy is true when a policy puts this node in Tribe, for
	// EventTribeJoined.
	ByPolicy bool
	// Plugin is the catalog entry of plugin and artifact events; nil for
	// other kinds.
	Plugin *Plugin
	// Task is the task of task events, its manifest included; nil for
	// other kinds.
	Task *Task
	// Holder is the node that sent a corrupt artifact
	// (EventArtifactCorrupt); empty for other kinds.
	Holder string
	// Policy is the policy an EventPolicyError is about; empty for other
	// kinds.
	Policy string
	// Message explains an EventPolicyError or EventArtifactUnavailable,
	// and is the text of an EventLog record; empty for other kinds.
	Message string
	// Generation is the generation an EventIdentityClaimed claim carries
	// (compare Member.Generation); 0 for other kinds.
	Generation uint64
	// OffsetMs is Member's clock minus this node's, in milliseconds
	// (EventClockSkew): positive when Member's clock is ahead; 0 for other
	// kinds.
	OffsetMs int64
	// Level is an EventLog record's level: "error", "warn", "info",
	// "debug" or "trace"; empty for other kinds.
	Level string
	// Target is the Rust module that logged an EventLog record (its
	// tracing target, e.g. "tribe::engine"); empty for other kinds.
	Target string
}

// eventJSON is the C ABI's event JSON (docs/c-api.md).
type eventJSON struct {
	Kind     string  `json:"kind"`
	Tribe    string  `json:"tribe"`
	Name     string  `json:"name"`
	Addr     string  `json:"addr"`
	ByHand   bool    `json:"by_hand"`
	ByPolicy bool    `json:"by_policy"`
	Plugin   *Plugin `json:"plugin"`
	Task     *Task   `json:"task"`
	Holder   string  `json:"holder"`
	Policy   string  `json:"policy"`
	Message  string  `json:"message"`
	Reason   string  `json:"reason"`
	Gen      uint64  `json:"generation"`
	OffsetMs int64   `json:"offset_ms"`
	Level    string  `json:"level"`
	Target   string  `json:"target"`
}

func decodeEvent(kind EventKind, text []byte) (Event, error) {
	var j eventJSON
	if err := json.Unmarshal(text, &j); err != nil {
		return Event{Kind: kind}, err
	}
	if k, ok := eventNames[j.Kind]; ok {
		kind = k
	}
	msg := j.Message
	if msg == "" {
		msg = j.Reason
	}
	return Event{
		Kind:       kind,
		Tribe:      j.Tribe,
		Member:     j.Name,
		Addr:       j.Addr,
		ByHand:     j.ByHand,
		ByPolicy:   j.ByPolicy,
		Plugin:     j.Plugin,
		Task:       j.Task,
		Holder:     j.Holder,
		Policy:     j.Policy,
		Message:    msg,
		Generation: j.Gen,
		OffsetMs:   j.OffsetMs,
		Level:      j.Level,
		Target:     j.Target,
	}, nil
}
