// Command collector is an "existing Go collector" that joins a tribe: every
// second it reads load and memory from /proc and publishes the batch through
// a tribe to a publisher some member serves (by default the built-in `file`
// publisher of the `tribe agent`s in tribe `storage`, as `tribe demo` runs
// them). Its facts (-fact rack=r1) place it in tribes by policy: it adds the
// policy rack-<rack> (facts.rack == "<rack>" -> tribe rack-<rack>) unless
// it exists, and prints the tribes it joins and the other events it gets.
//
//	TRIBE_KEY=<base64 key> go run ./examples/collector -seed 127.0.0.1:PORT -fact rack=r1
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	tribe "github.com/libtribe/libtribe/bindings/go"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// metric is one metric of a batch (docs/task-manifest.md).
type metric struct {
	Name        string            `json:"name"`
	Value       float64           `json:"value"`
	Tags        map[string]string `json:"tags,omitempty"`
	TimestampMs int64             `json:"timestamp_ms"`
}

func main() {
	host, _ := os.Hostname()
	var seeds, facts listFlag
	name := flag.String("name", host+"-collector", "node name, unique in the tribe")
	bind := flag.String("bind", "127.0.0.1:0", "gossip and call address (port 0 picks one)")
	profile := flag.String("profile", "local", "timing profile: lan, wan or local")
	keyFile := flag.String("key-file", "", "file holding the cluster key (base64); default: $TRIBE_KEY")
	pubTribe := flag.String("tribe", "storage", "tribe whose members serve the publisher")
	plugin := flag.String("plugin", "file", "publisher plugin to call")
	interval := flag.Duration("interval", time.Second, "how often to collect and publish")
	count := flag.Int("count", 0, "stop after this many batches (0: run until SIGINT/SIGTERM)")
	flag.Var(&seeds, "seed", "a node to join through, host:port (repeatable)")
	flag.Var(&facts, "fact", "a user fact key=value (repeatable); rack=<r> adds the policy rack-<r>")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)

	key := os.Getenv("TRIBE_KEY")
	if *keyFile != "" {
		key = ""
	}
	factMap := map[string]string{}
	for _, f := range facts {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			log.Fatalf("-fact %q: want key=value", f)
		}
		factMap[k] = v
	}

	node, err := tribe.Start(tribe.Config{
		Name: *name, Bind: *bind, Seeds: seeds, Facts: factMap, Profile: *profile,
		Key: key, KeyFile: *keyFile,
	})
	if err != nil {
		log.Fatalf("start: %v", err)
	}
	defer func() {
		if err := node.Close(); err != nil {
			log.Printf("close: %v", err)
		}
		log.Printf("left the tribe")
	}()
	log.Printf("node %s at %s (libtribe %s), seeds %v", node.Name(), node.Addr(), tribe.LibraryVersion(), []string(seeds))
	go printEvents(node)

	if rack := factMap["rack"]; rack != "" {
		t := "rack-" + rack
		// Guarded: nodes without a rack fact are simply not placed.
		when := fmt.Sprintf("has(facts.rack) && facts.rack == %q", rack)
		err := node.AddPolicy(t, t, when)
		switch {
		case err == nil:
			log.Printf("added policy %s: %s -> tribe %s", t, when, t)
		case errors.Is(err, tribe.ErrPolicyExists):
		default:
			log.Printf("policy %s: %v", t, err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	target := tribe.Target{Tribe: *pubTribe, Plugin: *plugin, Kind: tribe.Publisher}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for sent := 0; *count == 0 || sent < *count; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		batch := collect(node.Name(), factMap["rack"])
		payload, _ := json.Marshal(map[string]any{"config": map[string]string{}, "metrics": batch})
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		reply, err := node.Call(callCtx, target, payload)
		cancel()
		switch {
		case err == nil:
			sent++
			log.Printf("published %d metrics through tribe %s to %s (reply %q)", len(batch), *pubTribe, *plugin, reply)
		case errors.Is(err, tribe.ErrUnknownTribe):
			log.Printf("tribe %s not known here%s", *pubTribe, whyUnknown(node, key != "" || *keyFile != ""))
		case errors.Is(err, tribe.ErrNoProvider):
			log.Printf("no member of %s serves %s yet", *pubTribe, *plugin)
		default:
			log.Printf("publish: %v", err)
		}
	}
}

// whyUnknown says why a tribe is not known: not created yet (or deleted)
// when peers are reached, else why no peer answered (most often a wrong
// key, or a seed that is not a member's gossip port).
func whyUnknown(node *tribe.Node, keyed bool) string {
	st, err := node.Status()
	switch {
	case err != nil:
		return ""
	case st.MembersAlive > 1:
		return ": not created yet, or deleted (tribe tribe create, or a policy, makes it)"
	case st.KeyRefusedBy != "":
		return fmt.Sprintf(" (no peer reached): %s refused this node's key (use the tribe's current key)", st.KeyRefusedBy)
	case !keyed:
		return " (no peer reached): if the tribe is encrypted, give its key (-key-file or $TRIBE_KEY)"
	default:
		return " (no peer reached): check -seed (a member's gossip port, not its admin port) and the key"
	}
}

func printEvents(node *tribe.Node) {
	for e := range node.Events() {
		switch e.Kind {
		case tribe.EventTribeJoined:
			how := "by hand"
			if e.ByPolicy {
				how = "by policy"
			}
			log.Printf("event: joined tribe %s (%s)", e.Tribe, how)
		case tribe.EventTribeLeft:
			log.Printf("event: left tribe %s", e.Tribe)
		case tribe.EventPluginLoad, tribe.EventPluginUnload:
			log.Printf("event: %s %s %s (%s) in tribe %s", e.Kind, e.Plugin.Name, e.Plugin.Version, e.Plugin.Kind, e.Tribe)
		case tribe.EventTaskRun, tribe.EventTaskStop:
			log.Printf("event: %s %s in tribe %s (this collector runs no tasks)", e.Kind, e.Task.ID, e.Tribe)
		case tribe.EventMemberJoined, tribe.EventMemberLeft, tribe.EventMemberFailed:
			log.Printf("event: %s %s", e.Kind, e.Member)
		case tribe.EventJoined, tribe.EventIsolated:
			log.Printf("event: %s", e.Kind)
		}
	}
}

// collect reads load and memory from /proc.
func collect(source, rack string) []metric {
	now := time.Now().UnixMilli()
	tags := map[string]string{"plugin": "go-collector", "source": source}
	if rack != "" {
		tags["rack"] = rack
	}
	var out []metric
	add := func(name string, v float64) {
		out = append(out, metric{Name: name, Value: v, Tags: tags, TimestampMs: now})
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i, n := range []string{"load/1min", "load/5min", "load/15min"} {
			if i < len(f) {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					add(n, v)
				}
			}
		}
	}
	if fh, err := os.Open("/proc/meminfo"); err == nil {
		defer fh.Close()
		s := bufio.NewScanner(fh)
		for s.Scan() {
			f := strings.Fields(s.Text())
			if len(f) < 2 {
				continue
			}
			name := map[string]string{"MemTotal:": "mem/total_kb", "MemFree:": "mem/free_kb", "MemAvailable:": "mem/available_kb"}[f[0]]
			if v, err := strconv.ParseFloat(f[1], 64); err == nil && name != "" {
				add(name, v)
			}
		}
	}
	return out
}
