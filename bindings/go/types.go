package tribe

import (
	"encoding/json"
	"fmt"
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

// MarshalText writes the kind's name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

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
		return fmt.Errorf("tribe: unknown plugin kind %q", b)
	}
	return nil
}

// TaskState is the state a task's members are asked to keep it in.
type TaskState uint32

// Task states.
const (
	TaskRunning TaskState = 1
	TaskStopped TaskState = 2
)

// Member is a node of the cluster as this node knows it (GET /v1/members).
type Member struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// State is "alive", "suspect", "failed" or "left".
	State string `json:"state"`
	// Generation of its identity; it grows when the node restarts.
	Generation uint64            `json:"generation"`
	Facts      map[string]string `json:"facts"`
	// Tribes whose live view holds it.
	Tribes []string `json:"tribes"`
	// Endpoints are the plugins it serves.
	Endpoints []Endpoint `json:"endpoints"`
	// Local is true for the node that answered.
	Local bool `json:"local"`
}

// Endpoint is a plugin a member serves.
type Endpoint struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Kind    Kind   `json:"kind"`
	// Addr is the TCP address serving its calls.
	Addr string `json:"addr"`
}

// Plugin is an entry of a tribe's plugin catalog.
type Plugin struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Kind    Kind   `json:"kind"`
	// SHA256 (hex) and Size of the artifact, when the entry has one.
	SHA256 string `json:"sha256,omitempty"`
	Size   uint64 `json:"size,omitempty"`
}

// Task is a task of a tribe.
type Task struct {
	ID string `json:"id"`
	// State is "running" or "stopped".
	State string `json:"state"`
	// Manifest is the task manifest, a JSON object (docs/task-manifest.md).
	Manifest json.RawMessage `json:"manifest"`
}

// TribeInfo is a tribe with its live members and catalog (GET /v1/tribes).
type TribeInfo struct {
	Name string `json:"name"`
	// Members are the live members, by hand or by policy, sorted.
	Members []string `json:"members"`
	// ExplicitMembers are the members by hand, up or not.
	ExplicitMembers []string `json:"explicit_members"`
	Plugins         []Plugin `json:"plugins"`
	Tasks           []Task   `json:"tasks"`
}

// Policy puts the nodes whose facts satisfy When (CEL over facts) in Tribe.
type Policy struct {
	Name  string `json:"name"`
	Tribe string `json:"tribe"`
	When  string `json:"when"`
}

// Status is a summary of the node (GET /v1/status).
type Status struct {
	Name             string `json:"name"`
	Addr             string `json:"addr"`
	MembersAlive     int    `json:"members_alive"`
	StateDigest      string `json:"state_digest"`
	Tribes           int    `json:"tribes"`
	BroadcastBacklog int    `json:"broadcast_backlog"`
	Version          string `json:"version"`
	// Encryption is "off" without a keyring, else the mode; PrimaryKey is
	// empty without a keyring.
	Encryption string `json:"encryption"`
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
	// without a keyring; Primary its sealing key's id.
	Encryption string       `json:"encryption"`
	Primary    string       `json:"primary"`
	Members    int          `json:"members"`
	Keys       []KeyHolding `json:"keys"`
}

// KeyHolding is one key across the live members.
type KeyHolding struct {
	ID          string   `json:"id"`
	InstalledOn []string `json:"installed_on"`
	PrimaryOn   []string `json:"primary_on"`
}

// Target names a plugin to call: a plugin of Kind served by a live member of
// Tribe (this node first when it serves it). An empty Version takes any.
type Target struct {
	Tribe   string
	Plugin  string
	Version string
	Kind    Kind
}

// CallInfo describes an incoming call.
type CallInfo struct {
	// Caller is the calling node's name.
	Caller string
	// Tribe the call came through.
	Tribe   string
	Plugin  string
	Version string
	// Budget is how long the caller still waited when the call arrived (at
	// most MaxCallBudget); the handler's context ends when it runs out,
	// counted from the call's arrival (its Deadline).
	Budget time.Duration
}
