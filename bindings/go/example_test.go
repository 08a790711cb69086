package tribe

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example collector (examples/collector), built and run as a process:
// it joins a tribe by policy from its facts and publishes its batches
// through tribe storage to a `tribe agent`'s file publisher, as the README
// shows it against `tribe demo --keep`.
func TestCollectorExamplePublishesToAnAgent(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	published := filepath.Join(t.TempDir(), "published.jsonl")
	ag := startAgent(t, "store", key, "--fact", "storage_tier=true", "--publish-file", published)
	admin := startNode(t, "admin", func(c *Config) {
		c.Key = key
		c.Seeds = []string{ag.gossip}
	})
	if err := admin.AddPolicy("storage", "storage", `facts.storage_tier == "true"`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent in tribe storage", 20*time.Second, func() bool {
		return inTribe(admin, "storage", ag.name)
	})

	bin := filepath.Join(t.TempDir(), "collector")
	build := exec.Command("go", "build", "-o", bin, "./examples/collector")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/collector: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := exec.CommandContext(ctx, bin, "-name", "gocol", "-seed", ag.gossip,
		"-fact", "rack=r1", "-count", "2", "-interval", "200ms")
	run.Env = append(os.Environ(), "TRIBE_KEY="+key)
	out, err := run.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("the collector failed: %v\n%s", err, text)
	}
	for _, want := range []string{"added policy rack-r1", "joined tribe rack-r1 (by policy)", "left the tribe"} {
		if !strings.Contains(text, want) {
			t.Errorf("the collector's output lacks %q:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "published "); n != 2 {
		t.Errorf("%d batches published, want 2:\n%s", n, text)
	}

	// The agent's file publisher wrote the batches' metrics.
	f, err := os.Open(published)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]int{}
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		var m struct {
			Name string            `json:"name"`
			Tags map[string]string `json:"tags"`
		}
		if err := json.Unmarshal(lines.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", lines.Text(), err)
		}
		if m.Tags["source"] == "gocol" && m.Tags["rack"] == "r1" {
			names[m.Name]++
		}
	}
	for _, want := range []string{"load/1min", "mem/total_kb"} {
		if names[want] != 2 {
			t.Errorf("metric %s published %d times, want 2 (all: %v)", want, names[want], names)
		}
	}
}
