package tribe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The call benchmark: a Go caller node calls an echo handler served in Go by
// a host node of tribe bench (the caller is not a member, so every call
// crosses loopback TCP), as benches/rpc.rs does for Rust -> Rust. In
// BenchmarkCall both nodes live in this process; in BenchmarkCallApart the
// host is a second process (this test binary run again as
// TRIBE_BENCH_ROLE=host), as two Go daemons would be. Reported: calls/s,
// latency percentiles, and the CPU time and context switches of every
// process involved, per call.
//
//	go test -run '^$' -bench Call -benchtime 3s
//
// TRIBE_BENCH_THREADS sets each node's runtime threads (default 1, so that
// the two nodes together have as many tokio workers as benches/rpc.rs,
// whose single runtime has one per core on this 2-core machine).

type benchPair struct {
	host, caller *Node
	// The host's process when it is not this one (BenchmarkCallApart),
	// and the child process this benchmark started for it.
	otherPid int
	apart    *exec.Cmd
	stdin    io.Closer
}

// close stops the pair: the nodes of this process abort, a host process
// ends when its standard input closes.
func (p *benchPair) close() {
	if p.caller != nil {
		p.caller.Abort()
	}
	if p.host != nil {
		p.host.Abort()
	}
	if p.apart != nil {
		_ = p.stdin.Close()
		_ = p.apart.Wait()
	}
}

var (
	benchMu    sync.Mutex
	benchPairs = map[string]*benchPair{}
)

func TestMain(m *testing.M) {
	if os.Getenv("TRIBE_BENCH_ROLE") == "host" {
		os.Exit(benchHost())
	}
	if os.Getenv("TRIBE_TEST_ROLE") == "closing-host" {
		os.Exit(closingHost())
	}
	code := m.Run()
	for _, p := range benchPairs {
		p.close()
	}
	os.Exit(code)
}

// benchHost is the host process of BenchmarkCallApart: it serves echo in
// tribe bench, prints "ADDRESS PID" and serves until its standard input
// ends. TRIBE_BENCH_KEY seals it.
func benchHost() int {
	n, err := Start(benchConfig("bench-host", "", os.Getenv("TRIBE_BENCH_KEY")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench host:", err)
		return 1
	}
	defer n.Close()
	if err := serveEcho(n); err != nil {
		fmt.Fprintln(os.Stderr, "bench host:", err)
		return 1
	}
	fmt.Printf("%s %d\n", n.Addr(), os.Getpid())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

func benchThreads() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("TRIBE_BENCH_THREADS"), &n); err == nil && n > 0 {
		return n
	}
	return 1
}

// benchConfig is a benchmark node's config; seed may be empty.
func benchConfig(name, seed, key string) Config {
	cfg := Config{Name: name, Profile: "local", NoHostFacts: true, Key: key, WorkerThreads: benchThreads()}
	if seed != "" {
		cfg.Seeds = []string{seed}
	}
	return cfg
}

// serveEcho makes n the host of the benchmark: a member of tribe bench
// serving echo.
func serveEcho(n *Node) error {
	return errors.Join(
		n.CreateTribe("bench"),
		n.Join("bench", ""),
		n.Serve("echo", "1", Processor, func(_ context.Context, _ CallInfo, p []byte) ([]byte, error) { return p, nil }),
	)
}

// startCaller starts a caller node seeded with the host's address and
// waits until it sees the host's echo endpoint.
func startCaller(b *testing.B, name, seed, key, host string) *Node {
	caller, err := Start(benchConfig(name, seed, key))
	if err != nil {
		b.Fatal(err)
	}
	waitFor(b, "the caller to see the echo endpoint", 20*time.Second, func() bool {
		m, err := caller.Member(host)
		return err == nil && len(m.Endpoints) == 1 && inTribe(caller, "bench", host)
	})
	return caller
}

// pathKey is a path's label and its key: a new one when sealed.
func pathKey(b *testing.B, sealed bool) (string, string) {
	if !sealed {
		return "plain", ""
	}
	key, err := Keygen()
	if err != nil {
		b.Fatal(err)
	}
	return "sealed", key
}

func pairFor(b *testing.B, sealed bool) *benchPair {
	benchMu.Lock()
	defer benchMu.Unlock()
	label, key := pathKey(b, sealed)
	if p := benchPairs[label]; p != nil {
		return p
	}
	host, err := Start(benchConfig("bench-"+label+"-host", "", key))
	if err != nil {
		b.Fatal(err)
	}
	p := &benchPair{host: host}
	benchPairs[label] = p
	if err := serveEcho(host); err != nil {
		b.Fatal(err)
	}
	p.caller = startCaller(b, "bench-"+label+"-caller", host.Addr(), key, host.Name())
	return p
}

// apartPairFor starts (once per path) a host process and a caller node in
// this process.
func apartPairFor(b *testing.B, sealed bool) *benchPair {
	benchMu.Lock()
	defer benchMu.Unlock()
	label, key := pathKey(b, sealed)
	label = "apart-" + label
	if p := benchPairs[label]; p != nil {
		return p
	}
	if host := os.Getenv("TRIBE_BENCH_HOST"); host != "" {
		// "ADDRESS PID" of a host started elsewhere (benches/rpc.rs --host).
		var addr string
		var pid int
		if _, err := fmt.Sscan(host, &addr, &pid); err != nil {
			b.Fatalf("TRIBE_BENCH_HOST=%q: want \"ADDRESS PID\"", host)
		}
		p := &benchPair{otherPid: pid}
		p.caller = startCaller(b, "bench-apart-caller", addr, os.Getenv("TRIBE_BENCH_KEY"), "bench-host")
		benchPairs[label] = p
		return p
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TRIBE_BENCH_ROLE=host", "TRIBE_BENCH_KEY="+key)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &benchPair{apart: cmd, stdin: stdin, otherPid: cmd.Process.Pid}
	var addr string
	if _, err := fmt.Fscan(bufio.NewReader(stdout), &addr); err != nil {
		_ = stdin.Close()
		_ = cmd.Wait()
		b.Fatalf("the host process did not start: %v", err)
	}
	benchPairs[label] = p
	p.caller = startCaller(b, "bench-apart-caller", addr, key, "bench-host")
	return p
}

func BenchmarkCallApart(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		for _, c := range []int{1, 16} {
			path := "plaintext"
			if sealed {
				path = "sealed"
			}
			b.Run(fmt.Sprintf("%s/100B/c%d", path, c), func(b *testing.B) {
				benchCalls(b, apartPairFor(b, sealed), 100, c)
			})
		}
	}
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
	u0 := p.usage()
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
	u1 := p.usage()
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

// usage covers this process and the host's when it is another.
func (p *benchPair) usage() usage {
	u := processUsage()
	if p.otherPid != 0 {
		o := otherUsage(p.otherPid)
		u.cpuMicros += o.cpuMicros
		u.switches += o.switches
	}
	return u
}

// otherUsage reads another process's CPU time (/proc/PID/stat, in clock
// ticks of 10 ms) and the context switches of all its threads.
func otherUsage(pid int) usage {
	var u usage
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// The fields after the command name, which ends at the last ')'.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			u.cpuMicros = (ut + st) * 1e4
		}
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		text, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(text), "\n") {
			if strings.HasPrefix(line, "voluntary_ctxt_switches:") || strings.HasPrefix(line, "nonvoluntary_ctxt_switches:") {
				n, _ := strconv.ParseInt(strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]), 10, 64)
				u.switches += n
			}
		}
	}
	return u
}

func processUsage() usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return usage{}
	}
	micros := func(t syscall.Timeval) float64 { return float64(t.Sec)*1e6 + float64(t.Usec) }
	return usage{micros(ru.Utime) + micros(ru.Stime), ru.Nvcsw + ru.Nivcsw}
}
