// Command memberlist measures hashicorp/memberlist the way
// benches/membership.rs measures libtribe, so that scripts/bench-memberlist
// can put the two side by side: N nodes in this process on 127.0.0.1 with
// DefaultLANConfig (probe 1 s, gossip 200 ms to 3 nodes, suspicion ×4,
// push-pull 30 s — the timings of libtribe's `lan` profile), for each size:
//
//  1. formation: every node joins node 0, until all see N alive;
//  2. join seen by all: one more node joins, until every other node lists it;
//  3. bytes/s per node at rest: UDP and TCP bytes sent over a quiet window
//     (memberlist's own "udp.sent" and "tcp.sent" counters);
//  4. crash seen by all: one node stops without leaving, until no survivor
//     lists it any more (dead);
//
// and false failures: members reported dead (NotifyLeave) that were never
// stopped. It prints one line per size:
//
//	result n=16 join=0.431 crash=7.102 bps=1234 false=0
//
// Usage: memberlist [-sizes 16,32,64] [-rest-secs 10] [-timeout-secs 120] [-settle-secs 3]
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-metrics"
	"github.com/hashicorp/memberlist"
)

// poll matches benches/membership.rs: fine enough for sub-second spreads.
const poll = 20 * time.Millisecond

// sentSink adds up the bytes memberlist reports as sent, over all nodes.
type sentSink struct {
	udp, tcp atomic.Uint64
}

func (s *sentSink) count(key []string, val float32) {
	if len(key) >= 2 && key[len(key)-1] == "sent" {
		switch key[len(key)-2] {
		case "udp":
			s.udp.Add(uint64(val))
		case "tcp":
			s.tcp.Add(uint64(val))
		}
	}
}

func (s *sentSink) SetGauge([]string, float32)                                     {}
func (s *sentSink) SetGaugeWithLabels([]string, float32, []metrics.Label)          {}
func (s *sentSink) EmitKey([]string, float32)                                      {}
func (s *sentSink) IncrCounter(key []string, val float32)                          { s.count(key, val) }
func (s *sentSink) AddSample([]string, float32)                                    {}
func (s *sentSink) AddSampleWithLabels([]string, float32, []metrics.Label)         {}
func (s *sentSink) IncrCounterWithLabels(k []string, v float32, _ []metrics.Label) { s.count(k, v) }

// failures records members reported dead, by name.
type failures struct {
	mu    sync.Mutex
	names map[string]int
}

func (f *failures) add(name string) {
	f.mu.Lock()
	f.names[name]++
	f.mu.Unlock()
}

func (f *failures) except(victim string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for name, c := range f.names {
		if name != victim {
			n += c
		}
	}
	return n
}

type events struct{ f *failures }

func (e events) NotifyJoin(*memberlist.Node)   {}
func (e events) NotifyUpdate(*memberlist.Node) {}
func (e events) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateDead {
		e.f.add(n.Name)
	}
}

func start(name string, f *failures) (*memberlist.Memberlist, error) {
	cfg := memberlist.DefaultLANConfig()
	cfg.Name = name
	cfg.BindAddr = "127.0.0.1"
	cfg.BindPort = 0
	cfg.AdvertiseAddr = "127.0.0.1"
	cfg.LogOutput = io.Discard
	cfg.Events = events{f}
	return memberlist.Create(cfg)
}

func addr(m *memberlist.Memberlist) string {
	n := m.LocalNode()
	return fmt.Sprintf("%s:%d", n.Addr, n.Port)
}

func lists(m *memberlist.Memberlist, name string) bool {
	for _, n := range m.Members() {
		if n.Name == name {
			return true
		}
	}
	return false
}

// waitAll polls until ok holds for every node, or the limit passes.
func waitAll(nodes []*memberlist.Memberlist, limit time.Duration, ok func(*memberlist.Memberlist) bool) (time.Duration, bool) {
	begun := time.Now()
	for {
		all := true
		for _, m := range nodes {
			if !ok(m) {
				all = false
				break
			}
		}
		if all {
			return time.Since(begun), true
		}
		if time.Since(begun) > limit {
			return time.Since(begun), false
		}
		time.Sleep(poll)
	}
}

func secs(d time.Duration, ok bool) string {
	if !ok {
		return "nan"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
}

func runSize(n int, sink *sentSink, rest, timeout, settle time.Duration) (string, error) {
	f := &failures{names: map[string]int{}}
	var nodes []*memberlist.Memberlist
	defer func() {
		for _, m := range nodes {
			_ = m.Shutdown()
		}
	}()
	for i := 0; i < n; i++ {
		m, err := start(fmt.Sprintf("ml%d-%d", n, i), f)
		if err != nil {
			return "", err
		}
		nodes = append(nodes, m)
		if i > 0 {
			if _, err := m.Join([]string{addr(nodes[0])}); err != nil {
				return "", fmt.Errorf("node %d joining: %w", i, err)
			}
		}
	}
	if d, ok := waitAll(nodes, timeout, func(m *memberlist.Memberlist) bool { return m.NumMembers() == n }); !ok {
		return "", fmt.Errorf("formation did not finish in %v", d)
	}
	time.Sleep(settle)

	joinerName := fmt.Sprintf("ml%d-%d", n, n)
	joiner, err := start(joinerName, f)
	if err != nil {
		return "", err
	}
	begun := time.Now()
	if _, err := joiner.Join([]string{addr(nodes[0])}); err != nil {
		return "", fmt.Errorf("the joiner: %w", err)
	}
	others := nodes
	nodes = append(nodes, joiner)
	_, joinOK := waitAll(others, timeout, func(m *memberlist.Memberlist) bool { return lists(m, joinerName) })
	join := time.Since(begun)
	time.Sleep(settle)

	udp0, tcp0 := sink.udp.Load(), sink.tcp.Load()
	time.Sleep(rest)
	sent := float64(sink.udp.Load()-udp0) + float64(sink.tcp.Load()-tcp0)
	bps := sent / rest.Seconds() / float64(len(nodes))

	// The crash: the middle node stops without a goodbye.
	victim := nodes[n/2]
	victimName := victim.LocalNode().Name
	survivors := append(append([]*memberlist.Memberlist{}, nodes[:n/2]...), nodes[n/2+1:]...)
	begun = time.Now()
	_ = victim.Shutdown()
	nodes = survivors
	_, crashOK := waitAll(survivors, timeout, func(m *memberlist.Memberlist) bool { return !lists(m, victimName) })
	crash := time.Since(begun)
	return fmt.Sprintf("result n=%d join=%s crash=%s bps=%.0f false=%d",
		n, secs(join, joinOK), secs(crash, crashOK), bps, f.except(victimName)), nil
}

func main() {
	sizes := flag.String("sizes", "16,32,64", "cluster sizes")
	restSecs := flag.Float64("rest-secs", 10, "length of the rest window")
	timeoutSecs := flag.Float64("timeout-secs", 120, "limit of each phase")
	settleSecs := flag.Float64("settle-secs", 3, "pause between phases")
	flag.Parse()
	dur := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	if *restSecs <= 0 || *timeoutSecs <= 0 || *settleSecs < 0 || math.IsNaN(*restSecs) {
		log.Fatal("durations must be positive")
	}
	sink := &sentSink{}
	cfg := metrics.DefaultConfig("bench")
	cfg.EnableHostname = false
	cfg.EnableRuntimeMetrics = false
	if _, err := metrics.NewGlobal(cfg, sink); err != nil {
		log.Fatal(err)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 3 {
			log.Fatalf("-sizes: %q is not a size of at least 3", s)
		}
		fmt.Fprintf(os.Stderr, "memberlist N=%d: starting\n", n)
		line, err := runSize(n, sink, dur(*restSecs), dur(*timeoutSecs), dur(*settleSecs))
		if err != nil {
			log.Fatalf("N=%d: %v", n, err)
		}
		fmt.Println(line)
		// Let stray packets to closed ports die before the next size.
		time.Sleep(500 * time.Millisecond)
	}
}
