package tribe

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// codeOf is the Code of err's *Error, or "" when it has none.
func codeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// startErr is Start's error for cfg; a node that starts after all is
// closed at once (the cases given fail before any socket is opened).
func startErr(t *testing.T, cfg Config) error {
	t.Helper()
	n, err := Start(cfg)
	if err == nil {
		n.Abort()
	}
	return err
}

// CheckName passes good names and refuses bad ones with the rule they
// break, with the code Start gives for the same node name.
func TestCheckNameSaysWhichRuleANameBreaks(t *testing.T) {
	for _, name := range []string{"a", "7", "collector-1", "node_1.dc-2:7946@eu", strings.Repeat("n", 64)} {
		if err := CheckName(name); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", name, err)
		}
	}
	for _, c := range []struct {
		what, name string
		want       *Error
		says       string
	}{
		{"empty", "", ErrInvalidName, "is empty"},
		{"65 bytes", strings.Repeat("n", 65), ErrInvalidName, "longer than 64 bytes"},
		{"a leading '-'", "-node", ErrInvalidName, "must start with an ASCII letter or digit"},
		{"a space", "bad name", ErrInvalidName, "may hold only ASCII letters, digits and _ - . : @"},
		{"a NUL inside", "no\x00de", ErrInvalidArgument, "NUL byte"},
		{"invalid UTF-8", "no\xffde", ErrInvalidUTF8, "not valid UTF-8"},
	} {
		err := CheckName(c.name)
		if !errors.Is(err, c.want) || codeOf(err) != c.want.Code {
			t.Errorf("%s: CheckName(%q) = %v (code %q), want code %q", c.what, c.name, err, codeOf(err), c.want.Code)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: CheckName(%q) = %q, want it to say %q", c.what, c.name, err, c.says)
		}
		// The same answer a node of that name gets at Start.
		if serr := startErr(t, Config{Name: c.name}); codeOf(serr) != c.want.Code {
			t.Errorf("%s: Start gives %v, CheckName %v", c.what, serr, err)
		}
	}
}

// CheckVersion applies the rules of names, up to 32 bytes, and gives the
// code Serve and LoadPlugin give for the same version.
func TestCheckVersionAllowsUpTo32Bytes(t *testing.T) {
	n := startNode(t, "check-version", nil)
	if err := n.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	handler := func(context.Context, CallInfo, []byte) ([]byte, error) { return nil, nil }
	for _, v := range []string{"1", "1.2.3", "2024-06-01", strings.Repeat("9", 32)} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%q) = %v, want nil", v, err)
		}
	}
	for _, c := range []struct {
		what, version string
		want          *Error
		says          string
	}{
		{"33 bytes", strings.Repeat("9", 33), ErrInvalidName, "longer than 32 bytes"},
		{"empty", "", ErrInvalidName, "is empty"},
		{"a leading '.'", ".1", ErrInvalidName, "must start with an ASCII letter or digit"},
		{"a NUL inside", "1\x002", ErrInvalidArgument, "NUL byte"},
		{"invalid UTF-8", "1\xff", ErrInvalidUTF8, "not valid UTF-8"},
	} {
		err := CheckVersion(c.version)
		if !errors.Is(err, c.want) || codeOf(err) != c.want.Code {
			t.Errorf("%s: CheckVersion(%q) = %v (code %q), want code %q", c.what, c.version, err, codeOf(err), c.want.Code)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: CheckVersion(%q) = %q, want it to say %q", c.what, c.version, err, c.says)
		}
		if serr := n.Serve("plugin", c.version, Processor, handler); codeOf(serr) != c.want.Code {
			t.Errorf("%s: Serve gives %v, CheckVersion %v", c.what, serr, err)
		}
		if lerr := n.LoadPlugin("svc", "plugin", c.version, Processor); codeOf(lerr) != c.want.Code {
			t.Errorf("%s: LoadPlugin gives %v, CheckVersion %v", c.what, lerr, err)
		}
	}
	// 33 bytes is a good name but no version.
	if err := CheckName(strings.Repeat("9", 33)); err != nil {
		t.Errorf("a 33-byte name: %v", err)
	}
}

// CheckStepRequest counts the metrics of a well-formed request and refuses
// malformed ones with ErrInvalidArgument and a count of 0.
func TestCheckStepRequestCountsMetrics(t *testing.T) {
	type metric struct {
		Name        string            `json:"name"`
		Value       float64           `json:"value"`
		Tags        map[string]string `json:"tags,omitempty"`
		TimestampMs int64             `json:"timestamp_ms"`
	}
	batch, err := json.Marshal(map[string]any{
		"config": map[string]string{"path": "/tmp/out.jsonl"},
		"metrics": []metric{
			{Name: "load/1min", Value: 0.25, Tags: map[string]string{"host": "a"}, TimestampMs: 1700000000000},
			{Name: "load/5min", Value: 0.5, TimestampMs: 1700000000000},
			{Name: "mem/total_kb", Value: 16e6, TimestampMs: 1700000000001},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := CheckStepRequest(batch); n != 3 || err != nil {
		t.Fatalf("a batch of 3: %d, %v", n, err)
	}
	if n, err := CheckStepRequest([]byte(`{"metrics": []}`)); n != 0 || err != nil {
		t.Fatalf("an empty batch without config: %d, %v", n, err)
	}
	for _, c := range []struct {
		what    string
		payload []byte
		says    string
	}{
		{"not JSON", []byte("load 0.25"), "not valid JSON"},
		{"trailing text", append(append([]byte{}, batch...), " and more"...), "trailing characters"},
		{"a metric without a name", []byte(`{"config": {}, "metrics": [{"value": 1, "timestamp_ms": 1}]}`), "missing field `name`"},
		{"an empty payload", []byte{}, "EOF"},
		{"a nil payload", nil, "EOF"},
	} {
		n, err := CheckStepRequest(c.payload)
		if n != 0 || !errors.Is(err, ErrInvalidArgument) || codeOf(err) != "invalid_argument" {
			t.Errorf("%s: %d, %v; want 0 and ErrInvalidArgument", c.what, n, err)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %q, want it to say %q", c.what, err, c.says)
		}
	}
}

// Config.Check passes a good config without starting a node or creating
// its data dir, and refuses bad ones with the code Start gives them.
func TestConfigCheckRefusesWhatStartWould(t *testing.T) {
	good := Config{
		Name:        "checked-1",
		Bind:        "127.0.0.1:0",
		Advertise:   "127.0.0.1:7946",
		Seeds:       []string{"127.0.0.1:7947", "seed.example:7946"},
		Facts:       map[string]string{"rack": "r1"},
		Profile:     "local",
		Label:       "test",
		Key:         mustKey(t),
		Encryption:  "send",
		DataDir:     filepath.Join(t.TempDir(), "state", "node"),
		LogLevel:    "warn",
		NoHostFacts: true,
		Limits:      Limits{MaxPayload: 1 << 20},
		StateLimits: StateLimits{Tribes: 100},
	}
	if err := good.Check(); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	// Checked again: the check uses nothing up.
	if err := good.Check(); err != nil {
		t.Fatalf("a good config, checked twice: %v", err)
	}
	if _, err := os.Stat(good.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the check made the data dir (or its parent): %v", err)
	}
	if _, err := os.Stat(filepath.Dir(good.DataDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the check made the data dir's parent: %v", err)
	}
	if err := (Config{Name: "checked-2"}).Check(); err != nil {
		t.Fatalf("a config of a name only: %v", err)
	}

	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	owned := t.TempDir()
	if err := os.Chmod(owned, 0o700); err != nil {
		t.Fatal(err)
	}
	// A key file that is a FIFO without a writer: refused at once, not
	// waited on.
	fifo := filepath.Join(t.TempDir(), "fifo.key")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (Config{Name: "checked-3", DataDir: owned}).Check(); err != nil {
		t.Fatalf("a data dir only its owner may write: %v", err)
	}

	for _, c := range []struct {
		what   string
		change func(*Config)
		want   *Error
		says   string
	}{
		{"a bind address without a port", func(c *Config) { c.Bind = "127.0.0.1" }, ErrInvalidArgument, "no port"},
		{"a bind port out of range", func(c *Config) { c.Bind = "127.0.0.1:70000" }, ErrInvalidArgument, "70000"},
		{"a bad name", func(c *Config) { c.Name = "-checked" }, ErrInvalidName, "must start with"},
		{"a NUL in the name", func(c *Config) { c.Name = "chec\x00ked" }, ErrInvalidArgument, "NUL byte"},
		{"an encryption mode without a key", func(c *Config) { c.Encryption = "require" }, ErrConfig, "needs a key"},
		{"a data dir any user may write", func(c *Config) { c.DataDir = open }, ErrConfig, "writable by every user"},
		{"an unspecified bind without advertise", func(c *Config) { c.Bind = "0.0.0.0:0" }, ErrConfig, "advertise"},
		{"Key and KeyFile", func(c *Config) { c.Key, c.KeyFile = mustKey(t), "/nonexistent" }, ErrConfig, "KeyFile"},
		{"a negative limit", func(c *Config) { c.Limits.MaxServing = -1 }, ErrInvalidArgument, "Config.Limits.MaxServing is negative"},
		{"a negative state limit", func(c *Config) { c.StateLimits.Tasks = -2 }, ErrInvalidArgument, "Config.StateLimits.Tasks is negative"},
		{"a negative thread count", func(c *Config) { c.WorkerThreads = -1 }, ErrInvalidArgument, "Config.WorkerThreads is negative"},
		{"a key file that is a FIFO", func(c *Config) { c.KeyFile = fifo }, ErrConfig, "not a regular file"},
		{"a key file that is a device", func(c *Config) { c.KeyFile = "/dev/zero" }, ErrConfig, "not a regular file"},
	} {
		cfg := Config{Name: "checked-bad", Bind: "127.0.0.1:0", Profile: "local", NoHostFacts: true}
		c.change(&cfg)
		err := cfg.Check()
		if !errors.Is(err, c.want) || codeOf(err) != c.want.Code {
			t.Errorf("%s: Check() = %v (code %q), want code %q", c.what, err, codeOf(err), c.want.Code)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: Check() = %q, want it to say %q", c.what, err, c.says)
		}
		if serr := startErr(t, cfg); codeOf(serr) != c.want.Code {
			t.Errorf("%s: Start gives %v, Check %v", c.what, serr, err)
		}
	}
	// The refused data dir was left as it was.
	if st, err := os.Stat(open); err != nil || st.Mode().Perm() != 0o777 {
		t.Fatalf("the open data dir: %v %v", st.Mode(), err)
	}
	if entries, err := os.ReadDir(open); err != nil || len(entries) != 0 {
		t.Fatalf("the open data dir holds %d entries: %v", len(entries), err)
	}
}
