package tribe

/*
#include <stdlib.h>
#include "tribe.h"

// The polling goroutine's steps, each in one crossing into C (a crossing
// costs more than the C calls it makes).

// A completion: its call's id and outcome; frees the event.
static uint32_t go_take_done(tribe_event *ev, uint64_t *id, uint8_t **reply, size_t *len,
                             tribe_error **err) {
	tribe_event_call_id(ev, id, NULL);
	uint32_t rc = tribe_event_take_reply(ev, reply, len, err);
	tribe_event_free(ev);
	return rc;
}

// A handler's reply; frees the responder.
static void go_reply(tribe_responder *r, const uint8_t *data, size_t len) {
	tribe_responder_reply(r, data, len, NULL);
	tribe_responder_free(r);
}

// An incoming call: its responder and details; frees the event.
static uint32_t go_take_call(tribe_event *ev, tribe_responder **r, tribe_call_info *info) {
	uint32_t rc = tribe_event_take_responder(ev, r, NULL);
	tribe_event_free(ev);
	if (rc != TRIBE_OK) return rc;
	rc = tribe_responder_info(*r, info, NULL);
	if (rc != TRIBE_OK) {
		tribe_responder_free(*r);
		*r = NULL;
	}
	return rc;
}
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Handler serves calls to a plugin. Each incoming call runs in its own
// goroutine; ctx ends at the caller's deadline, when the caller gives up
// on the call (its context was cancelled; noticed within about 50 ms), or
// when the node closes. Returning a *HandlerError sets the code and message
// the caller sees (invalid UTF-8 is replaced, an empty code becomes
// "error"); any other error gives the code "error"; a panic is recovered
// and gives the code "panic" (the node keeps serving). A handler that
// returns its context's error because the node is closing (ctx ended by
// Close) gives the code "shutting_down": it ran, so the caller does not
// move the call to another member (it may have taken effect).
type Handler func(ctx context.Context, call CallInfo, payload []byte) ([]byte, error)

// callResult is how an asynchronous call ended.
type callResult struct {
	reply []byte
	err   error
}

// callRegistry matches completions to waiting calls. Each call id is claimed
// exactly once: by its completion (pending -> delivered), by a caller that
// gives up (pending -> abandoned, whose completion is then discarded), or by
// the end of the polling goroutine. A completion that arrives before its
// caller registered waits in early.
type callRegistry struct {
	mu        sync.Mutex
	pending   map[uint64]chan callResult
	early     map[uint64]callResult
	abandoned map[uint64]struct{}
	ended     bool
}

func (r *callRegistry) init() {
	r.pending = map[uint64]chan callResult{}
	r.early = map[uint64]callResult{}
	r.abandoned = map[uint64]struct{}{}
}

var chanPool = sync.Pool{New: func() any { return make(chan callResult, 1) }}

// register parks ch for id; it returns the result at once when the
// completion came first or the node has ended.
func (r *callRegistry) register(id uint64, ch chan callResult) (callResult, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res, ok := r.early[id]; ok {
		delete(r.early, id)
		return res, true
	}
	if r.ended {
		return callResult{err: shuttingDown()}, true
	}
	r.pending[id] = ch
	return callResult{}, false
}

// abandon gives up on id; false when its completion was delivered already.
func (r *callRegistry) abandon(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pending[id]; !ok {
		return false
	}
	delete(r.pending, id)
	if !r.ended {
		r.abandoned[id] = struct{}{}
	}
	return true
}

// complete delivers a completion (polling goroutine).
func (r *callRegistry) complete(id uint64, res callResult) {
	r.mu.Lock()
	if ch, ok := r.pending[id]; ok {
		delete(r.pending, id)
		r.mu.Unlock()
		ch <- res
		return
	}
	if _, ok := r.abandoned[id]; ok {
		delete(r.abandoned, id)
		r.mu.Unlock()
		return
	}
	r.early[id] = res
	r.mu.Unlock()
}

// end fails every call still waiting: the node has stopped and no more
// completions will come.
func (r *callRegistry) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = true
	for id, ch := range r.pending {
		delete(r.pending, id)
		ch <- callResult{err: shuttingDown()}
	}
	// early stays: its calls' callers have not registered yet and will
	// take their results (a completion that came before a Close is kept).
	clear(r.abandoned)
}

func shuttingDown() error {
	return &Error{Code: "shutting_down", Message: "the node stopped with the call in flight"}
}

// MaxCallBudget is the longest a host runs a call: a call whose deadline is
// further away, or that has none, ends with ErrTimeout after this long
// (without matching context.DeadlineExceeded, as its context has not
// expired).
const MaxCallBudget = 5 * time.Minute

// Call calls a plugin served by a live member of t.Tribe (this node first
// when it serves it) and returns its reply. The context's deadline is the
// call's timeout, up to MaxCallBudget (without a deadline the call waits up
// to MaxCallBudget); with less than 1 ms left the call is not sent and
// ends with ErrTimeout at once. Cancelling the context abandons the call
// at once; at its deadline, libtribe's own timeout ends it (within
// 5 ms), and the error names the host the call waited on.
// Errors: ErrUnknownTribe (this node does not know the tribe, or not yet:
// it learns tribes from its peers after Start), ErrNoProvider (no live
// member serves the plugin), ErrTimeout (also matching
// context.DeadlineExceeded when the context's deadline was reached),
// ErrCancelled (also matching context.Canceled), *RemoteError, ErrTooLarge
// (the payload, or the reply, is over a node's limit), ErrOverloaded,
// ErrDisconnected, ErrShuttingDown, ErrClosed, ErrIO (this process could
// not open a connection: out of descriptors, buffers or memory; no
// host is blamed).
func (n *Node) Call(ctx context.Context, t Target, payload []byte) ([]byte, error) {
	defer runtime.KeepAlive(n)
	in := n.inner()
	if ctx == nil {
		return nil, &Error{Code: "invalid_argument", Message: "nil Context"}
	}
	if ctx.Err() != nil {
		return nil, contextError(ctxEnd(ctx, nil))
	}
	timeout := uint32(math.MaxUint32)
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		left := time.Until(deadline)
		if left < time.Millisecond {
			// libtribe counts whole ms: a call sent now would start its
			// handler with an expired context. Its end is waited for (less
			// than a ms), so that the error carries the context's cause and
			// ctx.Err() is set when Call returns.
			expired := time.NewTimer(left + deadlineGrace)
			select {
			case <-ctx.Done():
			case <-expired.C:
				awaitPassedDeadline(ctx)
			}
			expired.Stop()
			return nil, contextError(ctxEnd(ctx, context.DeadlineExceeded))
		}
		ms := (left + time.Millisecond - 1) / time.Millisecond
		if ms < math.MaxUint32 {
			timeout = uint32(ms)
		}
	}
	if err := nulErr(t.Tribe, t.Plugin, t.Version); err != nil {
		return nil, err
	}
	if err := kindError(t.Kind); err != nil {
		return nil, err
	}
	// The three strings go to C in one Go buffer, valid for the call only
	// (libtribe copies what it keeps): no C allocation per call.
	strs, ptrs := packStrings(t.Tribe, t.Plugin, t.Version)
	tribe, plugin, version := ptrs[0], ptrs[1], ptrs[2]
	if t.Version == "" {
		version = nil
	}
	var data *C.uint8_t
	if len(payload) > 0 {
		data = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(payload)))
	}
	var id C.uint64_t
	err := in.do(func(p *C.tribe_node, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_call_async(p, tribe, plugin, version, C.uint32_t(t.Kind),
			data, C.size_t(len(payload)), C.uint32_t(timeout), &id, e)
	})
	runtime.KeepAlive(strs)
	runtime.KeepAlive(payload)
	if err != nil {
		return nil, err
	}
	ch := chanPool.Get().(chan callResult)
	res, done := in.calls.register(uint64(id), ch)
	if !done {
		var ok bool
		if res, ok = in.await(ctx, uint64(id), ch); !ok {
			chanPool.Put(ch)
			return nil, contextError(ctxEnd(ctx, nil))
		}
	}
	chanPool.Put(ch)
	if res.err != nil {
		// Only when the deadline was reached: a host runs a call for at
		// most MaxCallBudget, so a longer deadline can time out first.
		// (libtribe's timeout is the deadline rounded up to a millisecond.)
		if hasDeadline && errors.Is(res.err, ErrTimeout) && time.Until(deadline) < time.Millisecond {
			// The deadline has passed: ctx's timer ends it, and then
			// says its cause.
			awaitPassedDeadline(ctx)
			return nil, withContext(res.err, ctxEnd(ctx, context.DeadlineExceeded))
		}
		return nil, res.err
	}
	return res.reply, nil
}

// awaitPassedDeadline waits for ctx, whose deadline has passed, to end:
// its timer runs on a goroutine of its own, which a loaded scheduler (one
// P) may run some ms late, and until then ctx.Err() is nil and its cause
// unknown. Bounded (1 s), for a Context whose Done never closes.
func awaitPassedDeadline(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	bound := time.NewTimer(time.Second)
	defer bound.Stop()
	select {
	case <-ctx.Done():
	case <-bound.C:
	}
}

// deadlineGrace is how long a call whose context's deadline passed waits
// for libtribe's own timeout, which ends it at the same deadline (rounded up
// to a millisecond) and names the host the call waited on.
const deadlineGrace = 5 * time.Millisecond

// await waits for call id's completion on ch; false when ctx ended first
// and the call was abandoned.
func (in *node) await(ctx context.Context, id uint64, ch chan callResult) (callResult, bool) {
	select {
	case res := <-ch:
		return res, true
	case <-ctx.Done():
	}
	expired := errors.Is(ctx.Err(), context.DeadlineExceeded)
	if expired {
		grace := time.NewTimer(deadlineGrace)
		defer grace.Stop()
		select {
		case res := <-ch:
			return res, true
		case <-grace.C:
		}
	}
	if in.calls.abandon(id) {
		in.cancel(id, expired)
		return callResult{}, false
	}
	// The completion won the race: it is in ch.
	return <-ch, true
}

// cancel tells libtribe to abandon a call; its completion is discarded.
// A call whose deadline passed counts as a timeout in the node's counters,
// as one libtribe timed out itself, unless libtribe had finished it already
// (its completion queued, not yet handed over): it counted as it ended.
func (in *node) cancel(id uint64, expired bool) {
	gcPoint()
	in.mu.RLock()
	defer in.mu.RUnlock()
	if in.ptr == nil {
		return
	}
	if expired {
		C.tribe_node_call_expire(in.ptr, C.uint64_t(id), nil)
	} else {
		C.tribe_node_call_cancel(in.ptr, C.uint64_t(id), nil)
	}
}

// responderHold is how long past a call's budget a handler that ran out of
// time keeps its responder unanswered, so that the caller times out first.
const responderHold = 200 * time.Millisecond

// handlerKey names a served plugin (a struct: no string built per call).
type handlerKey struct{ name, version string }

// Serve serves a plugin: the node advertises it, and any node that knows a
// tribe this node is in can call it through that tribe (a caller need not
// be a member). Serving the same name and version again replaces the
// handler, and its kind (a name and version is served as one kind). A
// node serves at most 256 plugins (name and version pairs); one more is
// ErrInvalidArgument.
func (n *Node) Serve(name, version string, kind Kind, h Handler) error {
	in := n.inner()
	if in.closing.Load() {
		return errClosed()
	}
	if h == nil {
		return &Error{Code: "invalid_argument", Message: "the handler is nil"}
	}
	if err := kindError(kind); err != nil {
		return err
	}
	key := handlerKey{name, version}
	// One Serve or Unserve at a time, so the handlers always match what
	// libtribe serves.
	in.serveMu.Lock()
	defer in.serveMu.Unlock()
	in.handlersMu.Lock()
	old, had := in.handlers[key]
	in.handlers[key] = h
	in.handlersMu.Unlock()
	err := n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_serve(p, a[0], a[1], C.uint32_t(kind), e)
	}, name, version)
	if err == nil {
		n.pin()
	} else {
		in.handlersMu.Lock()
		if had {
			in.handlers[key] = old
		} else {
			delete(in.handlers, key)
		}
		in.handlersMu.Unlock()
	}
	return err
}

// Unserve stops serving a plugin and withdraws its endpoint. Calls already
// running finish.
func (n *Node) Unserve(name, version string) error {
	in := n.inner()
	in.serveMu.Lock()
	defer in.serveMu.Unlock()
	err := n.cmd(func(p *C.tribe_node, a []*C.char, e **C.tribe_error) C.uint32_t {
		return C.tribe_node_unserve(p, a[0], a[1], e)
	}, name, version)
	if err == nil {
		in.handlersMu.Lock()
		delete(in.handlers, handlerKey{name, version})
		in.handlersMu.Unlock()
	}
	return err
}

// dispatch hands one event on; it owns ev.
func (in *node) dispatch(ev *C.tribe_event, kind C.uint32_t) {
	switch kind {
	case C.TRIBE_EVENT_CALL_DONE:
		var id C.uint64_t
		var buf *C.uint8_t
		var n C.size_t
		var cerr *C.tribe_error
		var res callResult
		if rc := C.go_take_done(ev, &id, &buf, &n, &cerr); rc == C.TRIBE_OK {
			res.reply = goBytes(buf, n)
			C.tribe_bytes_free(buf, n)
		} else {
			res.err = takeError(rc, cerr)
		}
		in.calls.complete(uint64(id), res)
	case C.TRIBE_EVENT_CALL:
		var r *C.tribe_responder
		var ci C.tribe_call_info
		if C.go_take_call(ev, &r, &ci) != C.TRIBE_OK {
			return
		}
		info, payload := in.callOf(&ci)
		in.handlerWG.Add(1)
		in.running.Add(1)
		go in.serveCall(r, info, payload)
	default:
		var text *C.char
		var n C.size_t
		rc := C.tribe_event_json(ev, &text, &n, nil)
		e := Event{Kind: EventKind(kind)}
		if rc == C.TRIBE_OK {
			var err error
			if e, err = decodeEvent(e.Kind, goBytes((*C.uint8_t)(unsafe.Pointer(text)), n)); err != nil {
				// Still delivered: its kind says what happened.
				e.Message = "libtribe: undecodable event details: " + err.Error()
			}
			C.tribe_string_free(text)
		}
		C.tribe_event_free(ev)
		select {
		case in.events <- e:
		default:
			in.dropped.Add(1)
			in.chanDropped.Add(1)
		}
	}
}

func goBytes(p *C.uint8_t, n C.size_t) []byte {
	if p == nil || n == 0 {
		return []byte{}
	}
	// Not C.GoBytes: its length is a C int.
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)))
}

// callOf copies an incoming call's details into Go. The strings are
// interned: the same few tribe, plugin and caller names come with every
// call. Only the polling goroutine calls it.
func (in *node) callOf(ci *C.tribe_call_info) (CallInfo, []byte) {
	info := CallInfo{
		Caller:  in.names.intern(ci.caller),
		Tribe:   in.names.intern(ci.tribe),
		Plugin:  in.names.intern(ci.plugin),
		Version: in.names.intern(ci.version),
		Budget:  time.Duration(ci.budget_us) * time.Microsecond,
	}
	return info, goBytes(ci.payload, ci.payload_len)
}

// serveCall runs a handler for one incoming call and answers it.
func (in *node) serveCall(r *C.tribe_responder, info CallInfo, payload []byte) {
	defer in.handlerWG.Done()
	defer in.running.Add(-1)
	var ctx *callCtx
	held := false
	defer func() {
		// Also when the handler ended its goroutine (runtime.Goexit): the
		// context stops looking at the responder before it is freed.
		if ctx != nil {
			ctx.finish()
		}
		if !held {
			C.tribe_responder_free(r)
		}
	}()
	gcPoint()
	in.handlersMu.RLock()
	h := in.handlers[handlerKey{info.Plugin, info.Version}]
	in.handlersMu.RUnlock()
	// What is left of the budget now, not info.Budget: the goroutine may
	// start well after the call arrived, and libtribe answers the caller
	// "timeout" when the budget counted from its arrival runs out.
	left := time.Duration(C.tribe_responder_remaining_us(r)) * time.Microsecond
	// Made before the look below: an allocation may wait for the
	// collector, and the look must come right before the handler runs.
	c := newCallCtx(in.base, in.values, left, r)
	// Looked at last before the handler runs: a Close that ends the
	// context after this look finds the handler started (it may then see
	// its context end at once, and answer "shutting_down").
	if h == nil || in.base.Err() != nil {
		// Unserved after libtribe took the call, or Close began before its
		// handler could start: not run here, so the caller moves it to
		// another member (or gets ErrNoProvider) rather than hear
		// "shutting_down" from a handler that never ran.
		C.tribe_responder_refuse_stopping(r, nil)
		return
	}
	ctx = c
	reply, err := runHandler(ctx, h, info, payload, in.errorLog)
	expired := ctx.finish()
	gcPoint()
	if err != nil && expired {
		// The caller's deadline has passed (its budget is rounded down to
		// whole ms, so it may still be waiting a moment): answering would
		// give it this error instead of its own ErrTimeout, and freeing the
		// responder would answer "unanswered". Keep it until the caller has
		// surely given up, then free it.
		held = true
		time.AfterFunc(time.Until(ctx.deadline.Add(responderHold)), func() { C.tribe_responder_free(r) })
		return
	}
	if err != nil {
		var he *HandlerError
		switch {
		case errors.As(err, &he) && he != nil:
			fail(r, he.Code, he.Message)
		case in.base.Err() != nil && errors.Is(err, context.Canceled):
			// Gave up because the node is closing. The handler ran, and may
			// have had effects: the caller must not run the call again
			// elsewhere, as it would after a refusal.
			fail(r, "shutting_down", "the host closed while its handler ran; the call may have taken effect")
		default:
			fail(r, "error", errorText(err))
		}
		return
	}
	var data *C.uint8_t
	if len(reply) > 0 {
		data = (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(reply)))
	}
	held = true // freed by go_reply
	C.go_reply(r, data, C.size_t(len(reply)))
}

// errorText is err's message; an Error method that panics (a typed nil
// whose method reads its receiver) gives a fixed text instead of ending the
// process.
func errorText(err error) (text string) {
	defer func() {
		if p := recover(); p != nil {
			text = fmt.Sprintf("handler returned a %T whose Error method panicked: %v", err, p)
		}
	}()
	return err.Error()
}

// panicError is a recovered handler panic.
type panicError struct{ value any }

func (p panicError) Error() string { return fmt.Sprintf("handler panicked: %v", p.value) }

// runHandler runs h; a panic becomes the caller's "panic" answer and, as
// net/http does for its handlers, a line with the stack in errorLog (nil:
// the standard logger) of this process: the caller's node gets the message
// only.
func runHandler(ctx context.Context, h Handler, info CallInfo, payload []byte, errorLog *log.Logger) (reply []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			reply, err = nil, &HandlerError{Code: "panic", Message: panicError{v}.Error()}
			logf := log.Printf
			if errorLog != nil {
				logf = errorLog.Printf
			}
			logf("tribe: handler of %s (%s, version %s) panicked on a call from %s: %v\n%s",
				info.Plugin, info.Tribe, info.Version, info.Caller, v, debug.Stack())
		}
	}()
	return h(ctx, info, payload)
}

func fail(r *C.tribe_responder, code, message string) {
	var cs cstrings
	defer cs.free()
	// NUL bytes would cut the text short in C and C takes only UTF-8; a
	// Go error's text may hold either (file names, raw bytes), so both are
	// replaced rather than lose the answer.
	c := cs.str(replaceNUL(strings.ToValidUTF8(code, "\uFFFD")))
	m := cs.str(replaceNUL(strings.ToValidUTF8(message, "\uFFFD")))
	C.tribe_responder_fail(r, c, m, nil)
}

func replaceNUL(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			b := []byte(s)
			for j := range b {
				if b[j] == 0 {
					b[j] = '?'
				}
			}
			return string(b)
		}
	}
	return s
}

// nameCache interns the names incoming calls carry (caller, tribe,
// plugin, version), so that the same few names are not copied for every
// call. Only the polling goroutine uses it.
type nameCache map[string]string

// maxNames bounds the cache; it starts over when full.
const maxNames = 1024

func (c *nameCache) intern(p *C.char) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(p)), n)
	if s, ok := (*c)[string(b)]; ok {
		return s
	}
	if *c == nil || len(*c) >= maxNames {
		*c = nameCache{}
	}
	s := string(b)
	(*c)[s] = s
	return s
}
