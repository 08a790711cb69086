package tribe

/*
#include <stdlib.h>
#include "tribe.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"time"
	"unsafe"
)

// CreateTribe creates an empty tribe; it then spreads to every node.
// ErrTribeExists if it exists.
func (n *Node) CreateTribe(tribe string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_create_tribe(p, a[0], e)
	}, tribe)
}

// DeleteTribe deletes a tribe with its catalog, memberships and the policies
// that target it. ErrUnknownTribe if it does not exist.
func (n *Node) DeleteTribe(tribe string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_delete_tribe(p, a[0], e)
	}, tribe)
}

// Join puts node (any known node; "" for this one) in tribe by hand; the
// tribe must exist (ErrUnknownTribe otherwise: CreateTribe, or a policy,
// makes it).
func (n *Node) Join(tribe, node string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		member := a[1]
		if node == "" {
			member = nil
		}
		return C.tribe_node_join(p, a[0], member, e)
	}, tribe, node)
}

// Leave removes the membership by hand of node ("" for this one) in tribe;
// a membership by policy stays while its policy holds.
func (n *Node) Leave(tribe, node string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		member := a[1]
		if node == "" {
			member = nil
		}
		return C.tribe_node_leave(p, a[0], member, e)
	}, tribe, node)
}

// AddPolicy adds a policy: the nodes whose facts satisfy when (CEL over
// facts, e.g. `facts.rack == "r1"`) join tribe, which is created when the
// policy first holds on some node (CreateTribe first to fill its catalog
// before then; with StateLimits.Tribes reached, it is created once room
// frees, and an EventPolicyError says so meanwhile). A bad expression
// gives a *PolicyError (matching ErrInvalidPolicy) and never spreads.
// Policies apply in the background: the tribe and this node's place in it
// may appear a moment (about a millisecond) after AddPolicy returns.
func (n *Node) AddPolicy(name, tribe, when string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_add_policy(p, a[0], a[1], a[2], e)
	}, name, tribe, when)
}

// RemovePolicy removes a policy. ErrUnknownPolicy if it does not exist.
func (n *Node) RemovePolicy(name string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_remove_policy(p, a[0], e)
	}, name)
}

// SetFact sets a user fact of this node (overriding a collected fact of that
// name); policies are evaluated again and the fact spreads to peers. A node
// has at most 256 facts, the collected ones included: a new one beyond that
// is ErrInvalidArgument.
func (n *Node) SetFact(key, value string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_set_fact(p, a[0], a[1], e)
	}, key, value)
}

// RemoveFact removes a user fact of this node. ErrUnknownFact if it is not one.
func (n *Node) RemoveFact(key string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_remove_fact(p, a[0], e)
	}, key)
}

// LoadPlugin adds a plugin entry to a tribe's catalog: every member, also a
// later one, gets an EventPluginLoad.
func (n *Node) LoadPlugin(tribe, name, version string, kind Kind) error {
	if err := kindError(kind); err != nil {
		return err
	}
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_load_plugin(p, a[0], a[1], a[2], C.uint32_t(kind), e)
	}, tribe, name, version)
}

// LoadPluginWithArtifact adds a plugin entry that carries artifact bytes (a
// script, a binary) to a tribe's catalog and returns their SHA-256 in hex.
// This node holds the bytes and hands them out: every member, also a later
// one, fetches them and checks them against the hash before its
// EventPluginLoad (whose Plugin then has SHA256 and Size), and reads them
// with Artifact. The bytes stay held also when the entry is refused
// (ErrPluginExists).
func (n *Node) LoadPluginWithArtifact(tribe, name, version string, kind Kind, artifact []byte) (string, error) {
	if err := kindError(kind); err != nil {
		return "", err
	}
	var data *C.uint8_t
	if len(artifact) > 0 {
		data = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(artifact)))
	}
	var sha *C.char
	err := n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_load_plugin_artifact(p, a[0], a[1], a[2], C.uint32_t(kind),
			data, C.size_t(len(artifact)), &sha, e)
	}, tribe, name, version)
	runtime.KeepAlive(artifact)
	if err != nil {
		return "", err
	}
	defer C.tribe_string_free(sha)
	return C.GoString(sha), nil
}

// Artifact returns a copy of the verified bytes of an artifact this node
// holds (its own, or one it fetched for a plugin entry of a tribe it is in),
// by their SHA-256 in hex (Plugin.SHA256 of an EventPluginLoad).
// ErrUnknownArtifact when it holds none (not fetched yet, or of a tribe it
// is not in); ErrInvalidArgument when sha256 is not 64 hex digits.
func (n *Node) Artifact(sha256 string) ([]byte, error) {
	var out *C.uint8_t
	var l C.size_t
	err := n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_artifact(p, a[0], &out, &l, e)
	}, sha256)
	if err != nil {
		return nil, err
	}
	defer C.tribe_bytes_free(out, l)
	return goBytes(out, l), nil
}

// UnloadPlugin removes a plugin entry from a tribe's catalog.
func (n *Node) UnloadPlugin(tribe, name, version string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_unload_plugin(p, a[0], a[1], a[2], e)
	}, tribe, name, version)
}

// AddTask adds a running task to a tribe; members get EventTaskRun.
// manifest is the JSON object of docs/task-manifest.md: a string, []byte or
// json.RawMessage is passed as is, anything else is encoded with
// encoding/json.
func (n *Node) AddTask(tribe, id string, manifest any) error {
	return n.AddTaskWithState(tribe, id, manifest, TaskRunning)
}

// AddTaskWithState adds a task in the given state.
func (n *Node) AddTaskWithState(tribe, id string, manifest any, state TaskState) error {
	if err := taskStateError(state); err != nil {
		return err
	}
	var text string
	switch m := manifest.(type) {
	case string:
		text = m
	case []byte:
		text = string(m)
	case json.RawMessage:
		text = string(m)
	default:
		b, err := json.Marshal(m)
		if err != nil {
			return &Error{Code: "invalid_argument", Message: "task manifest: " + err.Error()}
		}
		text = string(b)
	}
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_add_task(p, a[0], a[1], a[2], C.uint32_t(state), e)
	}, tribe, id, text)
}

// SetTaskState asks members to run or stop a task.
func (n *Node) SetTaskState(tribe, id string, state TaskState) error {
	if err := taskStateError(state); err != nil {
		return err
	}
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_set_task_state(p, a[0], a[1], C.uint32_t(state), e)
	}, tribe, id)
}

// RemoveTask removes a task from a tribe.
func (n *Node) RemoveTask(tribe, id string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_remove_task(p, a[0], a[1], e)
	}, tribe, id)
}

// InstallKey adds a key (base64) to every node's keyring. The node must have
// been started with a key, in the "require" mode.
func (n *Node) InstallKey(key string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_install_key(p, a[0], e)
	}, key)
}

// UseKey makes an installed key (its 8-hex-digit id or the base64 key) the
// sealing key of every node. A key installed through another node a moment
// ago is waited for (up to 3 s until some member is heard to hold it, else
// ErrUnknownKey). Then it waits (up to 10 s) until every live member, this
// node included, holds the key; ErrKeyNotSpread (nothing changed) if one
// does not.
func (n *Node) UseKey(key string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_use_key(p, a[0], e)
	}, key)
}

// RemoveKey removes a key (id or base64) from every node's keyring;
// ErrPrimaryKey for the primary key (this node's own primary after up to 3 s,
// unless a switch made through another node is heard of by then). It first
// waits (up to 10 s) until no live member, this node included, seals with
// the key any more; ErrKeyNotSpread otherwise. It returns once this node
// dropped the key; the removal reaches the other members by gossip (Keys
// lists it on them until then, well under a second on a LAN).
func (n *Node) RemoveKey(key string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_remove_key(p, a[0], e)
	}, key)
}

// SetEncryption changes this node's encryption mode live: "accept", "send"
// or "require".
func (n *Node) SetEncryption(mode string) error {
	return n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_set_encryption(p, a[0], e)
	}, mode)
}

// snapshot takes one JSON snapshot from libtribe.
func (n *Node) snapshot(f func(p *C.tribe_node, a []*C.char, out **C.char, outLen *C.size_t, e **C.tribe_error) C.uint32_t, args ...string) ([]byte, error) {
	var out []byte
	err := n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		var text *C.char
		var l C.size_t
		rc := f(p, a, &text, &l, e)
		if rc == C.TRIBE_OK {
			out = C.GoBytes(unsafe.Pointer(text), C.int(l))
			C.tribe_string_free(text)
		}
		return rc
	}, args...)
	return out, err
}

func decode[T any](text []byte, err error) (T, error) {
	var v T
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(text, &v); err != nil {
		return v, &Error{Code: "invalid_argument", Message: "decoding libtribe's JSON: " + err.Error()}
	}
	return v, nil
}

// Members lists every known member, this node included.
func (n *Node) Members() ([]Member, error) {
	return decode[[]Member](n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_members_json(p, o, l, e)
	}))
}

// Member gives one member by name; ErrUnknownNode if none, ErrInvalidName
// for a name no node can have (as Tribe does).
func (n *Node) Member(name string) (Member, error) {
	// Checked as every other method's strings are (by libtribe there).
	if err := CheckName(name); err != nil {
		return Member{}, err
	}
	members, err := n.Members()
	if err != nil {
		return Member{}, err
	}
	for _, m := range members {
		if m.Name == name {
			return m, nil
		}
	}
	return Member{}, &Error{Code: "unknown_node", Message: fmt.Sprintf("unknown node %q", shownName(name))}
}

// Tribes lists every tribe with its live members and catalog.
func (n *Node) Tribes() ([]TribeInfo, error) {
	return decode[[]TribeInfo](n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_tribes_json(p, o, l, e)
	}))
}

// Tribe gives one tribe; ErrUnknownTribe if it does not exist,
// ErrInvalidName for a name no tribe can have (empty, say).
func (n *Node) Tribe(name string) (TribeInfo, error) {
	return decode[TribeInfo](n.snapshot(func(p *C.tribe_node, a []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_tribe_json(p, a[0], o, l, e)
	}, name))
}

// Policies lists every policy.
func (n *Node) Policies() ([]Policy, error) {
	return decode[[]Policy](n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_policies_json(p, o, l, e)
	}))
}

// Keys says which live nodes hold which keys (ids only).
func (n *Node) Keys() (KeyStatus, error) {
	return decode[KeyStatus](n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_keys_json(p, o, l, e)
	}))
}

// Status summarises the node: name, address, live members, state digest,
// encryption.
func (n *Node) Status() (Status, error) {
	return decode[Status](n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_status_json(p, o, l, e)
	}))
}

// Counters gives the node's counters (traffic, refusals, sync, calls) as
// {"engine": {...}, "calls": {...}}; the names are in docs/c-api.md.
// "events_dropped" counts the events the Events channel had no room for too
// (as EventsDropped does).
//
// While Close or Abort runs it gives the counts so far, and after them the
// final counts, taken as the node stopped.
func (n *Node) Counters() (map[string]map[string]json.Number, error) {
	defer runtime.KeepAlive(n)
	gcPoint()
	in := n.inner()
	in.mu.RLock()
	defer in.mu.RUnlock()
	if in.ptr == nil {
		if in.finalCounters == nil {
			return nil, errClosed()
		}
		return withChanDropped(in, in.finalCounters)
	}
	// Also while the node closes: it counts until it is freed.
	var text *C.char
	var l C.size_t
	var cerr *C.tribe_error
	if err := takeError(C.tribe_node_counters_json(in.ptr, &text, &l, &cerr), cerr); err != nil {
		return nil, err
	}
	defer C.tribe_string_free(text)
	return withChanDropped(in, C.GoBytes(unsafe.Pointer(text), C.int(l)))
}

// withChanDropped decodes libtribe's counters and adds the events in's
// Events channel had no room for to its "events_dropped".
func withChanDropped(in *node, text []byte) (map[string]map[string]json.Number, error) {
	m, err := decode[map[string]map[string]json.Number](text, nil)
	if err != nil {
		return nil, err
	}
	if engine := m["engine"]; engine != nil {
		if n, perr := strconv.ParseUint(engine["events_dropped"].String(), 10, 64); perr == nil {
			engine["events_dropped"] = json.Number(strconv.FormatUint(n+in.chanDropped.Load(), 10))
		}
	}
	return m, nil
}

// finalCounters reads the counters of a stopped node, before it is freed.
func finalCounters(p *C.tribe_node) []byte {
	var text *C.char
	var l C.size_t
	if C.tribe_node_counters_json(p, &text, &l, nil) != C.TRIBE_OK {
		return nil
	}
	defer C.tribe_string_free(text)
	return C.GoBytes(unsafe.Pointer(text), C.int(l))
}

// StateDigest is the digest of the replicated state (hex): equal on
// converged nodes.
func (n *Node) StateDigest() (string, error) {
	text, err := n.snapshot(func(p *C.tribe_node, _ []*C.char, o **C.char, l *C.size_t, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_state_digest(p, o, l, e)
	})
	return string(text), err
}

// Keygen makes a new random cluster key, as base64 text (what `tribe keygen`
// prints).
func Keygen() (string, error) {
	gcPoint()
	var text *C.char
	var l C.size_t
	var cerr *C.tribe_error
	if err := takeError(C.tribe_keygen(&text, &l, &cerr), cerr); err != nil {
		return "", err
	}
	defer C.tribe_string_free(text)
	return C.GoStringN(text, C.int(l)), nil
}

// KeyID is the public id (8 hex digits) of a key (base64, as Keygen gives),
// as Keys and Status name keys: what to watch while a key spreads.
func KeyID(key string) (string, error) {
	gcPoint()
	var args cstrings
	defer args.free()
	ckey := args.str(key)
	if err := args.err(); err != nil {
		return "", err
	}
	var text *C.char
	var l C.size_t
	var cerr *C.tribe_error
	if err := takeError(C.tribe_key_id(ckey, &text, &l, &cerr), cerr); err != nil {
		return "", err
	}
	defer C.tribe_string_free(text)
	return C.GoStringN(text, C.int(l)), nil
}

// CheckName checks name against the naming rules of nodes, tribes,
// policies and plugins (1 to 64 bytes, a letter or a digit first, then
// letters, digits and _ - . : @), so that a program can refuse a bad name
// in its own configuration before anything uses it. It returns nil, or the
// error a command given that name would return: ErrInvalidName with a
// message saying which rule the name breaks; ErrInvalidArgument for a NUL
// byte and ErrInvalidUTF8 for invalid UTF-8, as for every string this
// package hands to libtribe. It needs no node and does not block.
func CheckName(name string) error {
	return checkText(name, func(s *C.char, e **C.tribe_error) C.uint32_t { return C.tribe_name_check(s, e) })
}

// CheckVersion checks a plugin version against its rules, those of names
// (see CheckName) but up to 32 bytes. It returns nil, or the error
// LoadPlugin or Serve would return: ErrInvalidName with a message saying
// which rule the version breaks; ErrInvalidArgument for a NUL byte and
// ErrInvalidUTF8 for invalid UTF-8. It needs no node and does not block.
func CheckVersion(version string) error {
	return checkText(version, func(s *C.char, e **C.tribe_error) C.uint32_t { return C.tribe_version_check(s, e) })
}

// checkText runs one of the C ABI's string checks on s.
func checkText(s string, check func(s *C.char, e **C.tribe_error) C.uint32_t) error {
	gcPoint()
	var args cstrings
	defer args.free()
	cs := args.str(s)
	if err := args.err(); err != nil {
		return err
	}
	var cerr *C.tribe_error
	return takeError(check(cs, &cerr), cerr)
}

// CheckStepRequest checks a step request, the payload a publisher or
// processor of a task receives ({"config": {...}, "metrics": [...]}), as
// the agent's publishers do, and returns the number of metrics in it (a
// publisher answers that number, as text). An empty payload, one that is
// not JSON or has text after it, a metric without a name, a control
// character or a batch over the limits is ErrInvalidArgument with a
// message saying what is wrong, and 0. It needs no node and does not
// block.
func CheckStepRequest(payload []byte) (int, error) {
	gcPoint()
	var data *C.uint8_t
	if len(payload) > 0 {
		data = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(payload)))
	}
	var metrics C.size_t
	var cerr *C.tribe_error
	err := takeError(C.tribe_step_request_check(data, C.size_t(len(payload)), &metrics, &cerr), cerr)
	runtime.KeepAlive(payload)
	if err != nil {
		return 0, err
	}
	return int(metrics), nil
}

// LibraryVersion is the version of the linked libtribe, e.g. "0.1.0".
func LibraryVersion() string { return C.GoString(C.tribe_version()) }

// ABIVersion is the C ABI version of the linked libtribe. Start refuses
// with ErrConfig when it is not the version of the header this package was
// built with (include/tribe.h, TRIBE_ABI_VERSION).
func ABIVersion() int { return int(C.tribe_abi_version()) }

// JoinCluster joins the cluster through places ("host:port": addresses, or
// names looked up, as Config.Seeds takes), also while this node is in a
// cluster already (two clusters then merge; their records merge as every
// record does, the later write winning: a tribe or policy deleted on one
// side within the tombstone grace deletes one of that name on the other
// when the deletion is the later write). Each place gets a join exchange:
// this node sends its view and takes the peer's, so when JoinCluster
// returns, the node knows the peer's members, tribes and catalogs. The
// addresses become seeds too, those that did not answer also: a node alone,
// or one that loses every peer later, tries them again. It returns how
// many addresses completed their exchange, after waiting for all (up to 5 s
// for the lookups plus 12 s for the exchanges, then those still under way
// are given up and the ones that completed count; a node runs 16 joins at
// once, the others wait their turn; Close ends the wait at once with
// ErrShuttingDown).
//
// Errors: an *Error with code "invalid_argument" (no place, more than 256,
// one not host:port, only this node's own address); ErrIO when no address
// completed its exchange (the message names each and why: refused, no
// answer, another key, a name that does not resolve, this node itself);
// ErrShuttingDown, ErrClosed.
func (n *Node) JoinCluster(places ...string) (int, error) {
	return n.joinCluster(nil, 0, places)
}

// JoinClusterContext is JoinCluster within ctx. At ctx's deadline its
// exchanges still under way are given up and the addresses reached by then
// count (as memberlist's Join succeeds when any address answered); when
// none was, the error matches ErrTimeout and context.DeadlineExceeded if
// no address had answered at all, else it is ErrIO naming each address and
// why (another key, refused, still under way at the deadline). A deadline
// a day or more away is no limit but the join's own.
// Cancelled, it ends at once with an error matching ErrCancelled and
// context.Canceled. A join given up drops its exchanges still under way
// at once (their connections closed, their addresses not kept as seeds
// unless a join exchange completed with them); those that completed before
// keep what they merged (the peers' members, tribes and catalogs), and
// their addresses stay seeds. An exchange given up may already have
// reached its peer, which then knows this node: a join that timed out may
// still take effect.
func (n *Node) JoinClusterContext(ctx context.Context, places ...string) (int, error) {
	if ctx == nil {
		return 0, &Error{Code: "invalid_argument", Message: "nil Context"}
	}
	if ctx.Done() == nil {
		return n.joinCluster(nil, 0, places)
	}
	// The deadline is the join's own limit, which counts what it reached;
	// one past any join's length (or past what a Duration holds) is none.
	var limitMs uint64
	if d, ok := ctx.Deadline(); ok {
		if left := time.Until(d); left < 24*time.Hour {
			limitMs = uint64(max(1, (left+time.Millisecond-1)/time.Millisecond))
		}
	}
	var cancel *C.tribe_cancel
	if rc := C.tribe_cancel_new(&cancel, nil); rc != C.TRIBE_OK {
		return 0, takeError(rc, nil)
	}
	if ctx.Err() != nil {
		// Ended already: bad places are still told as such, and a join
		// through good ones does not start.
		C.tribe_cancel_trigger(cancel)
	}
	// The watcher ends before the token is freed.
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-ctx.Done():
			// The deadline passing is the limit's to tell.
			if limitMs == 0 || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				C.tribe_cancel_trigger(cancel)
			}
		case <-stop:
		}
	}()
	joined, err := n.joinCluster(cancel, limitMs, places)
	close(stop)
	<-watched
	C.tribe_cancel_free(cancel)
	switch {
	case errors.Is(err, ErrCancelled):
		return 0, abandoned("the join", ctxEnd(ctx, context.Canceled))
	case errors.Is(err, ErrTimeout) && limitMs > 0:
		// Said as C says it: nothing was reached (what was counts).
		end := ctxEnd(ctx, context.DeadlineExceeded)
		msg := "the join reached no address before its deadline"
		var c *causeError
		if errors.As(end, &c) {
			msg += ": " + c.cause.Error()
		}
		return 0, &Error{Code: "timeout", Message: msg, cause: end}
	}
	return joined, err
}

func (n *Node) joinCluster(cancel *C.tribe_cancel, limitMs uint64, places []string) (int, error) {
	defer runtime.KeepAlive(n)
	if err := nulErr(places...); err != nil {
		return 0, err
	}
	if len(places) > maxJoinPlaces {
		return 0, &Error{Code: "invalid_argument", Message: fmt.Sprintf("%d addresses to join through; at most %d", len(places), maxJoinPlaces)}
	}
	// The array of pointers is C memory (Go memory passed to C may not
	// hold Go pointers), and so are the strings it points to.
	var array **C.char
	if len(places) > 0 {
		array = (**C.char)(C.calloc(C.size_t(len(places)), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		ptrs := unsafe.Slice(array, len(places))
		for i, p := range places {
			ptrs[i] = C.CString(p)
		}
		defer func() {
			for _, p := range ptrs {
				C.free(unsafe.Pointer(p))
			}
			C.free(unsafe.Pointer(array))
		}()
	}
	var joined C.size_t
	err := n.inner().do(func(p *C.tribe_node, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_join_cluster_cancellable(p, array, C.size_t(len(places)), C.uint64_t(limitMs), cancel, &joined, e)
	})
	return int(joined), err
}

// Places JoinCluster takes at most (libtribe's bound, checked here before
// any C memory is taken for them).
const maxJoinPlaces = 256
