package tribe

import (
	"errors"
	"testing"
	"time"
)

func TestTwoNodesSeeEachOther(t *testing.T) {
	a := startNode(t, "pair", nil)
	b := startNode(t, "pair", func(c *Config) { c.Seeds = []string{a.Addr()} })
	waitFor(t, "both nodes to see two alive members", 20*time.Second, func() bool {
		return aliveCount(a) == 2 && aliveCount(b) == 2
	})
	st, err := b.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != b.Name() || st.MembersAlive != 2 {
		t.Fatalf("status %+v", st)
	}
	m, err := a.Member(b.Name())
	if err != nil || m.Addr != b.Addr() || m.Local {
		t.Fatalf("member %+v %v", m, err)
	}
	// A bad name is refused as such, as by every other method, not
	// looked for as a node that does not exist.
	if _, err := a.Member("no\xffde"); !errors.Is(err, ErrInvalidUTF8) {
		t.Fatalf("invalid UTF-8: %v", err)
	}
	if _, err := a.Member("no\x00de"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NUL: %v", err)
	}
	// A name no node can have is named so, as Tribe names a bad tribe name.
	for _, bad := range []string{"", "bad name!"} {
		if _, err := a.Member(bad); !errors.Is(err, ErrInvalidName) {
			t.Fatalf("Member(%q): %v", bad, err)
		}
	}
	if _, err := a.Member("nobody"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("unknown: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Members(); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("after Close: %v", err)
	}
	// The final counts stay readable.
	counters, err := b.Counters()
	if err != nil || counters["engine"]["datagrams_in"].String() == "0" {
		t.Fatalf("counters after Close: %v %v", counters, err)
	}
	waitFor(t, "the closed node to be left", 10*time.Second, func() bool {
		return memberState(a, b.Name()) == "left"
	})
}

// Config.LogLevel turns libtribe's log records into EventLog events.
func TestLogLevelDeliversLogEvents(t *testing.T) {
	if _, err := Start(Config{Name: "badlog", Bind: "127.0.0.1:0", LogLevel: "chatty"}); err == nil {
		t.Fatal("a bad log level was accepted")
	}
	n := startNode(t, "logs", func(c *Config) { c.LogLevel = "debug" })
	other := startNode(t, "logpeer", func(c *Config) { c.Seeds = []string{n.Addr()} })
	_ = other
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-n.Events():
			if e.Kind == EventLog && e.Level != "" && e.Message != "" && e.Kind.String() == "log" {
				return
			}
		case <-deadline:
			t.Fatal("no log event within 20 s")
		}
	}
}
