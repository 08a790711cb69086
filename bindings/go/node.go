package tribe

/*
#include <stdlib.h>
#include "tribe.h"
*/
import "C"

import (
	"context"
	"fmt"
	"log"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// DefaultEventBuffer is the capacity of the Events channel when
// Config.EventBuffer is 0.
const DefaultEventBuffer = 1024

// MaxEventBuffer is the largest Config.EventBuffer: the channel's memory is
// allocated at Start (about 176 MiB at this size, see Config.EventBuffer).
const MaxEventBuffer = 1 << 20

// Config says how to start a node. Only Name is required.
type Config struct {
	// Name of the node, unique in the cluster.
	Name string
	// Bind is the address for UDP gossip and TCP (one port); port 0 picks a
	// free one. Default "127.0.0.1:0".
	Bind string
	// Advertise is the address peers use to reach this node (NAT, binding
	// 0.0.0.0). Default: the bound address; required when Bind's host is
	// unspecified (0.0.0.0 or [::]), which Start refuses otherwise.
	Advertise string
	// Seeds are nodes ("host:port") to join through. A host name is looked
	// up by the node when it starts and again while it has no live peer: one
	// that does not resolve yet is retried, not an error.
	Seeds []string
	// Facts are user facts; they override collected host facts of the same key.
	Facts map[string]string
	// Profile is the timing profile: "lan" (default), "wan" or "local".
	Profile string
	// ReapAfter is how long a failed or left member stays listed before it
	// is forgotten, over the profile's (24 h; 5 min with "local"); 0 keeps
	// the profile's. A reap deletes the member's record and memberships by
	// hand for the whole tribe, so the shortest ReapAfter in a tribe
	// decides for every node: keep it alike everywhere (the agents'
	// --reap-after), and longer than any pause a member may come back from
	// (hours, not seconds). Up to 365 days, rounded up to the millisecond;
	// ErrInvalidArgument when negative or longer.
	ReapAfter time.Duration
	// Label is the cluster label: nodes with different labels never talk.
	Label string
	// Key is the cluster key (base64 of 32 bytes, see Keygen) that seals
	// and opens traffic. Without a key traffic is plaintext: for tests only.
	Key string
	// KeyFile is a file holding the cluster key (as `tribe keygen` writes
	// it), in place of Key: ErrConfig with both, ErrIO when unreadable,
	// ErrConfig when it is not a regular file (a FIFO or a device is
	// refused at once, not waited on) or is over 4096 bytes.
	KeyFile string
	// ExtraKeys also open traffic (they do not seal); they need a Key or
	// KeyFile (ErrConfig without one).
	ExtraKeys []string
	// Encryption is the mode with a key: "require" (default), "send" or
	// "accept" (the steps of turning encryption on in a running tribe). A
	// mode without a Key (or a DataDir holding a keyring) is ErrConfig.
	Encryption string
	// DataDir keeps known peers, memberships by hand and the keyring across
	// restarts; created if missing.
	DataDir string
	// LogLevel sends libtribe's log records from this level on as EventLog
	// events: "error", "warn", "info", "debug" or "trace" ("" or "off":
	// none). A wrong key, a plaintext peer or a wrong label shows there.
	LogLevel string
	// NoHostFacts turns off collecting host facts (architecture, os_dist, ...).
	NoHostFacts bool
	// WorkerThreads of the node's runtime (1 to 64; 0: the default, 2).
	WorkerThreads int
	// Limits of remote calls; zero fields keep the defaults.
	Limits Limits
	// StateLimits cap the replicated state; zero fields keep the defaults.
	StateLimits StateLimits
	// EventBuffer is the capacity of the Events channel (0: DefaultEventBuffer;
	// at most MaxEventBuffer). Each slot holds an Event by value, 176 bytes
	// on 64-bit platforms, allocated at Start and scanned by every garbage
	// collection: the default costs 176 KiB, MaxEventBuffer 176 MiB (some
	// 20 ms of marking per GC cycle). Size it for the bursts to absorb.
	EventBuffer int
	// BaseContext gives its values (a logger, a tracer) to every handler's
	// context. Its cancellation and deadline do not reach the handlers:
	// they end with their call or at Close. Nil is context.Background().
	BaseContext context.Context
	// ErrorLog takes the line, with the stack, that a handler's panic
	// writes in the serving process (as http.Server.ErrorLog). Nil is the
	// standard logger of package log.
	ErrorLog *log.Logger
}

// Limits bound remote calls. Zero keeps a bound's default.
type Limits struct {
	// MaxPayload of a call or reply in bytes (default 4 MiB, at most 1 GiB
	// less 1 KiB; start fails with ErrConfig above).
	MaxPayload int
	// MaxInflightPerConn: calls in flight per connection (default 256).
	MaxInflightPerConn int
	// MaxInflight: calls this node makes at once (default 4096).
	MaxInflight int
	// MaxServing: handlers running at once on this node (default 1024).
	MaxServing int
	// MaxStreams: inbound call streams served at once (default 1024); one
	// more is refused and its calls fail with ErrOverloaded.
	MaxStreams int
}

// StateLimits cap how many records of each kind the replicated state holds
// (tombstones included). Zero keeps a cap's default. Keep them equal
// cluster-wide: a command that would pass one fails with ErrLimitReached,
// and a record from a peer that would pass one is refused and counted.
type StateLimits struct {
	Nodes    int // members known (default 20,000)
	Tribes   int // tribes (default 10,000)
	Members  int // memberships by hand, all tribes (default 200,000)
	Policies int // policies (default 1,000)
	Plugins  int // plugin entries, all tribes (default 20,000)
	Tasks    int // tasks, all tribes (default 20,000)
}

// Node is a running libtribe node. Its methods may be called from many
// goroutines at once. Close it when done; a Node that becomes unreachable
// without Close is closed by a cleanup, as a safety net only. Use the
// *Node that Start returns: a copy of the Node value is closed with the
// original once that is unreachable (go vet reports copies).
type Node struct {
	_ noCopy
	n *node
}

// noCopy makes go vet's copylocks check report a copied Node.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}

// node is the state the polling goroutine shares; Node wraps it so that an
// unreachable Node can be cleaned up while the goroutine still runs.
type node struct {
	// mu guards ptr: C calls hold it for reading, the free for writing.
	mu  sync.RWMutex
	ptr *C.tribe_node

	name, addr string
	closing    atomic.Bool

	stopMu  sync.Mutex
	stopped bool
	stopErr error
	// running counts the handlers running (handlerWG's count).
	running atomic.Int64
	// aborted closes at the first Abort: it ends a graceful stop's wait
	// for handlers.
	aborted   chan struct{}
	abortOnce sync.Once
	// errorLog takes handler panics (Config.ErrorLog, or log's standard one).
	errorLog *log.Logger
	// drain is how long Close and Abort wait for running handlers
	// (handlerDrain; tests lengthen it).
	drain time.Duration

	events  chan Event
	dropped atomic.Uint64
	// Of dropped, those the Events channel had no room for (libtribe
	// counts its own in the counters).
	chanDropped atomic.Uint64
	// The counters as libtribe last gave them, at Close (Counters then).
	finalCounters []byte
	pollDone      chan struct{}

	// base ends at Close: every handler's context derives from it.
	base       context.Context
	cancelBase context.CancelCauseFunc
	// values is base without its end: what handlers' contexts look up.
	values context.Context
	// serveMu orders Serve and Unserve (each updates handlers and libtribe).
	serveMu    sync.Mutex
	handlersMu sync.RWMutex
	handlers   map[handlerKey]Handler
	handlerWG  sync.WaitGroup

	calls callRegistry
	// names interns incoming calls' names (polling goroutine only).
	names nameCache
}

// cstrings allocates C copies of Go strings and frees them together.
type cstrings struct {
	ptrs []*C.char
	bad  string
}

// str copies s to C memory; NULL for an optional empty string when opt.
func (c *cstrings) str(s string) *C.char {
	if strings.IndexByte(s, 0) >= 0 {
		c.bad = s
	}
	p := C.CString(s)
	c.ptrs = append(c.ptrs, p)
	return p
}

// opt is str, or NULL for "".
func (c *cstrings) opt(s string) *C.char {
	if s == "" {
		return nil
	}
	return c.str(s)
}

func (c *cstrings) err() error {
	if c.bad == "" {
		return nil
	}
	// The value is not shown: it may be a key.
	return &Error{Code: "invalid_argument", Message: fmt.Sprintf("a string argument (%d bytes) holds a NUL byte, which C strings cannot carry", len(c.bad))}
}

func (c *cstrings) free() {
	for _, p := range c.ptrs {
		C.free(unsafe.Pointer(p))
	}
	c.ptrs = nil
}

// Start starts a node: it binds its sockets and joins through its seeds in
// the background (it does not wait for peers). It fails with ErrConfig when
// the linked libtribe implements another C ABI version than the header this
// package was built with. Config.Check tells the errors of a
// configuration without starting a node.
func Start(cfg Config) (*Node, error) {
	gcPoint()
	var ptr *C.tribe_node
	err := cfg.withC(func(ccfg *C.tribe_config) error {
		group, err := hubGroup()
		if err != nil {
			return err
		}
		var cerr *C.tribe_error
		if err := takeError(C.tribe_config_set_group(ccfg, group, &cerr), cerr); err != nil {
			return err
		}
		return takeError(C.tribe_node_start(ccfg, &ptr, &cerr), cerr)
	})
	if err != nil {
		return nil, err
	}
	buffer := cfg.EventBuffer
	if buffer == 0 {
		buffer = DefaultEventBuffer
	}
	parent := context.Background()
	if cfg.BaseContext != nil {
		parent = context.WithoutCancel(cfg.BaseContext)
	}
	base, cancel := context.WithCancelCause(parent)
	in := &node{
		ptr:        ptr,
		name:       C.GoString(C.tribe_node_name(ptr)),
		addr:       C.GoString(C.tribe_node_addr(ptr)),
		events:     make(chan Event, buffer),
		pollDone:   make(chan struct{}),
		aborted:    make(chan struct{}),
		drain:      handlerDrain,
		errorLog:   cfg.ErrorLog,
		base:       base,
		cancelBase: cancel,
		values:     parent,
		handlers:   map[handlerKey]Handler{},
	}
	in.calls.init()
	in.join()
	out := &Node{n: in}
	runtime.AddCleanup(out, func(in *node) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), in.drain)
			_, _ = in.stop(ctx, true)
			cancel()
			cleanupsRun.Add(1)
		}()
	}, in)
	return out, nil
}

// Check checks c as Start would before it opens any socket, without
// starting a node, and returns the error Start would give: the checks this
// package makes itself (NUL bytes, Key with KeyFile, ExtraKeys without a
// key, EventBuffer, WorkerThreads, negative limits, the linked library's C
// ABI version); each field as libtribe takes it (ErrInvalidName for Name;
// ErrInvalidArgument for a malformed Bind, Advertise, seed, fact, Profile,
// Label, key, Encryption or LogLevel; ErrIO for an unreadable KeyFile,
// ErrConfig for one that is not a regular file);
// then libtribe's tribe_config_check: the options that only make sense
// together (ErrConfig for an Encryption mode with no key and no DataDir,
// or a Bind to an unspecified host such as 0.0.0.0 without Advertise),
// limits and timings, and an existing DataDir (ErrConfig when any user may
// write it, its state or keyring file is not a regular file, or its state
// is another node's). Nothing is created or changed: a missing DataDir is
// not made.
//
// A config that passes fails to start only for what the machine says: a
// port in use, a DataDir another node holds (a check made while that node
// runs passes), no thread to be had, a DataDir that cannot be created,
// read or written (ErrIO). Check needs no node and does not block, except to look up a host
// name in Bind or Advertise, as Start does. It is meant for a program that
// checks its configuration before it starts its node (a daemon's -t flag).
func (c Config) Check() error {
	gcPoint()
	return c.withC(func(ccfg *C.tribe_config) error {
		var cerr *C.tribe_error
		return takeError(C.tribe_config_check(ccfg, &cerr), cerr)
	})
}

// maxReapAfter is the longest Config.ReapAfter (libtribe's bound).
const maxReapAfter = 365 * 24 * time.Hour

// withC checks cfg as far as this package can, builds its C config and
// runs use with it: Start and Check share it. The C config and the C
// copies of cfg's strings are freed when withC returns, on every path
// (libtribe copies what it keeps).
func (cfg Config) withC(use func(ccfg *C.tribe_config) error) error {
	if err := abiError(headerABI, uint32(C.tribe_abi_version())); err != nil {
		return err
	}
	all := []string{cfg.Name, cfg.Bind, cfg.Advertise, cfg.Profile, cfg.Label, cfg.Key, cfg.KeyFile, cfg.Encryption, cfg.DataDir, cfg.LogLevel}
	all = append(all, cfg.Seeds...)
	all = append(all, cfg.ExtraKeys...)
	for k, v := range cfg.Facts {
		all = append(all, k, v)
	}
	if err := nulErr(all...); err != nil {
		return err
	}
	if cfg.Key != "" && cfg.KeyFile != "" {
		return &Error{Code: "config", Message: "invalid configuration: Key and KeyFile both set: give one"}
	}
	if cfg.Key == "" && cfg.KeyFile == "" && len(cfg.ExtraKeys) > 0 {
		// libtribe seals with the first key given: an extra key alone would.
		return &Error{Code: "config", Message: "invalid configuration: ExtraKeys need a Key or KeyFile (the key that seals)"}
	}
	if cfg.EventBuffer < 0 || cfg.EventBuffer > MaxEventBuffer {
		return &Error{Code: "invalid_argument", Message: fmt.Sprintf("EventBuffer %d: the Events channel holds 0 to %d events", cfg.EventBuffer, MaxEventBuffer)}
	}
	if cfg.ReapAfter < 0 || cfg.ReapAfter > maxReapAfter {
		return &Error{Code: "invalid_argument", Message: fmt.Sprintf("ReapAfter %v: give 1 ms to 365 days, or 0 for the profile's", cfg.ReapAfter)}
	}
	if cfg.WorkerThreads > 64 {
		return &Error{Code: "invalid_argument", Message: fmt.Sprintf("WorkerThreads %d: worker threads must be 1 to 64", cfg.WorkerThreads)}
	}
	var cs cstrings
	defer cs.free()
	var ccfg *C.tribe_config
	var cerr *C.tribe_error
	if err := takeError(C.tribe_config_new(cs.str(cfg.Name), &ccfg, &cerr), cerr); err != nil {
		return err
	}
	defer C.tribe_config_free(ccfg)
	set := func(f func(e **C.tribe_error) C.uint32_t) error {
		var e *C.tribe_error
		return takeError(f(&e), e)
	}
	steps := []func() error{}
	add := func(cond bool, f func(e **C.tribe_error) C.uint32_t) {
		if cond {
			steps = append(steps, func() error { return set(f) })
		}
	}
	add(cfg.Bind != "", func(e **C.tribe_error) C.uint32_t { return C.tribe_config_set_bind(ccfg, cs.str(cfg.Bind), e) })
	add(cfg.Advertise != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_advertise(ccfg, cs.str(cfg.Advertise), e)
	})
	for _, s := range cfg.Seeds {
		add(true, func(e **C.tribe_error) C.uint32_t { return C.tribe_config_add_seed(ccfg, cs.str(s), e) })
	}
	for k, v := range cfg.Facts {
		add(true, func(e **C.tribe_error) C.uint32_t { return C.tribe_config_set_fact(ccfg, cs.str(k), cs.str(v), e) })
	}
	add(cfg.NoHostFacts, func(e **C.tribe_error) C.uint32_t { return C.tribe_config_set_collect_facts(ccfg, false, e) })
	add(cfg.Profile != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_profile(ccfg, cs.str(cfg.Profile), e)
	})
	add(cfg.ReapAfter > 0, func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_reap_after(ccfg, C.uint64_t((cfg.ReapAfter+time.Millisecond-1)/time.Millisecond), e)
	})
	add(cfg.Label != "", func(e **C.tribe_error) C.uint32_t { return C.tribe_config_set_label(ccfg, cs.str(cfg.Label), e) })
	add(cfg.Key != "", func(e **C.tribe_error) C.uint32_t { return C.tribe_config_add_key(ccfg, cs.str(cfg.Key), e) })
	add(cfg.KeyFile != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_add_key_file(ccfg, cs.str(cfg.KeyFile), e)
	})
	for _, k := range cfg.ExtraKeys {
		add(true, func(e **C.tribe_error) C.uint32_t { return C.tribe_config_add_key(ccfg, cs.str(k), e) })
	}
	add(cfg.Encryption != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_encryption(ccfg, cs.str(cfg.Encryption), e)
	})
	add(cfg.LogLevel != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_log_level(ccfg, cs.str(cfg.LogLevel), e)
	})
	add(cfg.DataDir != "", func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_data_dir(ccfg, cs.str(cfg.DataDir), e)
	})
	l := cfg.Limits
	add(l.MaxPayload|l.MaxInflightPerConn|l.MaxInflight|l.MaxServing != 0, func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_rpc_limits(ccfg, C.size_t(l.MaxPayload), C.size_t(l.MaxInflightPerConn),
			C.size_t(l.MaxInflight), C.size_t(l.MaxServing), e)
	})
	sl := cfg.StateLimits
	named := []struct {
		name  string
		value int
	}{
		{"max_streams", l.MaxStreams}, {"nodes", sl.Nodes}, {"tribes", sl.Tribes}, {"members", sl.Members},
		{"policies", sl.Policies}, {"plugins", sl.Plugins}, {"tasks", sl.Tasks},
	}
	for _, lim := range named {
		add(lim.value > 0, func(e **C.tribe_error) C.uint32_t {
			return C.tribe_config_set_limit(ccfg, cs.str(lim.name), C.uint64_t(lim.value), e)
		})
	}
	add(cfg.WorkerThreads != 0, func(e **C.tribe_error) C.uint32_t {
		return C.tribe_config_set_worker_threads(ccfg, C.uint32_t(cfg.WorkerThreads), e)
	})
	// The field is named, as a user wrote it.
	signed := []struct {
		field string
		value int
	}{
		{"Limits.MaxPayload", l.MaxPayload}, {"Limits.MaxInflightPerConn", l.MaxInflightPerConn},
		{"Limits.MaxInflight", l.MaxInflight}, {"Limits.MaxServing", l.MaxServing},
		{"Limits.MaxStreams", l.MaxStreams}, {"StateLimits.Nodes", sl.Nodes},
		{"StateLimits.Tribes", sl.Tribes}, {"StateLimits.Members", sl.Members},
		{"StateLimits.Policies", sl.Policies}, {"StateLimits.Plugins", sl.Plugins},
		{"StateLimits.Tasks", sl.Tasks}, {"WorkerThreads", cfg.WorkerThreads},
	}
	for _, f := range signed {
		if f.value < 0 {
			return &Error{Code: "invalid_argument", Message: fmt.Sprintf("Config.%s is negative (%d): 0 keeps the default", f.field, f.value)}
		}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return use(ccfg)
}

// closedNode stands in for a nil or zero Node, so that its methods report
// ErrClosed (or empty values) as a closed node's do, instead of panicking.
var closedNode = func() *node {
	in := &node{events: make(chan Event), pollDone: make(chan struct{}), aborted: make(chan struct{}), stopped: true, stopErr: ErrClosed}
	in.closing.Store(true)
	close(in.events)
	close(in.pollDone)
	in.base, in.cancelBase = context.WithCancelCause(context.Background())
	in.values = context.Background()
	in.cancelBase(ErrClosed)
	return in
}()

// inner is the node behind n; closedNode for a nil or zero Node.
func (n *Node) inner() *node {
	if n == nil || n.n == nil {
		return closedNode
	}
	return n.n
}

// handlerDrain is how long Close waits for running handlers to return.
const handlerDrain = 5 * time.Second

// cleanupsRun counts nodes closed by their cleanup (for tests).
var cleanupsRun atomic.Int64

// Name is the node's name.
func (n *Node) Name() string { return n.inner().name }

// Addr is the advertised address, "ip:port" with the bound port.
func (n *Node) Addr() string { return n.inner().addr }

// Events delivers the node's events. One goroutine (for every node of the
// process) takes them from libtribe and sends them here without ever
// blocking: when the channel is
// full (Config.EventBuffer), the event is dropped and counted in
// EventsDropped, so a slow reader never holds up the node, its calls or its
// handlers. The channel is closed once the node is closed and every queued
// event has been offered. Incoming calls and call completions never go
// through this channel.
//
// A dropped event is gone, and the state it told of may have changed
// since. When EventsDropped has grown since it was last looked at, rebuild
// what the events maintain from snapshots: Members, Tribes (and Tribe for
// a tribe's plugins and tasks), then carry on with the events that follow,
// which the snapshots may already include.
func (n *Node) Events() <-chan Event {
	n.pin()
	return n.inner().events
}

// pinned holds the nodes that serve a plugin or whose Events were asked
// for, until they stop: such a node works for its program also when no
// reference to the Node is left (a server that only ranges over Events), so
// the cleanup must not close it.
var pinned = struct {
	sync.Mutex
	nodes map[*node]*Node
}{nodes: map[*node]*Node{}}

func (n *Node) pin() {
	in := n.inner()
	pinned.Lock()
	defer pinned.Unlock()
	// Set before stop unpins, so a node that stops is never left pinned.
	if !in.closing.Load() {
		pinned.nodes[in] = n
	}
}

func (in *node) unpin() {
	pinned.Lock()
	defer pinned.Unlock()
	delete(pinned.nodes, in)
}

// EventsDropped counts events lost because the reader was too slow: those
// the Events channel had no room for, plus those libtribe dropped itself
// (more than 65,536 waiting).
func (n *Node) EventsDropped() uint64 {
	defer runtime.KeepAlive(n)
	in := n.inner()
	d := in.dropped.Load()
	in.mu.RLock()
	defer in.mu.RUnlock()
	if in.ptr != nil {
		d += uint64(C.tribe_node_events_dropped(in.ptr))
	}
	return d
}

// Close leaves the cluster gracefully (peers record the node as "left") and
// releases everything: handler contexts end, calls in flight fail with
// ErrShuttingDown, the Events channel closes, and Close waits up to
// 5 s for running handlers to return; a handler still
// running after that (one that ignores its context, or that called Close
// itself) is left to finish on its own, and its answer is dropped. The
// answers of handlers that returned in time reach their callers before
// Close returns (it waits up to 2 s more for them to be sent), so a
// program may exit right after Close.
// Close is idempotent and safe from many goroutines: a later Close (also
// one after Abort) waits for the first and returns its result again, nil
// after a clean stop; every other method then returns ErrClosed, and so does
// Close of a nil or zero Node. Close returns nil also when handlers were
// given up (after 5 s, or by an Abort during the wait) and their answers
// dropped: Shutdown returns an error then. Close returns an error matching
// ErrIO when the node closed but its DataDir did not take its last state
// (a full disk; a hung one, waited for 5 s): a restart from it comes back
// with what it last saved.
// A handler that closes its own node and wants its reply sent runs
// `go n.Close()` and returns: Close inside the handler waits for that very
// handler.
func (n *Node) Close() error {
	defer runtime.KeepAlive(n)
	in := n.inner()
	ctx, cancel := context.WithTimeout(context.Background(), in.drain)
	defer cancel()
	_, err := in.stop(ctx, true)
	return err
}

// Shutdown is Close with the wait for running handlers bounded by ctx
// instead of 5 s, as http.Server's Shutdown: it leaves the cluster
// gracefully (the goodbye takes at most 1.5 s, whatever ctx says), then
// waits for running handlers until they return or ctx ends, so it returns
// at most 1.5 s after ctx ends, plus up to 2 s while replies handlers
// already gave are sent to slow callers. It returns Close's result (nil when no
// handler was running, also with ctx already done), or, when ctx ended
// while handlers still ran, an error matching both the context's error
// and its cause: those handlers are left to finish on their own, their
// calls end ErrDisconnected at their callers and their answers are
// dropped. An Abort during the wait ends it the same way, and Shutdown
// then returns an error matching ErrShuttingDown. Like Close it is
// idempotent: a Shutdown or Close after the first, or made while it runs
// (whatever its own ctx says), waits for it and returns its node result
// (nil after a clean stop), without the context error.
func (n *Node) Shutdown(ctx context.Context) error {
	defer runtime.KeepAlive(n)
	if ctx == nil {
		return &Error{Code: "invalid_argument", Message: "nil Context"}
	}
	in := n.inner()
	drained, err := in.stop(ctx, true)
	switch {
	case err != nil || drained:
		return err
	case ctx.Err() != nil:
		return ctxEnd(ctx, nil)
	default:
		return &Error{Code: ErrShuttingDown.Code, Message: "Abort ended the wait for running handlers: their answers were dropped"}
	}
}

// Abort stops at once without a goodbye, as a crash would (peers record the
// node as "failed"): calls in flight to its handlers end ErrDisconnected at
// their callers, and the answers of handlers still running are dropped.
// Otherwise like Close: handler contexts end, and Abort waits up to 5 s for
// running handlers to return, so that no handler of the node runs on once
// it returns (one that ignores its context may). An Abort while a Close or
// Shutdown waits for handlers ends that wait at once (their calls end
// ErrDisconnected at their callers, their answers are dropped) and
// returns once the node is freed. Abort inside one of the node's own
// handlers waits those 5 s for that very handler: run `go n.Abort()` there.
func (n *Node) Abort() {
	defer runtime.KeepAlive(n)
	in := n.inner()
	in.abortOnce.Do(func() { close(in.aborted) })
	ctx, cancel := context.WithTimeout(context.Background(), in.drain)
	defer cancel()
	_, _ = in.stop(ctx, false)
}

// stop stops and frees the node once; drained says whether the running
// handlers returned before ctx ended (or an Abort cut a graceful wait).
func (in *node) stop(ctx context.Context, graceful bool) (drained bool, err error) {
	in.stopMu.Lock()
	defer in.stopMu.Unlock()
	if in.stopped {
		return true, in.stopErr
	}
	gcPoint()
	in.closing.Store(true)
	in.unpin()
	var cerr *C.tribe_error
	var rc C.uint32_t
	in.mu.RLock()
	if graceful {
		rc = C.tribe_node_shutdown(in.ptr, &cerr)
	} else {
		rc = C.tribe_node_abort(in.ptr, &cerr)
	}
	in.mu.RUnlock()
	// Only now that libtribe counts the node as stopping: a call whose
	// handler has not started yet is refused as stopping (its caller moves
	// it), a handler that gives up for this answers "shutting_down", and a
	// call this node made to itself then ends ErrShuttingDown, not
	// ErrNoProvider.
	// context.Cause of a handler's context then says why it ended.
	in.cancelBase(ErrShuttingDown)
	err = takeError(rc, cerr)
	// The shutdown wakes the polling goroutine, which hands out what was
	// queued, fails the calls still waiting and closes Events.
	<-in.pollDone
	// An Abort cuts a graceful stop's wait, not its own.
	cut := in.aborted
	if !graceful {
		cut = nil
	}
	if in.running.Load() == 0 {
		drained = true // none to wait for, whatever ctx says
	} else {
		done := make(chan struct{})
		go func() { in.handlerWG.Wait(); close(done) }()
		select {
		case <-done:
			drained = true
		case <-ctx.Done():
		case <-cut:
		}
	}
	in.mu.Lock()
	if !drained || ctx.Err() != nil {
		// The handlers still running are given up: their calls end
		// Disconnected now, and the free waits for none of their replies
		// (nor for replies still queued to a slow peer: ctx has ended).
		C.tribe_node_abort(in.ptr, nil)
	}
	// Kept: EventsDropped goes on counting what libtribe dropped.
	in.dropped.Add(uint64(C.tribe_node_events_dropped(in.ptr)))
	in.finalCounters = finalCounters(in.ptr)
	ptr := in.ptr
	in.ptr = nil
	in.mu.Unlock()
	// Freed outside the lock: the free may wait (up to 2 s) for replies
	// queued to slow peers, and no other method may wait with it; they
	// find the node closed.
	C.tribe_node_free(ptr)
	in.stopped = true
	in.stopErr = err
	return drained, err
}

// do runs one C call on the live node, under the read lock that keeps the
// node from being freed meanwhile.
func (in *node) do(f func(p *C.tribe_node, e **C.tribe_error) C.uint32_t) error {
	gcPoint()
	// Not queued behind a stop's write lock.
	if in.closing.Load() {
		return errClosed()
	}
	in.mu.RLock()
	defer in.mu.RUnlock()
	if in.ptr == nil || in.closing.Load() {
		return errClosed()
	}
	var cerr *C.tribe_error
	return takeError(f(in.ptr, &cerr), cerr)
}

// cmd runs a command with string arguments, copied to C for the call.
func (n *Node) cmd(f func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t, args ...string) error {
	defer runtime.KeepAlive(n)
	if err := nulErr(args...); err != nil {
		return err
	}
	buf, ptrs := packStrings(args...)
	err := n.inner().do(func(p *C.tribe_node, e **C.tribe_error) C.uint32_t { return f(p, ptrs, e) })
	runtime.KeepAlive(buf)
	return err
}

// packStrings copies strings, each followed by a NUL, into one Go buffer
// and points into it. Passing these pointers to C is allowed for the
// duration of a call (the buffer holds no Go pointers) and costs no C
// allocation; C must not keep them, and libtribe copies what it keeps.
func packStrings(ss ...string) ([]byte, []*C.char) {
	size := 0
	for _, s := range ss {
		size += len(s) + 1
	}
	buf := make([]byte, size)
	ptrs := make([]*C.char, len(ss))
	off := 0
	for i, s := range ss {
		copy(buf[off:], s)
		ptrs[i] = (*C.char)(unsafe.Pointer(&buf[off]))
		off += len(s) + 1
	}
	return buf, ptrs
}

// nulErr checks strings for NUL bytes, which C strings cannot hold.
func nulErr(ss ...string) error {
	var cs cstrings
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			cs.bad = s
		}
	}
	return cs.err()
}
