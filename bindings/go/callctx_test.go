package tribe

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// A handler's context is made lazily (see callCtx); it must still behave
// as a context.Context: a deadline from the caller's budget, Err that
// reports an expired deadline to a handler that never asked for Done,
// derived contexts that end with it, and an end once the handler returns.
func TestHandlerContexts(t *testing.T) {
	type seen struct {
		deadline    time.Duration
		ok          bool
		errAtStart  error
		errLater    error
		derivedErr  error
		afterReturn chan error
	}
	results := make(chan seen, 2)
	_, caller := servedPair(t, map[string]Handler{
		"inspect": func(ctx context.Context, info CallInfo, _ []byte) ([]byte, error) {
			var s seen
			dl, ok := ctx.Deadline()
			s.deadline, s.ok = time.Until(dl), ok
			s.errAtStart = ctx.Err()
			// Past the deadline without ever calling Done.
			time.Sleep(info.Budget + 20*time.Millisecond)
			s.errLater = ctx.Err()
			results <- s
			return nil, s.errLater
		},
		"derive": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			child, cancel := context.WithCancel(ctx)
			defer cancel()
			after := make(chan error, 1)
			go func() { <-ctx.Done(); after <- ctx.Err() }()
			s := seen{afterReturn: after}
			select {
			case <-child.Done():
				s.derivedErr = child.Err()
			case <-time.After(5 * time.Second):
			}
			results <- s
			return nil, child.Err()
		},
	})

	// The handler's result; it fails the test when the handler never ran.
	next := func(what string) seen {
		t.Helper()
		select {
		case s := <-results:
			return s
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: the handler did not run", what)
			return seen{}
		}
	}

	// A budget of 2 s, so that Err at the handler's start sees it well
	// ahead also when a loaded machine starts the handler late (it waits
	// out the budget: the test takes that long).
	const budget = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	_, err := caller.Call(ctx, target("inspect"), nil)
	cancel()
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("inspect: %v, want a timeout", err)
	}
	s := next("inspect")
	if !s.ok || s.deadline <= 0 || s.deadline > budget {
		t.Errorf("deadline %v (%v), want within the caller's %v", s.deadline, s.ok, budget)
	}
	if s.errAtStart != nil || !errors.Is(s.errLater, context.DeadlineExceeded) {
		t.Errorf("Err at start %v, past the deadline %v", s.errAtStart, s.errLater)
	}

	// A derived context ends at the caller's deadline too; the handler's
	// own ends once it returned.
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = caller.Call(ctx, target("derive"), nil)
	cancel()
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("derive: %v, want a timeout", err)
	}
	s = next("derive")
	if !errors.Is(s.derivedErr, context.DeadlineExceeded) {
		t.Errorf("derived context: %v", s.derivedErr)
	}
	select {
	case err := <-s.afterReturn:
		if err == nil {
			t.Error("Done closed with a nil Err")
		}
	case <-time.After(5 * time.Second):
		t.Error("the handler's context did not end after it returned")
	}
}

// Incoming calls' names are interned, and still right when they vary.
func TestCallInfoNames(t *testing.T) {
	got := make(chan CallInfo, 8)
	host, caller := servedPair(t, nil)
	for _, name := range []string{"a", "bb", "ccc"} {
		if err := host.Serve(name, "1", Processor, func(_ context.Context, info CallInfo, p []byte) ([]byte, error) {
			got <- info
			return p, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the endpoints", 20*time.Second, func() bool {
		m, err := caller.Member(host.Name())
		return err == nil && len(m.Endpoints) == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 6; i++ {
		name := []string{"a", "bb", "ccc"}[i%3]
		payload := []byte(fmt.Sprint(i))
		reply, err := caller.Call(ctx, target(name), payload)
		if err != nil || string(reply) != string(payload) {
			t.Fatalf("call %s: %q, %v", name, reply, err)
		}
		info := <-got
		if info.Plugin != name || info.Tribe != "svc" || info.Version != "1" || info.Caller != caller.Name() {
			t.Fatalf("call %s: info %+v", name, info)
		}
	}
}
