package tribe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// agent is a `tribe agent` process.
type agent struct {
	name, gossip, admin string
	cmd                 *exec.Cmd
	log                 string
}

// startAgent runs `tribe agent` on 127.0.0.1 with the local profile and
// waits for its ready line. The key goes through the environment.
func startAgent(t *testing.T, name, key string, extra ...string) *agent {
	t.Helper()
	bin := tribeBin()
	if bin == "" {
		if os.Getenv("TRIBE_REQUIRE_AGENT") != "" {
			t.Fatal("TRIBE_BIN is not set and ../../target/release/tribe does not exist")
		}
		t.Skip("no tribe binary: set TRIBE_BIN (scripts/test-go does)")
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"agent", "--name", name, "--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--profile", "local", "--log-level", "info"}, extra...)
	cmd := exec.Command(bin, args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TRIBE_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "TRIBE_KEY="+key)
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agent{name: name, cmd: cmd, log: logPath}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logFile.Close()
		if t.Failed() {
			text, _ := os.ReadFile(logPath)
			t.Logf("agent %s log:\n%s", name, text)
		}
	})
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, r)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent printed no ready line")
	}
	for _, w := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(w, "gossip="); ok {
			a.gossip = v
		}
		if v, ok := strings.CutPrefix(w, "admin="); ok {
			a.admin = v
		}
	}
	if a.gossip == "" || a.admin == "" {
		text, _ := os.ReadFile(logPath)
		t.Fatalf("agent ready line %q; log:\n%s", line, text)
	}
	return a
}

// api makes one admin API request and decodes the JSON answer into out.
func (a *agent) api(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+a.admin+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	if out != nil && len(text) > 0 {
		if err := json.Unmarshal(text, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, text)
		}
	}
	return resp.StatusCode
}

// metric is one metric of a batch (docs/task-manifest.md).
type metric struct {
	Name        string            `json:"name"`
	Value       float64           `json:"value"`
	Tags        map[string]string `json:"tags,omitempty"`
	TimestampMs int64             `json:"timestamp_ms"`
}

// One encrypted tribe with a Go node and a `tribe agent` (Rust): Go calls
// the agent's built-in tag processor, and the agent's task publishes
// through the tribe to a publisher served by Go.
func TestInteropWithTribeAgent(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	g := startNode(t, "go", func(c *Config) { c.Key = key })
	events := record(g)
	ag := startAgent(t, "rust-agent", key, "--seed", g.Addr())
	waitFor(t, "the Go node and the agent to see each other", 20*time.Second, func() bool {
		var st Status
		return aliveCount(g) == 2 && ag.api(t, "GET", "/v1/status", nil, &st) == 200 && st.MembersAlive == 2
	})
	st, err := g.Status()
	if err != nil || st.Encryption != "require" {
		t.Fatalf("status %+v %v", st, err)
	}

	// Go serves a publisher; the tribe holds both nodes.
	batches := make(chan []metric, 16)
	var once sync.Once
	err = g.Serve("gopub", "1", Publisher, func(_ context.Context, call CallInfo, payload []byte) ([]byte, error) {
		var req struct {
			Config  map[string]string `json:"config"`
			Metrics []metric          `json:"metrics"`
		}
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, &HandlerError{Code: "bad_input", Message: err.Error()}
		}
		if call.Caller != ag.name || req.Config["sink"] != "go" {
			once.Do(func() { t.Errorf("publish call %+v config %v", call, req.Config) })
		}
		select {
		case batches <- req.Metrics:
		default:
		}
		return []byte(fmt.Sprint(len(req.Metrics))), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.CreateTribe("interop"); err != nil {
		t.Fatal(err)
	}
	if err := g.Join("interop", ""); err != nil {
		t.Fatal(err)
	}
	if err := g.Join("interop", ag.name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both nodes in interop, seen from both sides", 20*time.Second, func() bool {
		var info TribeInfo
		return inTribe(g, "interop", g.Name(), ag.name) &&
			ag.api(t, "GET", "/v1/tribes/interop", nil, &info) == 200 && len(info.Members) == 2
	})

	// Go -> Rust: the agent's built-in tag processor.
	now := time.Now().UnixMilli()
	req, _ := json.Marshal(map[string]any{
		"config":  map[string]string{"env": "test"},
		"metrics": []metric{{Name: "load/1min", Value: 0.25, TimestampMs: now}},
	})
	var reply []byte
	waitFor(t, "the agent's tag endpoint", 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reply, err = g.Call(ctx, Target{Tribe: "interop", Plugin: "tag", Version: "1", Kind: Processor}, req)
		return err == nil
	})
	var tagged []metric
	if err := json.Unmarshal(reply, &tagged); err != nil {
		t.Fatalf("tag reply %q: %v", reply, err)
	}
	if len(tagged) != 1 || tagged[0].Name != "load/1min" || tagged[0].Value != 0.25 ||
		tagged[0].Tags["env"] != "test" || tagged[0].Tags["tagged_by"] != ag.name || tagged[0].Tags["caller"] != g.Name() {
		t.Fatalf("tagged %+v", tagged)
	}

	// Rust -> Go: a task added through the agent's admin API publishes to
	// the Go publisher through the tribe.
	manifest := map[string]any{
		"schedule": map[string]string{"interval": "200ms"},
		"collect":  map[string]any{"plugin": "proc", "metrics": []string{"load/*"}},
		"publish":  []map[string]any{{"plugin": "gopub", "tribe": "interop", "config": map[string]string{"sink": "go"}}},
	}
	if code := ag.api(t, "POST", "/v1/tribes/interop/tasks", map[string]any{"id": "to-go", "manifest": manifest}, nil); code/100 != 2 {
		t.Fatalf("adding the task: HTTP %d", code)
	}
	deadline := time.After(20 * time.Second)
	for got := false; !got; {
		select {
		case batch := <-batches:
			if len(batch) == 0 {
				continue
			}
			for _, m := range batch {
				if !strings.HasPrefix(m.Name, "load/") || m.Tags["source"] != ag.name {
					t.Fatalf("published metric %+v", m)
				}
			}
			got = true
		case <-deadline:
			t.Fatal("no batch from the agent's task reached the Go publisher")
		}
	}
	// The Go node, a member too, was asked to run the task.
	waitFor(t, "the task_run event on the Go node", 10*time.Second, func() bool {
		return events.has(func(e Event) bool {
			return e.Kind == EventTaskRun && e.Tribe == "interop" && e.Task != nil && e.Task.ID == "to-go" &&
				e.Task.State == "running" && strings.Contains(string(e.Task.Manifest), "gopub")
		})
	})
}
