package tribe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// servedPair starts a host in tribe svc serving the given handlers (name ->
// handler, all version 1 processors) and a caller outside the tribe, and
// waits until the caller sees every endpoint.
func servedPair(t testing.TB, handlers map[string]Handler) (host, caller *Node) {
	t.Helper()
	host = startNode(t, "host", nil)
	caller = startNode(t, "caller", func(c *Config) { c.Seeds = []string{host.Addr()} })
	if err := host.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	if err := host.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	for name, h := range handlers {
		if err := host.Serve(name, "1", Processor, h); err != nil {
			t.Fatalf("serve %s: %v", name, err)
		}
	}
	waitFor(t, "the caller to see the host's endpoints in tribe svc", 20*time.Second, func() bool {
		m, err := caller.Member(host.Name())
		if err != nil || m.State != "alive" || len(m.Endpoints) != len(handlers) {
			return false
		}
		return inTribe(caller, "svc", host.Name())
	})
	return host, caller
}

func target(plugin string) Target {
	return Target{Tribe: "svc", Plugin: plugin, Version: "1", Kind: Processor}
}

func echo(_ context.Context, _ CallInfo, payload []byte) ([]byte, error) {
	return append([]byte("echo:"), payload...), nil
}

func TestCallsThroughATribe(t *testing.T) {
	var (
		infoMu   sync.Mutex
		lastInfo CallInfo
	)
	// The slow handler runs for every deadline and cancellation below;
	// its sends never block it (the tests read the first ones only).
	slowEnded := make(chan error, 4)
	// Signalled when the call of the "cancellation" subtest (its payload)
	// has reached the slow handler.
	slowStarted := make(chan struct{}, 1)
	host, caller := servedPair(t, map[string]Handler{
		"echo": echo,
		"info": func(_ context.Context, info CallInfo, _ []byte) ([]byte, error) {
			infoMu.Lock()
			lastInfo = info
			infoMu.Unlock()
			return nil, nil
		},
		"refuse": func(context.Context, CallInfo, []byte) ([]byte, error) {
			return nil, &HandlerError{Code: "bad_input", Message: "not a metric batch"}
		},
		"broken": func(context.Context, CallInfo, []byte) ([]byte, error) {
			return nil, fmt.Errorf("disk full")
		},
		"panics": func(context.Context, CallInfo, []byte) ([]byte, error) {
			var m map[string]int
			m["boom"]++ // nil map write
			return nil, nil
		},
		"typed-nil": func(context.Context, CallInfo, []byte) ([]byte, error) {
			var he *HandlerError // a nil pointer in a non-nil error
			return nil, he
		},
		"huge": func(context.Context, CallInfo, []byte) ([]byte, error) {
			return make([]byte, 5<<20), nil // over the default 4 MiB
		},
		"slow": func(ctx context.Context, _ CallInfo, payload []byte) ([]byte, error) {
			if string(payload) == cancelMe {
				select {
				case slowStarted <- struct{}{}:
				default:
				}
			}
			<-ctx.Done()
			select {
			case slowEnded <- ctx.Err():
			default:
			}
			return nil, ctx.Err()
		},
	})
	bg := context.Background()

	t.Run("1000 calls from 16 goroutines", func(t *testing.T) {
		const workers, per = 16, 1000 / 16
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per+boolInt(w < 1000%16); i++ {
					payload := []byte(fmt.Sprintf("w%d-i%d-%s", w, i, strings.Repeat("x", i%50)))
					ctx, cancel := context.WithTimeout(bg, 10*time.Second)
					reply, err := caller.Call(ctx, target("echo"), payload)
					cancel()
					if err != nil {
						errs <- fmt.Errorf("call %d/%d: %w", w, i, err)
						return
					}
					if !bytes.Equal(reply, append([]byte("echo:"), payload...)) {
						errs <- fmt.Errorf("call %d/%d: reply %q", w, i, reply)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("call info and empty payloads", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		reply, err := caller.Call(ctx, target("info"), nil)
		if err != nil || len(reply) != 0 {
			t.Fatalf("reply %q err %v", reply, err)
		}
		infoMu.Lock()
		info := lastInfo
		infoMu.Unlock()
		if info.Caller != caller.Name() || info.Tribe != "svc" || info.Plugin != "info" || info.Version != "1" {
			t.Fatalf("call info %+v", info)
		}
		if info.Budget <= 0 || info.Budget > 5*time.Second {
			t.Fatalf("budget %v", info.Budget)
		}
	})

	t.Run("handler error", func(t *testing.T) {
		_, err := caller.Call(bg, target("refuse"), []byte("x"))
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != "bad_input" || re.Message != "not a metric batch" || !errors.Is(err, ErrRemote) {
			t.Fatalf("got %v", err)
		}
		_, err = caller.Call(bg, target("broken"), nil)
		if !errors.As(err, &re) || re.Code != "error" || re.Message != "disk full" {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("handler panic", func(t *testing.T) {
		var logged syncBuffer
		log.SetOutput(&logged)
		defer log.SetOutput(os.Stderr)
		_, err := caller.Call(bg, target("panics"), nil)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != "panic" || !strings.Contains(re.Message, "nil map") {
			t.Fatalf("got %v", err)
		}
		// The serving process keeps the stack (logged before the answer).
		if text := logged.String(); !strings.Contains(text, "panicked on a call from") || !strings.Contains(text, "runHandler") {
			t.Fatalf("logged: %q", text)
		}
		// The node keeps serving.
		reply, err := caller.Call(bg, target("echo"), []byte("after"))
		if err != nil || string(reply) != "echo:after" {
			t.Fatalf("after a panic: %q %v", reply, err)
		}
	})

	t.Run("a typed nil error", func(t *testing.T) {
		_, err := caller.Call(bg, target("typed-nil"), nil)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != "error" {
			t.Fatalf("got %v", err)
		}
		reply, err := caller.Call(bg, target("echo"), []byte("after"))
		if err != nil || string(reply) != "echo:after" {
			t.Fatalf("after a typed nil: %q %v", reply, err)
		}
	})

	t.Run("a reply over the limit", func(t *testing.T) {
		_, err := caller.Call(bg, target("huge"), nil)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != "too_large" || !errors.Is(err, ErrTooLarge) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("no provider", func(t *testing.T) {
		_, err := caller.Call(bg, target("nobody-serves-this"), nil)
		if !errors.Is(err, ErrNoProvider) {
			t.Fatalf("got %v", err)
		}
		_, err = caller.Call(bg, Target{Tribe: "svc", Plugin: "echo", Version: "1", Kind: Publisher}, nil)
		if !errors.Is(err, ErrNoProvider) {
			t.Fatalf("wrong kind: got %v", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		before := callCount(t, caller, "timeout")
		ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := caller.Call(ctx, target("slow"), nil)
		took := time.Since(start)
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		// libtribe's own timeout ends it, and says where it waited, unless
		// its answer comes more than deadlineGrace after the context's
		// deadline (a loaded machine): then the error is the context's.
		// One of the ten calls here must name the host.
		named := strings.Contains(err.Error(), host.Name())
		if took > 3*time.Second {
			t.Fatalf("the call took %v", took)
		}
		// Each counted as a timeout, whichever deadline (the context's or
		// libtribe's) ended it first. 300 ms, not less: a call that finds
		// under 1 ms left when it checks the deadline (a loaded machine can
		// stall it that long) is not sent, nor counted.
		for i := 0; i < 9; i++ {
			ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
			_, err := caller.Call(ctx, target("slow"), nil)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v", err)
			}
			named = named || strings.Contains(err.Error(), host.Name())
		}
		if !named {
			t.Fatalf("no timeout of ten named the host: the first said %v", err)
		}
		if after := callCount(t, caller, "timeout"); after != before+10 {
			t.Fatalf("calls.timeout went from %d to %d after 10 timeouts", before, after)
		}
		// The handler's context ended with the caller's budget.
		select {
		case err := <-slowEnded:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("handler context ended with %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the handler's context did not end at the caller's deadline")
		}
	})

	t.Run("cancellation", func(t *testing.T) {
		before := callCount(t, caller, "abandoned")
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		returned := make(chan error, 1)
		go func() {
			_, err := caller.Call(ctx, target("slow"), []byte(cancelMe))
			returned <- err
		}()
		// Cancelled once the call runs on the host: cancelled before it is
		// sent, Call returns without sending it and abandons nothing.
		select {
		case <-slowStarted:
		case err := <-returned:
			t.Fatalf("the call returned %v before reaching the handler", err)
		case <-time.After(20 * time.Second):
			t.Fatal("the call did not reach the slow handler")
		}
		cancel()
		// Its handler runs until the caller gives up (or for the 5 min of
		// MaxCallBudget): only abandoning the call at once returns it.
		var err error
		select {
		case err = <-returned:
		case <-time.After(5 * time.Second):
			t.Fatal("a cancelled call did not return within 5 s of its cancel")
		}
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCancelled) {
			t.Fatalf("got %v", err)
		}
		// Counted on the calling side too.
		if after := callCount(t, caller, "abandoned"); after != before+1 {
			t.Fatalf("calls.abandoned went from %d to %d", before, after)
		}
		// An already expired context never starts a call.
		_, err = caller.Call(ctx, target("echo"), nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("local calls and unserve", func(t *testing.T) {
		reply, err := host.Call(bg, target("echo"), []byte("self"))
		if err != nil || string(reply) != "echo:self" {
			t.Fatalf("local call: %q %v", reply, err)
		}
		if err := host.Unserve("echo", "1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the endpoint to be withdrawn", 10*time.Second, func() bool {
			_, err := caller.Call(bg, target("echo"), nil)
			return errors.Is(err, ErrNoProvider)
		})
	})
}

// cancelMe is the payload of the call the "cancellation" subtest cancels.
const cancelMe = "cancel me"

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nearDeadline is a context whose deadline is always 500 µs away, so that
// Call sees less than 1 ms left however slow the test runs.
type nearDeadline struct{ context.Context }

func (nearDeadline) Deadline() (time.Time, bool) { return time.Now().Add(500 * time.Microsecond), true }

// A call with under 1 ms left is not sent: it ends with ErrTimeout (also
// context.DeadlineExceeded) at once, and no handler starts with an
// expired context.
func TestCallUnderAMillisecondIsNotSent(t *testing.T) {
	n := startNode(t, "near", nil)
	if err := n.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	if err := n.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	if err := n.Serve("echo", "1", Processor, func(ctx context.Context, c CallInfo, p []byte) ([]byte, error) {
		started <- struct{}{}
		return echo(ctx, c, p)
	}); err != nil {
		t.Fatal(err)
	}
	counts := func() string {
		c, err := n.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(c["calls"])
	}
	before := counts()
	_, err := n.Call(nearDeadline{context.Background()}, target("echo"), []byte("x"))
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	select {
	case <-started:
		t.Fatal("the handler ran")
	case <-time.After(100 * time.Millisecond):
	}
	if after := counts(); after != before {
		t.Fatalf("the call was sent: calls counters went from %s to %s", before, after)
	}
}

// Calls this node refuses for its own MaxInflight are counted as
// overloaded, as a host's refusal is: a collector watching its own
// counters sees them.
func TestCallsOverOwnInflightAreCountedOverloaded(t *testing.T) {
	n := startNode(t, "busy", func(c *Config) { c.Limits = Limits{MaxInflight: 1} })
	if err := n.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	if err := n.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	if err := n.Serve("hold", "1", Processor, func(ctx context.Context, c CallInfo, p []byte) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return p, nil
	}); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := n.Call(ctx, target("hold"), []byte("x"))
		held <- err
	}()
	waitFor(t, "the first call in flight", 10*time.Second, func() bool {
		c, err := n.Counters()
		return err == nil && c["calls"]["in_flight"].String() == "1"
	})
	for i := 0; i < 4; i++ {
		_, err := n.Call(context.Background(), target("hold"), []byte("y"))
		if !errors.Is(err, ErrOverloaded) {
			t.Fatalf("call %d over MaxInflight: %v", i, err)
		}
		// The message names this node's own limit, not a host's.
		if !strings.Contains(err.Error(), "this node has as many calls in flight as it allows (max_inflight 1") {
			t.Fatalf("call %d: %v does not name this node's limit", i, err)
		}
	}
	c, err := n.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c["calls"]["overloaded"].String(); got != "4" {
		t.Fatalf("overloaded = %s, want 4 (%v)", got, c["calls"])
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
