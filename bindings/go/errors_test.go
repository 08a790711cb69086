package tribe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestCommandErrors(t *testing.T) {
	n := startNode(t, "errs", nil)
	if err := n.CreateTribe("t1"); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what string
		err  error
		want error
	}{
		{"tribe exists", n.CreateTribe("t1"), ErrTribeExists},
		{"unknown tribe", n.DeleteTribe("nope"), ErrUnknownTribe},
		{"invalid name", n.CreateTribe("-bad"), ErrInvalidName},
		{"unknown policy", n.RemovePolicy("nope"), ErrUnknownPolicy},
		{"unknown fact", n.RemoveFact("nope"), ErrUnknownFact},
		{"not member", n.Leave("t1", ""), ErrNotMember},
		{"unknown plugin", n.UnloadPlugin("t1", "p", "1"), ErrUnknownPlugin},
		{"unknown task", n.RemoveTask("t1", "x"), ErrUnknownTask},
		{"no keyring", n.InstallKey(mustKey(t)), ErrNoKeyring},
		{"NUL byte", n.CreateTribe("a\x00b"), ErrInvalidArgument},
		{"manifest not an object", n.AddTask("t1", "x", `[1, 2]`), ErrInvalidArgument},
	}
	for _, c := range checks {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.err, c.want)
		}
	}
	_, err := n.Tribe("nope")
	if !errors.Is(err, ErrUnknownTribe) {
		t.Errorf("Tribe(nope): %v", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != "unknown_tribe" || e.Message == "" {
		t.Errorf("error details: %#v", e)
	}

	err = n.AddPolicy("bad", "t1", "facts.os ==\n  (")
	var pe *PolicyError
	if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPolicy) || pe.Line < 1 || pe.Column < 1 {
		t.Errorf("bad policy: %v (%#v)", err, pe)
	}

	// Facts, tasks and catalogs through the typed snapshots.
	if err := n.SetFact("rack", "r7"); err != nil {
		t.Fatal(err)
	}
	if err := n.Join("t1", ""); err != nil {
		t.Fatal(err)
	}
	if err := n.AddTaskWithState("t1", "job", map[string]any{
		"schedule": map[string]string{"interval": "5s"},
		"collect":  map[string]string{"plugin": "proc"},
	}, TaskStopped); err != nil {
		t.Fatal(err)
	}
	if err := n.LoadPlugin("t1", "p", "1", Publisher); err != nil {
		t.Fatal(err)
	}
	me, err := n.Member(n.Name())
	if err != nil || me.Facts["rack"] != "r7" || !me.Local || me.State != "alive" {
		t.Fatalf("member %+v %v", me, err)
	}
	info, err := n.Tribe("t1")
	if err != nil || len(info.Tasks) != 1 || info.Tasks[0].State != "stopped" || len(info.Plugins) != 1 ||
		info.Plugins[0].Kind != Publisher || fmt.Sprint(info.ExplicitMembers) != fmt.Sprint([]string{n.Name()}) {
		t.Fatalf("tribe %+v %v", info, err)
	}
	if err := n.SetTaskState("t1", "job", TaskRunning); err != nil {
		t.Fatal(err)
	}
	d1, err := n.StateDigest()
	if err != nil || len(d1) == 0 {
		t.Fatalf("digest %q %v", d1, err)
	}
	c, err := n.Counters()
	if err != nil || c["engine"] == nil || c["calls"] == nil {
		t.Fatalf("counters %v %v", c, err)
	}
	if LibraryVersion() == "" || ABIVersion() != 1 {
		t.Fatalf("version %q abi %d", LibraryVersion(), ABIVersion())
	}
	if _, err := Start(Config{Name: "bad name!"}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("start with a bad name: %v", err)
	}
	if _, err := Start(Config{Name: "x", Profile: "mars"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("start with a bad profile: %v", err)
	}
}

func mustKey(t *testing.T) string {
	t.Helper()
	k, err := Keygen()
	if err != nil || len(k) != 44 {
		t.Fatalf("keygen %q %v", k, err)
	}
	return k
}

// KeyID names a key as Status and Keys do; text that is no key is refused.
func TestKeyIDNamesAKeyAsTheKeyringDoes(t *testing.T) {
	key := mustKey(t)
	n := startNode(t, "key-id", func(c *Config) { c.Key = key })
	id, err := KeyID(key)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := n.Status(); err != nil || st.PrimaryKey != id {
		t.Fatalf("KeyID %q, status %+v %v", id, st, err)
	}
	if _, err := KeyID("not a key"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a bad key: %v", err)
	}
}

// A node whose keys the tribe rotated away says so in its Status, naming
// the peer that refused it, and comes back once it holds the current key.
func TestANodeLeftBehindByARotationSaysSoAndComesBack(t *testing.T) {
	current := mustKey(t)
	a := startNode(t, "behind", func(c *Config) { c.Key = current })
	stale := startNode(t, "behind-stale", func(c *Config) { c.Key = mustKey(t); c.Seeds = []string{a.Addr()} })
	waitFor(t, "the refusal shown", 20*time.Second, func() bool {
		st, err := stale.Status()
		return err == nil && st.KeyRefusedBy == a.Addr()
	})
	if st, err := a.Status(); err != nil || st.KeyRefusedBy != "" {
		t.Fatalf("the tribe's node shows a refusal: %+v %v", st, err)
	}
	if err := stale.InstallKey(current); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "back in the tribe", 20*time.Second, func() bool {
		st, err := stale.Status()
		return err == nil && st.KeyRefusedBy == "" && aliveCount(stale) == 2
	})
}

// Key rotation between two Go nodes: install, use, remove; the keyring
// snapshot follows, and calls keep working.
func TestKeyRotation(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	a := startNode(t, "keys", func(c *Config) { c.Key = k1 })
	b := startNode(t, "keys", func(c *Config) { c.Key = k1; c.Seeds = []string{a.Addr()} })
	waitFor(t, "both alive", 20*time.Second, func() bool { return aliveCount(a) == 2 && aliveCount(b) == 2 })
	if err := a.InstallKey(k2); err != nil {
		t.Fatal(err)
	}
	held := func(n *Node, pred func(KeyHolding, int) bool) bool {
		ks, err := n.Keys()
		if err != nil {
			return false
		}
		for _, k := range ks.Keys {
			if pred(k, ks.Members) {
				return true
			}
		}
		return false
	}
	waitFor(t, "both to hold the new key", 20*time.Second, func() bool {
		return held(b, func(k KeyHolding, m int) bool { return len(k.InstalledOn) == 2 && k.ID != "" }) &&
			held(a, func(k KeyHolding, m int) bool { return len(k.InstalledOn) == 2 })
	})
	ks, _ := a.Keys()
	old := ks.Primary
	if err := a.UseKey(k2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both to seal with the new key", 20*time.Second, func() bool {
		ks, err := b.Keys()
		return err == nil && ks.Primary != old && ks.Primary != ""
	})
	if err := a.RemoveKey(old); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveKey(k2); !errors.Is(err, ErrPrimaryKey) {
		t.Fatalf("removing the primary: %v", err)
	}
	if err := b.SetEncryption("require"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old key gone", 20*time.Second, func() bool {
		ks, err := b.Keys()
		return err == nil && len(ks.Keys) == 1
	})
	if aliveCount(a) != 2 {
		t.Fatal("the nodes lost each other during the rotation")
	}
}

// A reader that never reads does not hold up the node: events beyond the
// buffer are dropped and counted, and calls still complete.
func TestSlowEventReaderDropsNotBlocks(t *testing.T) {
	n := startNode(t, "slow", func(c *Config) { c.EventBuffer = 2 })
	if err := n.Serve("echo", "1", Processor, echo); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := n.CreateTribe(fmt.Sprintf("t%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Join("t0", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dropped events to be counted", 10*time.Second, func() bool { return n.EventsDropped() > 0 })
	// The counters count them too.
	counters, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d, err := counters["engine"]["events_dropped"].Int64(); err != nil || d == 0 {
		t.Fatalf("engine.events_dropped = %v (%v) with %d dropped", counters["engine"]["events_dropped"], err, n.EventsDropped())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := n.Call(ctx, Target{Tribe: "t0", Plugin: "echo", Kind: Processor}, []byte("hi"))
	if err != nil || string(reply) != "echo:hi" {
		t.Fatalf("call with a full Events channel: %q %v", reply, err)
	}
	if len(n.Events()) != 2 {
		t.Fatalf("%d events buffered, want 2", len(n.Events()))
	}
}

// State limits from Config: the command past one fails with
// ErrLimitReached and creates nothing; bad limits are refused at Start.
func TestStateLimits(t *testing.T) {
	n := startNode(t, "limited", func(c *Config) {
		c.StateLimits = StateLimits{Tribes: 2}
		c.Limits.MaxStreams = 4
	})
	for _, name := range []string{"a", "b"} {
		if err := n.CreateTribe(name); err != nil {
			t.Fatal(err)
		}
	}
	err := n.CreateTribe("c")
	if !errors.Is(err, ErrLimitReached) {
		t.Fatalf("third tribe: %v, want ErrLimitReached", err)
	}
	tribes, err := n.Tribes()
	if err != nil || len(tribes) != 2 {
		t.Fatalf("tribes after the refusal: %v %v", tribes, err)
	}
	if _, err := Start(Config{Name: "x", StateLimits: StateLimits{Policies: -1}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative limit: %v", err)
	}
}

// The events of the hardened engine decode with their fields.
func TestIdentityAndSkewEventsDecode(t *testing.T) {
	ev, err := decodeEvent(EventIdentityClaimed, []byte(`{"kind":"identity_claimed","addr":"10.0.0.9:7946","generation":18446744073709551615}`))
	if err != nil || ev.Kind != EventIdentityClaimed || ev.Addr != "10.0.0.9:7946" || ev.Generation != 1<<64-1 {
		t.Fatalf("identity_claimed: %+v %v", ev, err)
	}
	ev, err = decodeEvent(EventClockSkew, []byte(`{"kind":"clock_skew","name":"slow-1","offset_ms":-600000}`))
	if err != nil || ev.Kind != EventClockSkew || ev.Member != "slow-1" || ev.OffsetMs != -600000 {
		t.Fatalf("clock_skew: %+v %v", ev, err)
	}
	if EventClockSkew.String() != "clock_skew" || EventIdentityClaimed.String() != "identity_claimed" {
		t.Fatalf("names %v %v", EventClockSkew, EventIdentityClaimed)
	}
}

// Errors match by Code: a hand-built *Error matches the sentinel of its
// code, and errors of different codes never match.
func TestErrorIsMatchesByCode(t *testing.T) {
	if !errors.Is(&Error{Code: "no_provider"}, ErrNoProvider) {
		t.Error("a hand-built no_provider error does not match ErrNoProvider")
	}
	if !errors.Is(&Error{Code: "a", Message: "one"}, &Error{Code: "a", Message: "two"}) {
		t.Error("errors of one code do not match")
	}
	if errors.Is(&Error{Code: "a"}, &Error{Code: "b"}) || errors.Is(ErrTimeout, ErrCancelled) {
		t.Error("errors of different codes match")
	}
	if !errors.Is(ErrClosed, ErrShuttingDown) || errors.Is(ErrShuttingDown, ErrClosed) {
		t.Error("ErrClosed must match ErrShuttingDown, not the other way round")
	}
	if errors.Is(ErrTimeout, (*Error)(nil)) {
		t.Error("an error matches a nil *Error")
	}
	// The typed errors match by code too, as *Error does.
	remote := &RemoteError{Code: "too_large", Message: "m"}
	if !errors.Is(remote, &Error{Code: "remote"}) || !errors.Is(remote, &Error{Code: "too_large"}) ||
		errors.Is(remote, &Error{Code: "timeout"}) || errors.Is(remote, (*Error)(nil)) {
		t.Error("a RemoteError does not match by code")
	}
	policy := &PolicyError{Line: 1, Column: 2, Message: "m"}
	if !errors.Is(policy, &Error{Code: "invalid_policy"}) || errors.Is(policy, ErrRemote) {
		t.Error("a PolicyError does not match by code")
	}
}

// Every result code of the C ABI has a sentinel of the name libtribe gives
// it, and every sentinel but ErrClosed is such a code.
func TestSentinelsCoverTheResultCodes(t *testing.T) {
	sentinels := []*Error{
		ErrPanic, ErrNullArgument, ErrConsumed, ErrWrongEvent, ErrInvalidUTF8, ErrCancelled, ErrForked,
		ErrUnknownArtifact, ErrInvalidName, ErrInvalidArgument, ErrUnknownTribe, ErrTribeExists,
		ErrUnknownNode, ErrAlreadyMember, ErrNotMember, ErrInvalidPolicy, ErrUnknownPolicy,
		ErrPolicyExists, ErrUnknownPlugin, ErrPluginExists, ErrUnknownTask, ErrTaskExists,
		ErrUnknownFact, ErrNoKeyring, ErrEncryptionNotRequired, ErrKeyringFull, ErrUnknownKey,
		ErrPrimaryKey, ErrNoProvider, ErrTimeout, ErrRemote, ErrTooLarge, ErrOverloaded,
		ErrDisconnected, ErrShuttingDown, ErrIO, ErrConfig, ErrLimitReached, ErrKeyNotSpread,
	}
	codes := map[string]bool{}
	for _, s := range sentinels {
		codes[s.Code] = true
	}
	named := map[string]bool{}
	for rc := uint32(1); rc < 1000; rc++ {
		if name := resultName(rc); name != "unknown" {
			named[name] = true
			if !codes[name] {
				t.Errorf("result code %d (%s) has no sentinel", rc, name)
			}
		}
	}
	for code := range codes {
		if !named[code] {
			t.Errorf("sentinel code %q is no result code of the C ABI", code)
		}
	}
}

// Start refuses a library of another C ABI version than the header's.
func TestABIMismatchIsAConfigError(t *testing.T) {
	if err := abiError(headerABI, headerABI); err != nil {
		t.Fatalf("matching versions: %v", err)
	}
	err := abiError(1, 2)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "version 2") ||
		!strings.Contains(err.Error(), "version 1") {
		t.Fatalf("mismatch: %v", err)
	}
	if ABIVersion() != headerABI {
		t.Fatalf("linked ABI %d, header %d", ABIVersion(), headerABI)
	}
}

// A Kind other than the three is refused in Go's words, before C would
// name its own constants.
func TestInvalidKindNamesTheGoConstants(t *testing.T) {
	n := startNode(t, "kind", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, callErr := n.Call(ctx, Target{Tribe: "t", Plugin: "p"}, nil)
	_, artifactErr := n.LoadPluginWithArtifact("t", "p", "1", Kind(9), []byte("x"))
	for what, err := range map[string]error{
		"Call":                   callErr,
		"Serve":                  n.Serve("p", "1", 0, echo),
		"LoadPlugin":             n.LoadPlugin("t", "p", "1", 0),
		"LoadPluginWithArtifact": artifactErr,
	} {
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "tribe.Collector, tribe.Processor or tribe.Publisher") {
			t.Errorf("%s: %v", what, err)
		}
	}
	// Nor is a Kind written that could not be read back.
	if b, err := json.Marshal(Kind(7)); err == nil {
		t.Errorf("json.Marshal(Kind(7)) = %s", b)
	}
	if b, err := json.Marshal(Publisher); err != nil || string(b) != `"publisher"` {
		t.Errorf("json.Marshal(Publisher) = %s, %v", b, err)
	}
	// A TaskState other than the two, likewise.
	manifest := `{"schedule":{"interval":"5s"},"collect":{"plugin":"proc"}}`
	for what, err := range map[string]error{
		"AddTaskWithState": n.AddTaskWithState("t", "job", manifest, 0),
		"SetTaskState":     n.SetTaskState("t", "job", 3),
	} {
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "tribe.TaskRunning or tribe.TaskStopped") {
			t.Errorf("%s: %v", what, err)
		}
	}
}

// A key given as a node name or a plugin kind is withheld from the
// package's own messages, as libtribe withholds it from its own.
func TestAKeyGivenAsANameIsWithheld(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "withhold", nil)
	_, err = n.Member(key)
	var k Kind
	kindErr := k.UnmarshalText([]byte(key))
	for _, e := range []error{err, kindErr} {
		if e == nil || strings.Contains(e.Error(), key) || !strings.Contains(e.Error(), "(a key, withheld)") {
			t.Errorf("error %v quotes the key or withholds nothing", e)
		}
	}
}

// A key is withheld also inside a longer text: with a newline from a file,
// at the end of a path, among other words.
func TestWithheldFindsKeysInsideText(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{key, key + "\n", " " + key, "/etc/tribe/" + key, "a " + key + " b"} {
		got := withheld(text)
		if strings.Contains(got, key) || !strings.Contains(got, "(a key, withheld)") {
			t.Errorf("withheld(%q) = %q", text, got)
		}
	}
	for _, text := range []string{"plain", strings.Repeat("A", 60), "web-01"} {
		if got := withheld(text); got != text {
			t.Errorf("withheld(%q) = %q, want it unchanged", text, got)
		}
	}
}

// Member's "unknown node" error cuts a long name as libtribe's errors do,
// withholding a key in it before the cut.
func TestShownNameCutsAfterWithholding(t *testing.T) {
	key, err := Keygen()
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("n", 70_000)
	if got := shownName(long); got != strings.Repeat("n", 80)+"..." {
		t.Errorf("shownName(70,000 n) = %d bytes", len(got))
	}
	for _, filler := range []int{0, 37, 79} {
		got := shownName(strings.Repeat("x", filler) + key)
		if strings.Contains(got, key[:20]) {
			t.Errorf("filler %d: %q shows the key", filler, got)
		}
	}
	if got := shownName("web-01"); got != "web-01" {
		t.Errorf("shownName(web-01) = %q", got)
	}
}
