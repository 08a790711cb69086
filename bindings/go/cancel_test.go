package tribe

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A caller that cancels its calls ends their handlers' contexts on the host
// and gives their places back at once: without that, calls with no
// deadline would hold the host's 256 places of the stream for 49 days and
// every later call would be refused as overloaded.
func TestCancelledCallsEndTheirHandlersAndFreeTheirPlaces(t *testing.T) {
	const calls = 300 // over the host's 256 places per stream
	var running, ended atomic.Int64
	_, caller := servedPair(t, map[string]Handler{
		"echo": echo,
		"wait": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			running.Add(1)
			<-ctx.Done()
			ended.Add(1)
			return nil, ctx.Err()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < calls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = caller.Call(ctx, target("wait"), nil) // no deadline
		}()
	}
	waitFor(t, "handlers running", 10*time.Second, func() bool { return running.Load() >= 200 })
	cancel()
	wg.Wait()
	waitFor(t, "the handlers' contexts to end", 5*time.Second, func() bool {
		return ended.Load() == running.Load()
	})
	call, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	reply, err := caller.Call(call, target("echo"), []byte("x"))
	if err != nil || string(reply) != "echo:x" {
		t.Fatalf("a call after the cancels: %q, %v", reply, err)
	}
}

// Handler errors reach the caller whatever bytes their text holds.
func TestHandlerErrorTextsAreKept(t *testing.T) {
	_, caller := servedPair(t, map[string]Handler{
		"raw":   func(context.Context, CallInfo, []byte) ([]byte, error) { return nil, errors.New("bad \xff name") },
		"empty": func(context.Context, CallInfo, []byte) ([]byte, error) { return nil, &HandlerError{Message: "m"} },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var re *RemoteError
	if _, err := caller.Call(ctx, target("raw"), nil); !errors.As(err, &re) || re.Code != "error" || re.Message != "bad \uFFFD name" {
		t.Fatalf("invalid UTF-8 in an error: %v", err)
	}
	if _, err := caller.Call(ctx, target("empty"), nil); !errors.As(err, &re) || re.Code != "error" || re.Message != "m" {
		t.Fatalf("an empty code: %v", err)
	}
}

// A nil or zero Node reports ErrClosed instead of panicking.
func TestNilNodeIsClosed(t *testing.T) {
	for _, n := range []*Node{nil, {}} {
		if err := n.Close(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Close: %v", err)
		}
		n.Abort()
		if n.Name() != "" || n.EventsDropped() != 0 {
			t.Fatal("name or drops of a nil node")
		}
		if _, ok := <-n.Events(); ok {
			t.Fatal("events of a nil node")
		}
		if _, err := n.Call(context.Background(), target("x"), nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Call: %v", err)
		}
		if err := n.Serve("x", "1", Processor, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Serve: %v", err)
		}
		if err := n.CreateTribe("t"); !errors.Is(err, ErrClosed) {
			t.Fatalf("CreateTribe: %v", err)
		}
	}
}
