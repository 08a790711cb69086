package tribe

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The call benchmark: a Go caller node calls an echo handler served in Go by
// a host node of tribe bench (the caller is not a member, so every call
// crosses loopback TCP), as benches/rpc.rs does for Rust -> Rust. Both nodes
// live in this process. Reported: calls/s and latency percentiles.
//
//	go test -run '^$' -bench Call -benchtime 3s
//
// TRIBE_BENCH_THREADS sets each node's runtime threads (default 1, so that
// the two nodes together have as many tokio workers as benches/rpc.rs,
// whose single runtime has one per core on this 2-core machine).

type benchPair struct {
	host, caller *Node
}

var (
	benchMu    sync.Mutex
	benchPairs = map[string]*benchPair{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range benchPairs {
		p.caller.Abort()
		p.host.Abort()
	}
	os.Exit(code)
}

func benchThreads() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("TRIBE_BENCH_THREADS"), &n); err == nil && n > 0 {
		return n
	}
	return 1
}

func pairFor(b *testing.B, sealed bool) *benchPair {
	benchMu.Lock()
	defer benchMu.Unlock()
	label := "plain"
	key := ""
	if sealed {
		label = "sealed"
		var err error
		if key, err = Keygen(); err != nil {
			b.Fatal(err)
		}
	}
	if p := benchPairs[label]; p != nil {
		return p
	}
	threads := benchThreads()
	start := func(name, seed string) *Node {
		cfg := Config{Name: name, Profile: "local", NoHostFacts: true, Key: key, WorkerThreads: threads}
		if seed != "" {
			cfg.Seeds = []string{seed}
		}
		n, err := Start(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	host := start("bench-"+label+"-host", "")
	caller := start("bench-"+label+"-caller", host.Addr())
	for _, err := range []error{
		host.CreateTribe("bench"),
		host.Join("bench", ""),
		host.Serve("echo", "1", Processor, func(_ context.Context, _ CallInfo, p []byte) ([]byte, error) { return p, nil }),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, "the caller to see the echo endpoint", 20*time.Second, func() bool {
		m, err := caller.Member(host.Name())
		return err == nil && len(m.Endpoints) == 1 && inTribe(caller, "bench", host.Name())
	})
	p := &benchPair{host: host, caller: caller}
	benchPairs[label] = p
	return p
}

func BenchmarkCall(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		for _, size := range []int{100} {
			for _, c := range []int{1, 16} {
				path := "plaintext"
				if sealed {
					path = "sealed"
				}
				b.Run(fmt.Sprintf("%s/%dB/c%d", path, size, c), func(b *testing.B) {
					benchCalls(b, pairFor(b, sealed), size, c)
				})
			}
		}
	}
}

func benchCalls(b *testing.B, p *benchPair, size, c int) {
	payload := bytes.Repeat([]byte{0xA5}, size)
	t := Target{Tribe: "bench", Plugin: "echo", Version: "1", Kind: Processor}
	ctx := context.Background()
	// Warm up the pooled stream.
	for i := 0; i < 100; i++ {
		if _, err := p.caller.Call(ctx, t, payload); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([][]time.Duration, c)
	var wg sync.WaitGroup
	var failed sync.Once
	b.ResetTimer()
	u0 := processUsage()
	start := time.Now()
	for w := 0; w < c; w++ {
		n := b.N / c
		if w < b.N%c {
			n++
		}
		lat[w] = make([]time.Duration, 0, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				t0 := time.Now()
				reply, err := p.caller.Call(ctx, t, payload)
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil || len(reply) != size {
					failed.Do(func() { b.Errorf("call: %v (reply %d bytes)", err, len(reply)) })
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	u1 := processUsage()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	q := func(f float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(f*float64(len(all)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric((u1.cpuMicros-u0.cpuMicros)/float64(b.N), "cpu-µs/call")
	b.ReportMetric(float64(u1.switches-u0.switches)/float64(b.N), "switches/call")
}

// usage is the process's CPU time and context switches (every thread, Go's
// and libtribe's alike), which say what a call costs on a busy machine where
// calls/s does not.
type usage struct {
	cpuMicros float64
	switches  int64
}

func processUsage() usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return usage{}
	}
	micros := func(t syscall.Timeval) float64 { return float64(t.Sec)*1e6 + float64(t.Usec) }
	return usage{micros(ru.Utime) + micros(ru.Stime), ru.Nvcsw + ru.Nivcsw}
}
