package tribe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A handler that ends its goroutine (runtime.Goexit, as t.FailNow does)
// leaves an unanswered call, and its context ends with it: the context no
// longer looks at the responder, which is freed.
func TestHandlerGoexit(t *testing.T) {
	ctxs := make(chan context.Context, 1)
	_, caller := servedPair(t, map[string]Handler{
		"echo": echo,
		"exit": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			_ = ctx.Done() // starts the context's watch of the responder
			ctxs <- ctx
			runtime.Goexit()
			return nil, nil
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := caller.Call(ctx, target("exit"), nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != "unanswered" {
		t.Fatalf("call to a handler that exited: %v", err)
	}
	// Ended before the responder was freed, so before the answer left.
	hctx := <-ctxs
	select {
	case <-hctx.Done():
	default:
		t.Fatal("the context of a handler that exited did not end with it")
	}
	if _, err := caller.Call(ctx, target("echo"), []byte("x")); err != nil {
		t.Fatalf("the node stopped serving: %v", err)
	}
}

// Input checks never show a key, and extra keys need the key that seals.
func TestConfigChecks(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(Config{Name: "k", Bind: "127.0.0.1:0", Key: key[:20] + "\x00" + key[20:]})
	if !errors.Is(err, ErrInvalidArgument) || strings.Contains(err.Error(), key[:20]) {
		t.Errorf("a key with a NUL byte: %v", err)
	}
	_, err = Start(Config{Name: "k", Bind: "127.0.0.1:0", ExtraKeys: []string{key}})
	if !errors.Is(err, ErrConfig) {
		t.Errorf("ExtraKeys without Key: %v", err)
	}
	_, err = Start(Config{Name: "k", Bind: "127.0.0.1:0", KeyFile: "/nonexistent/key"})
	if !errors.Is(err, ErrIO) {
		t.Errorf("an unreadable KeyFile: %v", err)
	}
	path := filepath.Join(t.TempDir(), "current.key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Start(Config{Name: "k", Bind: "127.0.0.1:0", Key: key, KeyFile: path})
	if !errors.Is(err, ErrConfig) {
		t.Errorf("Key and KeyFile: %v", err)
	}
	n := startNode(t, "keyfile", func(c *Config) { c.KeyFile = path })
	if st, err := n.Status(); err != nil || st.Encryption != "require" || st.PrimaryKey == "" {
		t.Errorf("a node keyed from a file: %+v %v", st, err)
	}
	_, err = Start(Config{Name: "k", Bind: "127.0.0.1:0", WorkerThreads: 1<<32 + 1})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("WorkerThreads 1<<32+1: %v", err)
	}
	for _, d := range []time.Duration{-time.Second, 366 * 24 * time.Hour, time.Duration(math.MaxInt64)} {
		if _, err := Start(Config{Name: "k", Bind: "127.0.0.1:0", ReapAfter: d}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ReapAfter %v: %v", d, err)
		}
	}
	// The channel is made at Start: a size past the bound would take the
	// process down (out of memory) instead of returning an error.
	for _, size := range []int{-1, MaxEventBuffer + 1, 1 << 40} {
		if _, err := Start(Config{Name: "k", Bind: "127.0.0.1:0", EventBuffer: size}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("EventBuffer %d: %v", size, err)
		}
	}
}

// A node that serves a plugin stays up when no reference to it is left:
// the cleanup closes only nodes that do no work for their program.
func TestServingNodeOutlivesItsReference(t *testing.T) {
	// Not startNode: its test cleanup would hold the Node.
	host, err := Start(Config{Name: "pinned-host", Bind: "127.0.0.1:0", Profile: "local", NoHostFacts: true})
	if err != nil {
		t.Fatal(err)
	}
	caller := startNode(t, "pinned", func(c *Config) { c.Seeds = []string{host.Addr()} })
	if err := host.CreateTribe("t"); err != nil {
		t.Fatal(err)
	}
	if err := host.Join("t", ""); err != nil {
		t.Fatal(err)
	}
	if err := host.Serve("echo", "1", Processor, echo); err != nil {
		t.Fatal(err)
	}
	in := host.inner()
	host = nil
	call := func(limit time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		_, err := caller.Call(ctx, Target{Tribe: "t", Plugin: "echo", Kind: Processor}, []byte("x"))
		return err
	}
	waitFor(t, "the first call", 15*time.Second, func() bool { return call(2*time.Second) == nil })
	for i := 0; i < 3; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	// A host its cleanup closed fails the call; a live one answers it,
	// also when a loaded machine takes seconds to.
	if err := call(10 * time.Second); err != nil || in.closing.Load() {
		t.Fatalf("after GC: %v (closed: %v)", err, in.closing.Load())
	}
	_, _ = in.stop(context.Background(), false)
}

// A second node started under a running node's name (a copied config)
// holds it; the first says so in Status and reports the claim, then has its
// name back once the second is gone.
func TestASecondNodeUnderANameHoldsIt(t *testing.T) {
	seed := startNode(t, "twin-seed", nil)
	name := fmt.Sprintf("twin-%d", nodeSeq.Add(1))
	twin := func(c *Config) {
		c.Name = name
		c.Seeds = []string{seed.Addr()}
	}
	first := startNode(t, "", twin)
	rec := record(first)
	addrOf := func() string {
		m, err := seed.Member(name)
		if err != nil || m.State != "alive" {
			return ""
		}
		return m.Addr
	}
	waitFor(t, "the first twin seen", 20*time.Second, func() bool { return addrOf() == first.Addr() })
	// Generations are start times in ms: the copy's is newer.
	time.Sleep(50 * time.Millisecond)
	second := startNode(t, "", twin)
	heldBy := func(n *Node) string {
		st, err := n.Status()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		return st.NameHeldBy
	}
	waitFor(t, "the first twin keeps out", 30*time.Second, func() bool { return heldBy(first) == second.Addr() })
	waitFor(t, "the claim reported", 10*time.Second, func() bool {
		return rec.has(func(e Event) bool { return e.Kind == EventIdentityClaimed && e.Addr == second.Addr() })
	})
	if got := heldBy(second); got != "" {
		t.Fatalf("the holder says its name is held by %q", got)
	}
	// The seed learns of the claim by gossip, apart from the first twin.
	waitUntil(t, "the seed to see the name at the second twin's "+second.Addr(), 10*time.Second, func() string {
		if got := addrOf(); got != second.Addr() {
			return fmt.Sprintf("it sees it at %q", got)
		}
		return ""
	})
	second.Abort()
	waitFor(t, "the first twin back", 60*time.Second, func() bool {
		return heldBy(first) == "" && addrOf() == first.Addr()
	})
}

// ReapAfter forgets a failed member after the time given, not the
// profile's (5 min with "local").
func TestReapAfterForgetsAFailedMember(t *testing.T) {
	a := startNode(t, "reap-a", func(c *Config) { c.ReapAfter = 1500 * time.Millisecond })
	b := startNode(t, "reap-b", func(c *Config) { c.Seeds = []string{a.Addr()} })
	waitFor(t, "both alive", 20*time.Second, func() bool { return aliveCount(a) == 2 })
	b.Abort()
	waitFor(t, "the failed member forgotten", 40*time.Second, func() bool {
		ms, err := a.Members()
		return err == nil && len(ms) == 1
	})
}
