package tribe

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// Kind is what a plugin does with metrics.
type Kind uint32

// Plugin kinds.
const (
	Collector Kind = 1 // gathers metrics
	Processor Kind = 2 // transforms metrics
	Publisher Kind = 3 // sends metrics somewhere
)

// String gives "collector", "processor" or "publisher".
func (k Kind) String() string {
	switch k {
	case Collector:
		return "collector"
	case Processor:
		return "processor"
	case Publisher:
		return "publisher"
	}
	return fmt.Sprintf("Kind(%d)", uint32(k))
}

// MarshalText writes the kind's name; a Kind other than the three is an
// error, as UnmarshalText could not read it back.
func (k Kind) MarshalText() ([]byte, error) {
	// Checked here, not with kindError: this file builds without cgo too.
	switch k {
	case Collector, Processor, Publisher:
		return []byte(k.String()), nil
	}
	return nil, fmt.Errorf("tribe: plugin kind %d is not tribe.Collector, tribe.Processor or tribe.Publisher", uint32(k))
}

// UnmarshalText reads "collector", "processor" or "publisher".
func (k *Kind) UnmarshalText(b []byte) error {
	switch string(b) {
	case "collector":
		*k = Collector
	case "processor":
		*k = Processor
	case "publisher":
		*k = Publisher
	default:
		return fmt.Errorf("tribe: unknown plugin kind %q", withheld(string(b)))
	}
	return nil
}

// TaskState is the state a task's members are asked to keep it in.
type TaskState uint32

// Task states.
const (
	// TaskRunning: members run the task (EventTaskRun); Task.State "running".
	TaskRunning TaskState = 1
	// TaskStopped: members keep the task stopped (EventTaskStop); Task.State
	// "stopped".
	TaskStopped TaskState = 2
)

// Member is a node of the cluster as this node knows it (GET /v1/members).
type Member struct {
	// Name is the node's name (its Config.Name), unique in the cluster.
	Name string `json:"name"`
	// Addr is its advertised address, "ip:port": the one port of its UDP
	// gossip and its TCP streams (Config.Advertise, else its bound address).
	Addr string `json:"addr"`
	// State is "alive", "suspect", "failed" or "left".
	State string `json:"state"`
	// Generation of its identity; it grows when the node restarts.
	Generation uint64 `json:"generation"`
	// Facts are its facts by key: the host facts it collected (none with
	// Config.NoHostFacts) and its user facts (Config.Facts, SetFact), which
	// override collected ones of the same key. Empty when it has none.
	Facts map[string]string `json:"facts"`
	// Tribes whose live view holds it (by hand or by policy); for a
	// failed or left member, the tribes it would be in were it up. Empty
	// when it is in none.
	Tribes []string `json:"tribes"`
	// Endpoints are the plugins it serves (Serve); empty when none.
	Endpoints []Endpoint `json:"endpoints"`
	// Local is true for the node that answered.
	Local bool `json:"local"`
}

// Endpoint is a plugin a member serves.
type Endpoint struct {
	// Name is the plugin's name, as given to Serve.
	Name string `json:"name"`
	// Version is the version served, as given to Serve (never empty).
	Version string `json:"version"`
	// Kind is the kind it is served as.
	Kind Kind `json:"kind"`
	// Addr is the TCP address serving its calls.
	Addr string `json:"addr"`
}

// Plugin is an entry of a tribe's plugin catalog.
type Plugin struct {
	// Name is the plugin's name, as given to LoadPlugin or
	// LoadPluginWithArtifact.
	Name string `json:"name"`
	// Version is the entry's version (never empty).
	Version string `json:"version"`
	// Kind is what the plugin does: Collector, Processor or Publisher.
	Kind Kind `json:"kind"`
	// SHA256 is the SHA-256 of the entry's artifact, 64 hex digits (what
	// LoadPluginWithArtifact returned and Artifact takes); empty for an
	// entry without an artifact (LoadPlugin).
	SHA256 string `json:"sha256,omitempty"`
	// Size is the artifact's length in bytes; 0 without an artifact, or
	// for an empty one (SHA256 tells them apart).
	Size uint64 `json:"size,omitempty"`
}

// Task is a task of a tribe.
type Task struct {
	// ID is the task's id, unique in its tribe.
	ID string `json:"id"`
	// State is "running" or "stopped".
	State string `json:"state"`
	// Manifest is the task manifest, a JSON object (docs/task-manifest.md).
	Manifest json.RawMessage `json:"manifest"`
}

// TribeInfo is a tribe with its live members and catalog (GET /v1/tribes).
type TribeInfo struct {
	// Name is the tribe's name.
	Name string `json:"name"`
	// Members are the live members, by hand or by policy, sorted.
	Members []string `json:"members"`
	// ExplicitMembers are the members by hand, up or not.
	ExplicitMembers []string `json:"explicit_members"`
	// Plugins is the tribe's plugin catalog (LoadPlugin,
	// LoadPluginWithArtifact); empty when it has none.
	Plugins []Plugin `json:"plugins"`
	// Tasks are the tribe's tasks, running and stopped; empty when it has
	// none.
	Tasks []Task `json:"tasks"`
}

// Policy puts the nodes whose facts satisfy When (CEL over facts) in Tribe.
type Policy struct {
	// Name is the policy's name, unique in the cluster.
	Name string `json:"name"`
	// Tribe is the tribe it puts nodes in (created once the policy holds
	// on some node).
	Tribe string `json:"tribe"`
	// When is the CEL expression over a node's facts, e.g.
	// `has(facts.rack) && facts.rack == "r1"`.
	When string `json:"when"`
}

// Status is a summary of the node (GET /v1/status).
type Status struct {
	// Name is the node's name (Node.Name).
	Name string `json:"name"`
	// Addr is the node's advertised address, "ip:port" (Node.Addr).
	Addr string `json:"addr"`
	// MembersAlive counts the live members this node knows, itself
	// included: 1 while it is alone.
	MembersAlive int `json:"members_alive"`
	// StateDigest is the digest of the replicated state in hex, as
	// Node.StateDigest gives it: equal on converged nodes.
	StateDigest string `json:"state_digest"`
	// Tribes counts the tribes this node knows to exist in the cluster,
	// not only those it is in.
	Tribes int `json:"tribes"`
	// BroadcastBacklog counts the gossip updates (membership changes and
	// state deltas) waiting to be sent to peers.
	BroadcastBacklog int `json:"broadcast_backlog"`
	// Version is the version of the libtribe that runs the node, as
	// LibraryVersion gives it.
	Version string `json:"version"`
	// Encryption is "off" without a keyring, else the mode: "accept",
	// "send" or "require".
	Encryption string `json:"encryption"`
	// PrimaryKey is the id (8 hex digits, see KeyID) of the key this node
	// seals with; empty without a keyring.
	PrimaryKey string `json:"primary_key"`
	// NameHeldBy is, while another live node runs under this node's name
	// with a newer generation (a copied configuration), the address it runs
	// at: this node keeps out of the cluster until that node goes, then
	// takes its name back. Empty while this node holds its name.
	NameHeldBy string `json:"name_held_by"`
	// KeyRefusedBy is a peer that refused this node's key in the last
	// minute (until an exchange with it succeeds): the tribe may have
	// rotated its keys without this node, which then lives on alone or
	// with others left behind; InstallKey of the tribe's current key on
	// this node brings it back. Empty otherwise.
	KeyRefusedBy string `json:"key_refused_by"`
}

// KeyStatus says which live nodes hold which keys (ids only, never keys).
type KeyStatus struct {
	// Encryption is this node's mode ("accept", "send", "require"), empty
	// without a keyring.
	Encryption string `json:"encryption"`
	// Primary is the id (8 hex digits, see KeyID) of the key this node
	// seals with; empty without a keyring.
	Primary string `json:"primary"`
	// Members counts the live members, this node included: those Keys
	// report on.
	Members int `json:"members"`
	// Keys are the keys some live member holds, one each; empty when none
	// does (no member has a keyring).
	Keys []KeyHolding `json:"keys"`
}

// KeyHolding is one key across the live members.
type KeyHolding struct {
	// ID is the key's public id, 8 hex digits (see KeyID).
	ID string `json:"id"`
	// InstalledOn names the live nodes whose keyring holds the key.
	InstalledOn []string `json:"installed_on"`
	// PrimaryOn names the live nodes that seal with the key (their
	// primary); empty when none does yet, or any more.
	PrimaryOn []string `json:"primary_on"`
}

// Target names a plugin to call: a plugin of Kind served by a live member of
// Tribe (this node first when it serves it). An empty Version takes any.
type Target struct {
	// Tribe is the tribe whose live members are asked. The calling node
	// need not be in it, but must know it (ErrUnknownTribe otherwise).
	Tribe string
	// Plugin is the plugin's name, as its members serve it (Serve).
	Plugin string
	// Version is the version wanted; empty for any version served.
	Version string
	// Kind is the kind the plugin is served as: Collector, Processor or
	// Publisher (the zero Kind is ErrInvalidArgument).
	Kind Kind
}

// CallInfo describes an incoming call.
type CallInfo struct {
	// Caller is the calling node's name.
	Caller string
	// Tribe the call came through.
	Tribe string
	// Plugin is the plugin called, as given to Serve.
	Plugin string
	// Version is the version of the served plugin that takes the call, as
	// given to Serve, also when the caller asked for any version.
	Version string
	// Budget is how long the caller still waited when the call arrived (at
	// most MaxCallBudget); the handler's context ends when it runs out,
	// counted from the call's arrival (its Deadline).
	Budget time.Duration
}

// withheld is text quoted in an error message with each key in it (44
// characters of base64 of 32 bytes, as Keygen makes one; also one at the
// end of a path or a longer run of base64) replaced by "(a key, withheld)":
// a key given in the wrong place must not end in a log. libtribe withholds
// keys from its own messages the same way.
func withheld(text string) string {
	return keyRun.ReplaceAllStringFunc(text, func(run string) string {
		at := len(run) - 44
		if b, err := base64.StdEncoding.DecodeString(run[at:]); err == nil && len(b) == 32 {
			return run[:at] + "(a key, withheld)"
		}
		return run
	})
}

// shownName is a name the caller gave as an "unknown" error quotes it, as
// libtribe does: a key in it withheld, then cut at 80 characters.
func shownName(name string) string {
	name = withheld(name)
	if runes := []rune(name); len(runes) > 80 {
		return string(runes[:80]) + "..."
	}
	return name
}

// keyRun is a run of base64 characters long enough to end in a key.
var keyRun = regexp.MustCompile(`[A-Za-z0-9+/]{43,}=`)
