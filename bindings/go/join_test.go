package tribe

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A Go node started alone joins a running node through its address later,
// takes its state in the exchange, and a join that reaches no one says why.
func TestJoinClusterAfterStart(t *testing.T) {
	a := startNode(t, "join-a", nil)
	if err := a.CreateTribe("web"); err != nil {
		t.Fatal(err)
	}
	b := startNode(t, "join-b", nil)
	if got := aliveCount(b); got != 1 {
		t.Fatalf("alone: %d alive", got)
	}
	n, err := b.JoinCluster(a.Addr())
	if err != nil || n != 1 {
		t.Fatalf("JoinCluster = %d, %v", n, err)
	}
	if _, err := b.Tribe("web"); err != nil {
		t.Fatalf("the joined node lacks the peer's tribe: %v", err)
	}
	waitFor(t, "both alive on both", 20*time.Second, func() bool {
		return aliveCount(a) == 2 && aliveCount(b) == 2
	})

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	c := startNode(t, "join-c", nil)
	n, err = c.JoinCluster(dead)
	if !errors.Is(err, ErrIO) || n != 0 || !strings.Contains(err.Error(), dead) {
		t.Fatalf("join through a dead port = %d, %v", n, err)
	}
	for _, bad := range [][]string{nil, {"no-port"}, {"127.0.0.1:0"}, {"a\x00b:1"}, {c.Addr()}} {
		var te *Error
		if _, err := c.JoinCluster(bad...); !errors.As(err, &te) || te.Code != "invalid_argument" {
			t.Errorf("JoinCluster(%q) = %v, want invalid_argument", bad, err)
		}
	}
	c.Close()
	if _, err := c.JoinCluster(a.Addr()); !errors.Is(err, ErrClosed) && !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("after Close: %v", err)
	}
}
