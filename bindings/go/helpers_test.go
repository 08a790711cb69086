package tribe

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var nodeSeq atomic.Int64

// startNode starts a node on 127.0.0.1 with a free port and the local
// profile, and closes it at the end of the test.
func startNode(t testing.TB, prefix string, change func(*Config)) *Node {
	t.Helper()
	cfg := Config{
		Name:        fmt.Sprintf("%s-%d", prefix, nodeSeq.Add(1)),
		Bind:        "127.0.0.1:0",
		Profile:     "local",
		NoHostFacts: true,
	}
	if change != nil {
		change(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	// Abort: fast, and a no-op after a Close the test made itself.
	t.Cleanup(n.Abort)
	return n
}

// waitFor polls cond every 50 ms until it holds or limit passes.
func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitUntil is waitFor for a check that says what is still missing: it
// polls check every 50 ms until it returns "" or limit passes, and then
// fails the test with what check returned last.
func waitUntil(t testing.TB, what string, limit time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		missing := check()
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", limit, what, missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func aliveCount(n *Node) int {
	ms, err := n.Members()
	if err != nil {
		return -1
	}
	c := 0
	for _, m := range ms {
		if m.State == "alive" {
			c++
		}
	}
	return c
}

func memberState(n *Node, name string) string {
	m, err := n.Member(name)
	if err != nil {
		return ""
	}
	return m.State
}

func inTribe(n *Node, tribe string, names ...string) bool {
	info, err := n.Tribe(tribe)
	if err != nil {
		return false
	}
	have := map[string]bool{}
	for _, m := range info.Members {
		have[m] = true
	}
	for _, name := range names {
		if !have[name] {
			return false
		}
	}
	return true
}

// settledGoroutines waits until the goroutine count drops to at most want
// (goroutines end a little after what ended them), and returns it.
func settledGoroutines(want int, limit time.Duration) int {
	deadline := time.Now().Add(limit)
	for {
		runtime.GC()
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func goroutineDump() string {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return string(buf[:n])
}

// tribeBin is the `tribe` binary for interop tests (TRIBE_BIN, set by
// scripts/test-go), or "" when absent.
func tribeBin() string {
	if p := os.Getenv("TRIBE_BIN"); p != "" {
		return p
	}
	for _, p := range []string{"../../target/release/tribe"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// recorder keeps every event of a node for later checks.
type recorder struct {
	mu     sync.Mutex
	events []Event
	done   chan struct{}
}

func record(n *Node) *recorder {
	r := &recorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range n.Events() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		}
	}()
	return r
}

// has reports whether some event satisfies match.
func (r *recorder) has(match func(Event) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if match(e) {
			return true
		}
	}
	return false
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.events {
		fmt.Fprintf(&b, "%s tribe=%q member=%q; ", e.Kind, e.Tribe, e.Member)
	}
	return b.String()
}

// callCount is one of n's call counters (`calls.<name>` of Counters).
func callCount(t testing.TB, n *Node, name string) int64 {
	t.Helper()
	c, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	v, err := c["calls"][name].Int64()
	if err != nil {
		t.Fatalf("calls.%s: %v", name, err)
	}
	return v
}
