package tribe

import (
	"context"
	"errors"
	"log"
	"os"
	"strings"
	"testing"
	"time"
)

// A call ended by its context also matches the cause the context was given
// (context.WithCancelCause, WithTimeoutCause), and says it.
func TestCallErrorsKeepTheContextsCause(t *testing.T) {
	_, caller := servedPair(t, map[string]Handler{
		"wait": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	stopped := errors.New("the collector stopped")
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel(stopped)
	}()
	_, err := caller.Call(ctx, target("wait"), nil)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) || !errors.Is(err, stopped) ||
		!strings.Contains(err.Error(), stopped.Error()) {
		t.Fatalf("cancelled with a cause: %v", err)
	}
	// Already cancelled before the call.
	if _, err := caller.Call(ctx, target("wait"), nil); !errors.Is(err, stopped) || !errors.Is(err, ErrCancelled) {
		t.Fatalf("a call on a context cancelled before: %v", err)
	}
	late := errors.New("the scrape took too long")
	for i := 0; i < 5; i++ { // both ends race for the deadline: try several
		ctx, cancel := context.WithTimeoutCause(context.Background(), 50*time.Millisecond, late)
		_, err := caller.Call(ctx, target("wait"), nil)
		cancel()
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, late) ||
			!strings.HasSuffix(err.Error(), ": "+late.Error()) {
			t.Fatalf("timed out with a cause: %v", err)
		}
	}
	// Under a ms left: refused before it is sent, with the cause, and the
	// context has ended when Call returns.
	for _, left := range []time.Duration{time.Microsecond, 500 * time.Microsecond} {
		ctx, cancel := context.WithTimeoutCause(context.Background(), left, late)
		_, err := caller.Call(ctx, target("wait"), nil)
		ended := ctx.Err()
		cancel()
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, late) || ended == nil {
			t.Fatalf("%v left: %v (ctx.Err() %v)", left, err, ended)
		}
	}
	// Without a cause, as before (whichever end's timer came first).
	plain, done := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer done()
	if _, err := caller.Call(plain, target("wait"), nil); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTimeout) || strings.Count(err.Error(), ": ") != 1 {
		t.Fatalf("timed out without a cause: %v", err)
	}
}

// blockingHost serves a handler that ignores its context until the test
// ends, and starts one call to it.
func blockingHost(t *testing.T) (host *Node, callErr chan error) {
	release := make(chan struct{})
	running := make(chan struct{}, 1)
	host, caller := servedPair(t, map[string]Handler{
		"stuck": func(context.Context, CallInfo, []byte) ([]byte, error) {
			running <- struct{}{}
			<-release
			return []byte("late"), nil
		},
	})
	t.Cleanup(func() { close(release) })
	callErr = make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := caller.Call(ctx, target("stuck"), nil)
		callErr <- err
	}()
	select {
	case <-running:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not start")
	}
	return host, callErr
}

// Shutdown waits for running handlers only as long as its context allows,
// and says so; a Close after it returns the node's own result.
func TestShutdownBoundsTheWaitForHandlers(t *testing.T) {
	host, callErr := blockingHost(t)
	host.inner().drain = time.Hour // Close's own bound must not be what ends the wait
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := host.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a handler still running: %v", err)
	}
	if err := host.Close(); err != nil {
		t.Fatalf("Close after Shutdown: %v", err)
	}
	if err := host.Shutdown(context.Background()); err != nil {
		t.Fatalf("a second Shutdown: %v", err)
	}
	//lint:ignore SA1012 a nil Context is refused
	if err := host.Shutdown(nil); err == nil {
		t.Fatal("Shutdown(nil) was accepted")
	}
	select {
	case err := <-callErr:
		if err == nil {
			t.Fatal("the caller got an answer from a handler dropped at Shutdown")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the caller was not answered after Shutdown")
	}
}

// A handler given up by Shutdown has its answer dropped, also one that comes
// a moment later (the free waited 2 s for it, and sent it), and an idle
// node's Shutdown with a context already done is a clean stop.
func TestShutdownDropsTheAnswersOfHandlersItGaveUp(t *testing.T) {
	host, caller := servedPair(t, map[string]Handler{
		"slow": func(context.Context, CallInfo, []byte) ([]byte, error) {
			time.Sleep(time.Second)
			return []byte("late"), nil
		},
	})
	callErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		reply, err := caller.Call(ctx, target("slow"), nil)
		if err == nil {
			err = errors.New("answered " + string(reply))
		}
		callErr <- err
	}()
	waitFor(t, "the handler running", 10*time.Second, func() bool { return host.inner().running.Load() == 1 })
	gone := errors.New("the operator stopped it")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 100*time.Millisecond, gone)
	defer cancel()
	if err := host.Shutdown(ctx); !errors.Is(err, gone) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-callErr; !errors.Is(err, ErrDisconnected) {
		t.Fatalf("the caller of a handler given up: %v", err)
	}
	idle := startNode(t, "idle", nil)
	done, stop := context.WithCancelCause(context.Background())
	stop(errors.New("already gone"))
	if err := idle.Shutdown(done); err != nil {
		t.Fatalf("Shutdown of an idle node with a context already done: %v", err)
	}
}

// An Abort while Close waits for a handler that ignores its context ends
// that wait: an operator's second signal stops the node.
func TestAbortEndsTheWaitOfARunningClose(t *testing.T) {
	host, _ := blockingHost(t)
	in := host.inner()
	in.drain = time.Hour
	closed := make(chan error, 1)
	go func() { closed <- host.Close() }()
	waitFor(t, "Close to begin", 10*time.Second, func() bool { return in.closing.Load() })
	time.Sleep(100 * time.Millisecond) // Close is in its wait now, or soon
	host.Abort()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close cut by Abort: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Abort did not end the running Close")
	}
	// Shutdown says it was cut.
	host, _ = blockingHost(t)
	host.inner().drain = time.Hour
	go func() { closed <- host.Shutdown(context.Background()) }()
	waitFor(t, "Shutdown to begin", 10*time.Second, func() bool { return host.inner().closing.Load() })
	time.Sleep(100 * time.Millisecond)
	host.Abort()
	select {
	case err := <-closed:
		if !errors.Is(err, ErrShuttingDown) {
			t.Fatalf("Shutdown cut by Abort: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Abort did not end the running Close")
	}
}

type ctxKey struct{}

// Handlers' contexts carry Config.BaseContext's values, and not its end.
func TestHandlersSeeTheBaseContextsValues(t *testing.T) {
	base, cancelBase := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "collector-7"))
	seen := make(chan string, 2)
	host := startNode(t, "host", func(c *Config) { c.BaseContext = base })
	caller := startNode(t, "caller", func(c *Config) { c.Seeds = []string{host.Addr()} })
	if err := host.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	if err := host.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	if err := host.Serve("who", "1", Processor, func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
		v, _ := ctx.Value(ctxKey{}).(string)
		seen <- v
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return []byte(v), nil
	}); err != nil {
		t.Fatal(err)
	}
	cancelBase() // does not end the handlers' contexts
	waitFor(t, "the caller to see the host serve", 20*time.Second, func() bool {
		m, err := caller.Member(host.Name())
		return err == nil && len(m.Endpoints) == 1 && inTribe(caller, "svc", host.Name())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := caller.Call(ctx, target("who"), nil)
	if err != nil || string(reply) != "collector-7" || <-seen != "collector-7" {
		t.Fatalf("a handler's context value: %q, %v", reply, err)
	}
}

// A handler's panic goes to Config.ErrorLog, not to the standard logger.
func TestAHandlersPanicGoesToTheErrorLog(t *testing.T) {
	var own, std syncBuffer
	log.SetOutput(&std)
	defer log.SetOutput(os.Stderr)
	host := startNode(t, "host", func(c *Config) { c.ErrorLog = log.New(&own, "svc: ", 0) })
	caller := startNode(t, "caller", func(c *Config) { c.Seeds = []string{host.Addr()} })
	if err := host.CreateTribe("svc"); err != nil {
		t.Fatal(err)
	}
	if err := host.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	if err := host.Serve("boom", "1", Processor, func(context.Context, CallInfo, []byte) ([]byte, error) {
		panic("boom")
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the caller to see the host serve", 20*time.Second, func() bool {
		m, err := caller.Member(host.Name())
		return err == nil && len(m.Endpoints) == 1 && inTribe(caller, "svc", host.Name())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var re *RemoteError
	if _, err := caller.Call(ctx, target("boom"), nil); !errors.As(err, &re) || re.Code != "panic" {
		t.Fatalf("a panicking handler: %v", err)
	}
	if !strings.HasPrefix(own.String(), "svc: tribe: handler of boom") || strings.Contains(std.String(), "panicked") {
		t.Fatalf("error log %q, standard log %q", own.String(), std.String())
	}
}

// context.Cause of a handler's context says the node is closing, apart from
// a caller that gave up (context.Canceled alone).
func TestAHandlersContextSaysWhyItEnded(t *testing.T) {
	causes := make(chan error, 2)
	host, caller := servedPair(t, map[string]Handler{
		"wait": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = caller.Call(ctx, target("wait"), nil) }()
	waitFor(t, "the handler running", 10*time.Second, func() bool { return host.inner().running.Load() == 1 })
	cancel()
	if cause := <-causes; !errors.Is(cause, context.Canceled) || errors.Is(cause, ErrShuttingDown) {
		t.Fatalf("a caller that gave up: %v", cause)
	}
	waitFor(t, "the first handler done", 10*time.Second, func() bool { return host.inner().running.Load() == 0 })
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = caller.Call(ctx, target("wait"), nil)
	}()
	waitFor(t, "the handler running", 10*time.Second, func() bool { return host.inner().running.Load() == 1 })
	go host.Close()
	if cause := <-causes; !errors.Is(cause, ErrShuttingDown) {
		t.Fatalf("a node closing: %v", cause)
	}
}

// A handler's context that ended at its deadline keeps that as its cause
// when the node closes afterwards (it said ErrShuttingDown, while Err said
// DeadlineExceeded).
func TestAHandlersContextEndedBeforeCloseKeepsItsCause(t *testing.T) {
	ended, closing := make(chan struct{}), make(chan struct{})
	causes := make(chan error, 1)
	host, caller := servedPair(t, map[string]Handler{
		"late": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			<-ctx.Done()
			close(ended)
			<-closing
			causes <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, _ = caller.Call(ctx, target("late"), nil)
	}()
	<-ended
	go host.Close()
	waitFor(t, "the node closing", 10*time.Second, func() bool { return host.inner().base.Err() != nil })
	close(closing)
	if cause := <-causes; !errors.Is(cause, context.DeadlineExceeded) {
		t.Fatalf("cause %v, want the deadline", cause)
	}
}
