package tribe

import (
	"context"
	"errors"
	"math"
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

// A join through a peer that never answers (it would wait 10 s) ends at
// its context's deadline or cancel, at once for an ended context, and
// leaves nothing behind: a later join goes through.
func TestJoinClusterContextEnds(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	a := startNode(t, "joinctx-a", nil)
	b := startNode(t, "joinctx-b", nil)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	n, err := b.JoinClusterContext(ctx, silent.Addr().String())
	took := time.Since(began)
	if n != 0 || !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || took > 3*time.Second {
		t.Fatalf("join at the deadline = %d, %v after %v", n, err, took)
	}
	if !strings.Contains(err.Error(), "reached no address") {
		t.Fatalf("join at the deadline says %q", err)
	}

	// A deadline past any join's length is no limit: the join is not
	// given up at once (a limit computed from it once overflowed to 1 ms).
	for _, far := range []time.Duration{time.Duration(math.MaxInt64), 48 * time.Hour} {
		ctx, cancel = context.WithTimeout(context.Background(), far)
		quit := make(chan struct{})
		go func() {
			time.Sleep(500 * time.Millisecond)
			close(quit)
			cancel()
		}()
		began = time.Now()
		_, err = b.JoinClusterContext(ctx, silent.Addr().String())
		took = time.Since(began)
		<-quit
		if !errors.Is(err, ErrCancelled) || took < 400*time.Millisecond {
			t.Fatalf("join under a deadline %v away = %v after %v (want cancelled at 0.5 s)", far, err, took)
		}
	}
	// What the join reached by its deadline counts: a live peer beside
	// the silent one.
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	began = time.Now()
	n, err = b.JoinClusterContext(ctx, silent.Addr().String(), a.Addr())
	took = time.Since(began)
	cancel()
	if n != 1 || err != nil || took < 900*time.Millisecond || took > 5*time.Second {
		t.Fatalf("join through a live and a silent peer at the deadline = %d, %v after %v", n, err, took)
	}

	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	began = time.Now()
	n, err = b.JoinClusterContext(ctx, silent.Addr().String())
	took = time.Since(began)
	if n != 0 || !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) || took > 3*time.Second {
		t.Fatalf("cancelled join = %d, %v after %v", n, err, took)
	}
	if _, err := b.JoinClusterContext(ctx, a.Addr()); !errors.Is(err, context.Canceled) {
		t.Fatalf("join with an ended context = %v", err)
	}
	var bad *Error
	if _, err := b.JoinClusterContext(ctx, "no-port"); !errors.As(err, &bad) || bad.Code != "invalid_argument" {
		t.Fatalf("bad place with an ended context = %v", err)
	}
	if _, err := b.JoinClusterContext(nil, a.Addr()); err == nil {
		t.Fatal("a nil Context was taken")
	}

	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := b.JoinClusterContext(ctx, silent.Addr().String())
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("join %d: %v", i, err)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := b.JoinClusterContext(ctx, a.Addr()); n != 1 || err != nil {
		t.Fatalf("join after those given up = %d, %v", n, err)
	}
	waitFor(t, "both alive on both", 20*time.Second, func() bool {
		return aliveCount(a) == 2 && aliveCount(b) == 2
	})
}
