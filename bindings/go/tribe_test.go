package tribe

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Five Go nodes: policies place them by facts, a plugin entry reaches every
// member as an event, a late joiner inherits tribe, policy and plugin, and a
// node closed gracefully is "left" while one aborted is "failed" everywhere.
func TestFiveNodesPoliciesPluginsLateJoinerLeaveAndCrash(t *testing.T) {
	type spec struct{ os, rack string }
	specs := []spec{{"ubuntu", "r1"}, {"centos", "r1"}, {"ubuntu", "r2"}, {"centos", "r2"}, {"ubuntu", "r1"}}
	var nodes []*Node
	var recs []*recorder
	for i, s := range specs {
		var seeds []string
		if i > 0 {
			seeds = []string{nodes[0].Addr()}
		}
		n := startNode(t, "five", func(c *Config) {
			c.Seeds = seeds
			c.Facts = map[string]string{"os": s.os, "rack": s.rack}
		})
		nodes = append(nodes, n)
		recs = append(recs, record(n))
	}
	waitFor(t, "five nodes alive everywhere", 20*time.Second, func() bool {
		for _, n := range nodes {
			if aliveCount(n) != 5 {
				return false
			}
		}
		return true
	})

	if err := nodes[1].AddPolicy("ubuntu-nodes", "ubuntu", `facts.os == "ubuntu"`); err != nil {
		t.Fatal(err)
	}
	if err := nodes[2].AddPolicy("rack-r1", "r1", `facts.rack == "r1"`); err != nil {
		t.Fatal(err)
	}
	want := func(match func(spec) bool) []string {
		var names []string
		for i, s := range specs {
			if match(s) {
				names = append(names, nodes[i].Name())
			}
		}
		sort.Strings(names)
		return names
	}
	ubuntu := want(func(s spec) bool { return s.os == "ubuntu" })
	r1 := want(func(s spec) bool { return s.rack == "r1" })
	exact := func(n *Node, tribe string, names []string) bool {
		info, err := n.Tribe(tribe)
		return err == nil && fmt.Sprint(info.Members) == fmt.Sprint(names)
	}
	waitFor(t, "policies to place the nodes everywhere", 20*time.Second, func() bool {
		for _, n := range nodes {
			if !exact(n, "ubuntu", ubuntu) || !exact(n, "r1", r1) {
				return false
			}
		}
		return true
	})
	pols, err := nodes[4].Policies()
	if err != nil || len(pols) != 2 {
		t.Fatalf("policies %+v %v", pols, err)
	}
	joinedUbuntu := func(r *recorder) bool {
		return r.has(func(e Event) bool {
			return e.Kind == EventTribeJoined && e.Tribe == "ubuntu" && e.ByPolicy && !e.ByHand
		})
	}
	// The events come after the state the queries above saw (through the
	// polling goroutine and the recorder's): waited for.
	waitUntil(t, "tribe_joined ubuntu by policy on every ubuntu node", 10*time.Second, func() string {
		var missing []string
		for i, s := range specs {
			if s.os == "ubuntu" && !joinedUbuntu(recs[i]) {
				missing = append(missing, fmt.Sprintf("none on %s; events: %s", nodes[i].Name(), recs[i]))
			}
		}
		return strings.Join(missing, "\n")
	})
	for i, s := range specs {
		if s.os != "ubuntu" && joinedUbuntu(recs[i]) {
			t.Errorf("%s is not in ubuntu but joined it by policy; events: %s", nodes[i].Name(), recs[i])
		}
	}

	if err := nodes[3].LoadPlugin("ubuntu", "cpu", "2", Collector); err != nil {
		t.Fatal(err)
	}
	loaded := func(r *recorder) bool {
		return r.has(func(e Event) bool {
			return e.Kind == EventPluginLoad && e.Tribe == "ubuntu" && e.Plugin != nil &&
				e.Plugin.Name == "cpu" && e.Plugin.Version == "2" && e.Plugin.Kind == Collector
		})
	}
	waitFor(t, "every ubuntu member to be asked to load cpu", 20*time.Second, func() bool {
		for i, s := range specs {
			if s.os == "ubuntu" && !loaded(recs[i]) {
				return false
			}
		}
		return true
	})
	for i, s := range specs {
		if s.os != "ubuntu" && loaded(recs[i]) {
			t.Errorf("%s is not in ubuntu but was asked to load cpu", nodes[i].Name())
		}
	}

	// A late joiner inherits the policy, the tribe and its catalog.
	late := startNode(t, "five-late", func(c *Config) {
		c.Seeds = []string{nodes[3].Addr()}
		c.Facts = map[string]string{"os": "ubuntu", "rack": "r9"}
	})
	lateRec := record(late)
	waitFor(t, "the late joiner to be asked to load cpu", 20*time.Second, func() bool { return loaded(lateRec) })
	info, err := late.Tribe("ubuntu")
	if err != nil || len(info.Plugins) != 1 || info.Plugins[0].Name != "cpu" {
		t.Fatalf("late joiner's view of ubuntu: %+v %v", info, err)
	}
	waitFor(t, "every node to count the late joiner in ubuntu", 20*time.Second, func() bool {
		for _, n := range nodes {
			if !inTribe(n, "ubuntu", late.Name()) {
				return false
			}
		}
		return true
	})

	// Node 1 leaves gracefully, node 2 crashes; the rest must agree.
	left, failed := nodes[1], nodes[2]
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := left.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	go func() { defer wg.Done(); failed.Abort() }()
	wg.Wait()
	rest := []*Node{nodes[0], nodes[3], nodes[4], late}
	sawLeft := map[string]bool{}
	sawFailed := map[string]bool{}
	leftAsFailed := map[string]bool{}
	waitFor(t, "left and failed to be seen everywhere", 30*time.Second, func() bool {
		for _, n := range rest {
			// A failed node is reaped later: remember what each saw.
			switch memberState(n, left.Name()) {
			case "left":
				sawLeft[n.Name()] = true
			case "failed":
				// Seen once on a loaded machine: the goodbye came after
				// the suspicion ran out (see /work/go-ffi-requests.md,
				// item 6). The end state must still be "left".
				if !leftAsFailed[n.Name()] {
					leftAsFailed[n.Name()] = true
					t.Logf("%s saw the node that left as failed before left", n.Name())
				}
			}
			switch memberState(n, failed.Name()) {
			case "failed":
				sawFailed[n.Name()] = true
			case "left":
				t.Fatalf("%s sees the aborted node as left", n.Name())
			}
		}
		for name := range sawLeft {
			// Only the last view counts for the node that left.
			if memberState(nodeByName(rest, name), left.Name()) != "left" {
				delete(sawLeft, name)
			}
		}
		return len(sawLeft) == len(rest) && len(sawFailed) == len(rest)
	})
	// Events come after the states the queries saw: waited for.
	restRecs := []*recorder{recs[0], recs[3], recs[4], lateRec}
	waitUntil(t, "a member_left event for "+left.Name()+" on every remaining node", 10*time.Second, func() string {
		var missing []string
		for i, n := range rest {
			if !restRecs[i].has(func(e Event) bool { return e.Kind == EventMemberLeft && e.Member == left.Name() }) {
				missing = append(missing, n.Name())
			}
		}
		if len(missing) == 0 {
			return ""
		}
		return "none on " + strings.Join(missing, ", ")
	})
	for _, r := range []*recorder{recs[1], recs[2]} {
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the Events channel of a stopped node did not close")
		}
	}
}

func nodeByName(nodes []*Node, name string) *Node {
	for _, n := range nodes {
		if n.Name() == name {
			return n
		}
	}
	return nil
}
