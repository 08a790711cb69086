package tribe

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// pollers counts the goroutines polling libtribe.
func pollers() int {
	return strings.Count(goroutineDump(), ".hubPoll(")
}

// Every node of the process is polled by one goroutine, which serves calls
// between them and ends with the last node; a node started afterwards gets
// a new one.
func TestOneGoroutinePollsEveryNodeOfTheProcess(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	first := startNode(t, "hub", func(c *Config) { c.Key = key })
	if err := first.AddPolicy("all", "hub", "true"); err != nil {
		t.Fatal(err)
	}
	nodes := []*Node{first}
	for i := 0; i < 5; i++ {
		nodes = append(nodes, startNode(t, "hub", func(c *Config) {
			c.Key = key
			c.Seeds = []string{first.Addr()}
		}))
	}
	// The polling goroutine of an earlier test's nodes, which found none
	// left, may still be on its way out: waited for.
	waitUntil(t, fmt.Sprintf("one goroutine polling the %d nodes", len(nodes)), 5*time.Second, func() string {
		if got := pollers(); got != 1 {
			return fmt.Sprintf("%d poll them", got)
		}
		return ""
	})
	// Each node serves its own plugin; each calls every other's.
	for i, n := range nodes {
		name := fmt.Sprintf("echo%d", i)
		if err := n.Serve(name, "1", Processor, func(_ context.Context, _ CallInfo, p []byte) ([]byte, error) {
			return append([]byte(name+":"), p...), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i, caller := range nodes {
		for j := range nodes {
			name := fmt.Sprintf("echo%d", j)
			var reply []byte
			waitFor(t, name+" served to "+caller.Name(), 20*time.Second, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				reply, err = caller.Call(ctx, Target{Tribe: "hub", Plugin: name, Kind: Processor}, []byte{byte(i)})
				return err == nil
			})
			if string(reply) != name+":"+string([]byte{byte(i)}) {
				t.Fatalf("%s got %q from %s", caller.Name(), reply, name)
			}
		}
	}
	// Closing nodes one by one: the others keep being served.
	for k := len(nodes) - 1; k >= 1; k-- {
		if err := nodes[k].Close(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := nodes[0].Call(ctx, Target{Tribe: "hub", Plugin: "echo0", Kind: Processor}, nil)
		cancel()
		if err != nil {
			t.Fatalf("with %d nodes left: %v", k, err)
		}
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the polling goroutine to end", 5*time.Second, func() bool { return pollers() == 0 })
	again := startNode(t, "hub", nil)
	if got := pollers(); got != 1 {
		t.Fatalf("%d goroutines poll after a new start, want 1", got)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}

// A call's log records reach its node's Events also though the polling
// goroutine, which drives every node's calls, belongs to no node: a call
// to a host that has just died logs that it was not sent.
func TestACallsLogRecordsReachItsNode(t *testing.T) {
	caller := startNode(t, "logcall", func(c *Config) { c.LogLevel = "debug" })
	host := startNode(t, "loghost", func(c *Config) { c.Seeds = []string{caller.Addr()} })
	if err := caller.AddPolicy("all", "logs", "true"); err != nil {
		t.Fatal(err)
	}
	if err := host.Serve("p", "1", Processor, func(context.Context, CallInfo, []byte) ([]byte, error) {
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the host's endpoint at the caller", 20*time.Second, func() bool {
		ms, _ := caller.Members()
		for _, m := range ms {
			if m.Name == host.Name() && len(m.Endpoints) > 0 && len(m.Tribes) > 0 {
				return true
			}
		}
		return false
	})
	host.Abort()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := caller.Call(ctx, Target{Tribe: "logs", Plugin: "p", Kind: Processor}, nil)
	cancel()
	if err == nil {
		t.Fatal("a call to a host that died was answered")
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-caller.Events():
			if e.Kind == EventLog && strings.Contains(e.Message, "call not sent") {
				return
			}
		case <-deadline:
			t.Fatalf("no record of the call not sent (the call ended with %v)", err)
		}
	}
}
