package tribe

/*
#include "tribe.h"
*/
import "C"

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// abandonPoll is how often a running handler's call is checked for being
// abandoned by its caller, once the handler watches its context.
const abandonPoll = 50 * time.Millisecond

// callCtx is a handler's context. It ends at the caller's deadline, when
// the caller abandons the call, or when the node closes. Most handlers
// answer without looking at Done, so the channel, the timer and the
// watch on the node are made only when Done is first asked for: a
// context.WithTimeout per call cost two timers and a goroutine-safe
// registration every time.
type callCtx struct {
	base     context.Context // ends at Close
	values   context.Context // base's values, without its end
	deadline time.Time
	r        *C.tribe_responder
	// byBase says the context ended because the node closed: only then
	// does context.Cause look past it to the node's (ErrShuttingDown).
	byBase atomic.Bool

	mu       sync.Mutex
	done     chan struct{}
	err      error
	finished bool        // the handler returned: r may be freed
	timer    *time.Timer // deadline and abandonment checks
	stopBase func() bool // the watch on base
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newCallCtx(base, values context.Context, budget time.Duration, r *C.tribe_responder) *callCtx {
	return &callCtx{base: base, values: values, deadline: time.Now().Add(budget), r: r}
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Value looks up the node's base context's values. context.Cause finds the
// node's cause through it only when the node's close ended this context:
// one that ended at its deadline or by its caller keeps its own error as
// its cause, also once the node closes later.
func (c *callCtx) Value(key any) any {
	if c.byBase.Load() {
		return c.base.Value(key)
	}
	return c.values.Value(key)
}

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	if c.err == nil {
		c.err = c.check()
	}
	if c.err != nil || c.finished {
		c.done = closedChan
		if c.err == nil {
			c.err = context.Canceled
		}
		return c.done
	}
	c.done = make(chan struct{})
	c.stopBase = context.AfterFunc(c.base, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err == nil {
			c.byBase.Store(true)
		}
		c.endLocked(context.Canceled)
	})
	c.timer = time.AfterFunc(c.nextCheck(), c.tick)
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && c.done == nil {
		// Not watched: worked out on demand (and kept once set).
		c.err = c.check()
	}
	return c.err
}

// check is why the context is over now, or nil. Called with mu held.
func (c *callCtx) check() error {
	if c.base.Err() != nil {
		// Every caller keeps what check returns as the context's error.
		c.byBase.Store(true)
		return context.Canceled
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	if !c.finished && bool(C.tribe_responder_is_abandoned(c.r)) {
		// Given up on at the deadline, give or take a hair: libtribe ends
		// the call when its budget runs out, and the caller's cancel at
		// its own deadline may arrive a little before this one (a faster
		// way back than there): that is the deadline, not a cancel.
		if time.Until(c.deadline) <= deadlineSlack {
			return context.DeadlineExceeded
		}
		return context.Canceled
	}
	return nil
}

// deadlineSlack is how close to the deadline a call given up on counts as
// past its deadline.
const deadlineSlack = 50 * time.Millisecond

// nextCheck is when the timer looks next: at the deadline, or sooner to
// see whether the caller gave up.
func (c *callCtx) nextCheck() time.Duration {
	return min(time.Until(c.deadline), abandonPoll)
}

func (c *callCtx) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || c.err != nil {
		return
	}
	if err := c.check(); err != nil {
		c.endLocked(err)
		return
	}
	c.timer.Reset(c.nextCheck())
}

func (c *callCtx) endLocked(err error) {
	if c.err == nil {
		c.err = err
	}
	if c.done != nil && c.done != closedChan {
		select {
		case <-c.done:
		default:
			close(c.done)
		}
	}
}

// finish is called when the handler has returned (again by the deferred
// free, also after a runtime.Goexit), before the responder
// is answered or freed: the context ends (as a context.WithCancel's
// cancel would end it) and stops looking at the responder. It tells
// whether the deadline had passed, with the node still open (false when
// called again).
func (c *callCtx) finish() (expired bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return false
	}
	c.finished = true
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stopBase != nil {
		c.stopBase()
	}
	// One look at the clock: it is slow to read on some virtual machines.
	if time.Now().Before(c.deadline) {
		c.endLocked(context.Canceled)
		return false
	}
	c.endLocked(context.DeadlineExceeded)
	return c.base.Err() == nil
}
