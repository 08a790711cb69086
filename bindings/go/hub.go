package tribe

/*
#include <stdlib.h>
#include "tribe.h"

// One round of the process's polling goroutine, in one crossing into C:
// takes what the nodes have queued (from node `start` on, so that a busy
// node does not starve the others) with their kinds and owners, and marks
// the nodes that stopped and are drained. When nothing was found and block
// is set, it drives every node's call streams (for one turn when block is
// 2, until something comes when 1) and takes once more.
static void go_hub_take(const tribe_group *group, tribe_node *const *nodes, size_t count,
                        size_t start, int block, tribe_event **evs, uint32_t *kinds,
                        uint32_t *owners, size_t cap, size_t *n, uint8_t *ended) {
	*n = 0;
	for (int round = 0; round < 2; round++) {
		int any_ended = 0;
		for (size_t k = 0; k < count && *n < cap; k++) {
			size_t i = (start + k) % count;
			if (ended[i]) {
				any_ended = 1;
				continue;
			}
			size_t got = 0;
			uint32_t rc = tribe_node_next_events(nodes[i], 0, evs + *n, cap - *n, &got, NULL);
			if (rc != TRIBE_OK) {
				// TRIBE_SHUTTING_DOWN: stopped and drained. Anything else
				// (a caught panic) would repeat: that node's polling ends.
				ended[i] = 1;
				any_ended = 1;
				continue;
			}
			for (size_t j = 0; j < got; j++) {
				kinds[*n + j] = tribe_event_kind(evs[*n + j]);
				owners[*n + j] = (uint32_t)i;
			}
			*n += got;
		}
		if (*n > 0 || any_ended || !block || round == 1) return;
		tribe_group_wait(group, block == 2 ? 0 : -1, NULL);
	}
}
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// hub is the process's poll group: every node this package starts is in
// it, and one goroutine takes the events of all of them. While it waits in
// C it reads every node's sockets on its thread, so a call between two
// nodes of the process is answered without waking another thread, and one
// thread, not one per node, waits in C (a goroutine waiting in C keeps its
// P until Go's monitor takes it back, 20 µs to 10 ms later).
var hub struct {
	mu sync.Mutex
	// group is made by the first Start that succeeds in making it.
	group *C.tribe_group
	// nodes are polled until each has stopped and been drained.
	nodes []*node
	// running says whether the polling goroutine runs.
	running bool
}

// hubGroup is the process's poll group, made on first use and kept for the
// life of the process (its thread sleeps while no node is started). A
// failure to make it (no thread to be had) is tried again by the next
// Start.
func hubGroup() (*C.tribe_group, error) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if hub.group == nil {
		var g *C.tribe_group
		var cerr *C.tribe_error
		if err := takeError(C.tribe_group_new(&g, &cerr), cerr); err != nil {
			return nil, err
		}
		hub.group = g
	}
	return hub.group, nil
}

// join hands a started node to the polling goroutine, starting it when
// none runs.
func (in *node) join() {
	hub.mu.Lock()
	hub.nodes = append(hub.nodes, in)
	start := !hub.running
	hub.running = true
	hub.mu.Unlock()
	if start {
		go hubPoll()
	} else {
		// Its events may have come before it was in the list, and their
		// notification been used up by a wait that did not look at it.
		C.tribe_group_wake(hub.group, nil)
	}
}

// pollEnded ends a node's polling once it has stopped and its queue is
// drained: calls still waiting fail, Events closes, Close goes on.
func (in *node) pollEnded() {
	hub.mu.Lock()
	for i, other := range hub.nodes {
		if other == in {
			hub.nodes = append(hub.nodes[:i], hub.nodes[i+1:]...)
			break
		}
	}
	hub.mu.Unlock()
	in.calls.end()
	close(in.events)
	close(in.pollDone)
}

// pollBatch is how many events one crossing into C may take.
const pollBatch = 64

// hubPoll is the polling goroutine: it takes every event of every node, a
// burst at a time, hands completions to their calls, starts a goroutine per
// incoming call and offers the rest to Events. It ends when no node is
// left; the next Start starts another.
func hubPoll() {
	// C pointers only: Go memory that C may write during the call.
	var evs [pollBatch]*C.tribe_event
	var kinds, owners [pollBatch]C.uint32_t
	var nodes []*node
	var ptrs []*C.tribe_node
	var ended []C.uint8_t
	start := 0
	for {
		gcPoint()
		hub.mu.Lock()
		if len(hub.nodes) == 0 {
			hub.running = false
			hub.mu.Unlock()
			return
		}
		nodes = append(nodes[:0], hub.nodes...)
		hub.mu.Unlock()
		ptrs = ptrs[:0]
		ended = ended[:0]
		for _, in := range nodes {
			// ptr stays valid: a node is freed only after pollEnded.
			ptrs = append(ptrs, in.ptr)
			ended = append(ended, 0)
		}
		start = (start + 1) % len(nodes)
		var n C.size_t
		take := func(block C.int) {
			C.go_hub_take(hub.group, (**C.tribe_node)(unsafe.Pointer(&ptrs[0])), C.size_t(len(ptrs)),
				C.size_t(start), block, &evs[0], &kinds[0], &owners[0], pollBatch, &n,
				(*C.uint8_t)(unsafe.Pointer(&ended[0])))
		}
		take(0)
		if n == 0 && !anySet(ended) {
			// Nothing queued: before this thread blocks in C (keeping its
			// P until the scheduler takes it back), let the goroutines
			// just readied (a Call's waiter, a handler) run on this P,
			// rather than wait for another thread to wake and steal them.
			runtime.Gosched()
			// What the goroutines just run sent may be answered already:
			// one turn reads it without this thread blocking.
			take(2)
			if n == 0 && !anySet(ended) {
				take(1)
			}
		}
		for i := 0; i < int(n); i++ {
			nodes[owners[i]].dispatch(evs[i], kinds[i])
			evs[i] = nil
		}
		for i, e := range ended {
			if e != 0 {
				nodes[i].pollEnded()
			}
		}
	}
}

func anySet(flags []C.uint8_t) bool {
	for _, f := range flags {
		if f != 0 {
			return true
		}
	}
	return false
}
