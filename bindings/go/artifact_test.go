package tribe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

// A plugin entry that carries bytes reaches another member, which fetched
// and verified them before its event and reads them by their SHA-256.
func TestPluginArtifacts(t *testing.T) {
	holder := startNode(t, "art", nil)
	member := startNode(t, "art", func(c *Config) { c.Seeds = []string{holder.Addr()} })
	rec := record(member)
	waitFor(t, "two alive members", 15*time.Second, func() bool { return aliveCount(member) == 2 })
	if err := holder.CreateTribe("scripts"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{holder, member} {
		if err := holder.Join("scripts", n.Name()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both in scripts", 15*time.Second, func() bool {
		return inTribe(member, "scripts", holder.Name(), member.Name())
	})

	blob := []byte("#!/bin/sh\necho collected\n")
	sum := sha256.Sum256(blob)
	want := hex.EncodeToString(sum[:])
	sha, err := holder.LoadPluginWithArtifact("scripts", "probe", "1", Collector, blob)
	if err != nil || sha != want {
		t.Fatalf("LoadPluginWithArtifact = %q, %v; want %q", sha, err, want)
	}
	waitFor(t, "the member's plugin_load naming the artifact", 20*time.Second, func() bool {
		return rec.has(func(e Event) bool {
			return e.Kind == EventPluginLoad && e.Plugin != nil && e.Plugin.Name == "probe" &&
				e.Plugin.SHA256 == want && e.Plugin.Size == uint64(len(blob))
		})
	})
	for _, n := range []*Node{holder, member} {
		got, err := n.Artifact(strings.ToUpper(sha))
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("%s: Artifact = %q, %v", n.Name(), got, err)
		}
	}

	if _, err := member.Artifact(strings.Repeat("0", 64)); !errors.Is(err, ErrUnknownArtifact) {
		t.Errorf("unknown artifact: %v", err)
	}
	if _, err := member.Artifact("zz"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad hex: %v", err)
	}
	if _, err := member.LoadPluginWithArtifact("scripts", "probe", "1", Collector, blob); !errors.Is(err, ErrPluginExists) {
		t.Errorf("the same entry again: %v", err)
	}
	if _, err := member.LoadPluginWithArtifact("nowhere", "probe", "1", Kind(99), nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a bad kind: %v", err)
	}
	if err := member.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := member.Artifact(sha); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}
