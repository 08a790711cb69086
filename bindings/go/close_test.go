package tribe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Close while calls are in flight (blocked in a handler and streaming) and
// while goroutines read Events: nothing deadlocks, every call returns, the
// Events channels close, and no goroutine is left behind.
func TestCloseWithCallsInFlightAndEventReaders(t *testing.T) {
	before := settledGoroutines(0, 200*time.Millisecond)
	blocked := make(chan struct{}, 64)
	host, caller := servedPair(t, map[string]Handler{
		"echo": echo,
		"block": func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			blocked <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})

	var readers sync.WaitGroup
	for _, n := range []*Node{host, caller, host} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range n.Events() {
			}
		}()
	}

	var calls sync.WaitGroup
	results := make(chan error, 64)
	// Eight calls parked in the host's handler, with no deadline.
	for i := 0; i < 8; i++ {
		calls.Add(1)
		go func() {
			defer calls.Done()
			_, err := caller.Call(context.Background(), target("block"), nil)
			results <- err
		}()
	}
	for i := 0; i < 8; i++ {
		select {
		case <-blocked:
		case <-time.After(10 * time.Second):
			t.Fatal("the blocking calls did not reach the handler")
		}
	}
	// Eight goroutines calling echo in a loop until the node goes away,
	// half of them on the host itself (local calls).
	stop := make(chan struct{})
	for i := 0; i < 8; i++ {
		from := caller
		if i%2 == 0 {
			from = host
		}
		calls.Add(1)
		go func() {
			defer calls.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := from.Call(ctx, target("echo"), []byte("x"))
				cancel()
				if err != nil {
					results <- err
					return
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)

	// Close both nodes, each from several goroutines at once.
	closed := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			for _, n := range []*Node{host, caller} {
				wg.Add(1)
				go func() { defer wg.Done(); _ = n.Close() }()
			}
		}
		wg.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatalf("Close deadlocked:\n%s", goroutineDump())
	}
	close(stop)
	done := make(chan struct{})
	go func() { calls.Wait(); readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("calls or event readers did not return after Close:\n%s", goroutineDump())
	}
	close(results)
	n := 0
	for err := range results {
		n++
		if err == nil {
			t.Error("a call parked in a closed node succeeded")
			continue
		}
		if !errors.Is(err, ErrShuttingDown) && !errors.Is(err, ErrDisconnected) &&
			!errors.Is(err, ErrRemote) && !errors.Is(err, ErrNoProvider) {
			t.Errorf("unexpected error after Close: %v", err)
		}
	}
	if n < 8 {
		t.Errorf("%d calls reported an error, want at least the 8 blocked ones", n)
	}

	// Everything after Close is ErrClosed, and Close stays idempotent.
	if _, err := caller.Call(context.Background(), target("echo"), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Call after Close: %v", err)
	}
	if err := host.CreateTribe("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("CreateTribe after Close: %v", err)
	}
	if err := host.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	host.Abort()

	if after := settledGoroutines(before, 5*time.Second); after > before {
		t.Fatalf("goroutines: %d before, %d after Close:\n%s", before, after, goroutineDump())
	}
}

// Many nodes started and closed (or dropped) leave no goroutine behind; a
// node nobody closes is closed by its cleanup.
func TestNoGoroutineLeakAndCleanupSafetyNet(t *testing.T) {
	before := settledGoroutines(0, 200*time.Millisecond)
	// A lone node's graceful leave waits out its goodbye (1.5 s): one is enough.
	for i := 0; i < 3; i++ {
		n, err := Start(Config{Name: fmt.Sprintf("leak-%d", i), Profile: "local", NoHostFacts: true})
		if err != nil {
			t.Fatal(err)
		}
		if i != 1 {
			n.Abort()
		} else if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := settledGoroutines(before, 5*time.Second); after > before {
		t.Fatalf("goroutines: %d before, %d after:\n%s", before, after, goroutineDump())
	}

	// Dropped without Close: the cleanup closes it (its polling goroutine
	// ends) once the collector finds the Node unreachable.
	cleaned := cleanupsRun.Load()
	func() {
		if _, err := Start(Config{Name: "dropped", Profile: "local", NoHostFacts: true}); err != nil {
			t.Fatal(err)
		}
	}()
	waitFor(t, "the cleanup of an unreachable node", 10*time.Second, func() bool {
		runtime.GC()
		return cleanupsRun.Load() > cleaned
	})
	if after := settledGoroutines(before, 5*time.Second); after > before {
		t.Fatalf("goroutines: %d before, %d after the cleanup:\n%s", before, after, goroutineDump())
	}
}

// Calls a node makes to its own handler, in flight when it closes, end
// with ErrShuttingDown: the node's own calls fail before the handlers'
// contexts end.
func TestCloseEndsLocalCallsShuttingDown(t *testing.T) {
	for round := 0; round < 20; round++ {
		n := startNode(t, "self", nil)
		if err := n.CreateTribe("svc"); err != nil {
			t.Fatal(err)
		}
		if err := n.Join("svc", ""); err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{}, 4)
		err := n.Serve("block", "1", Processor, func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
			started <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		results := make(chan error, 4)
		for i := 0; i < 4; i++ {
			go func() {
				_, err := n.Call(context.Background(), target("block"), nil)
				results <- err
			}()
		}
		for i := 0; i < 4; i++ {
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("the calls did not reach the handler")
			}
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			select {
			case err := <-results:
				if !errors.Is(err, ErrShuttingDown) {
					t.Errorf("round %d: a local call in flight at Close ended %v, want ErrShuttingDown", round, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a local call did not end at Close")
			}
		}
	}
}

// A graceful Close lets the handlers running finish and their replies
// reach the callers, also when the process exits right after Close (the
// host is another process, run by TestMain as role "closing-host").
func TestCloseDeliversTheRepliesOfRunningHandlers(t *testing.T) {
	const calls = 8
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "TRIBE_TEST_ROLE=closing-host")
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The reads of its output below block until it prints or exits: a
		// host that hangs is killed, and they fail, rather than hang the
		// suite.
		watchdog := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
		defer watchdog.Stop()
		lines := bufio.NewScanner(stdout)
		if !lines.Scan() {
			t.Fatal("the host process did not start (or hung, and was killed after a minute)")
		}
		hostAddr := lines.Text()
		caller := startNode(t, "caller", func(c *Config) { c.Seeds = []string{hostAddr} })
		waitFor(t, "the caller to see the host serve finish in tribe svc", 20*time.Second, func() bool {
			m, err := caller.Member("closing-host")
			return err == nil && m.State == "alive" && len(m.Endpoints) == 1 &&
				inTribe(caller, "svc", "closing-host")
		})
		type outcome struct {
			i     int
			reply []byte
			err   error
		}
		results := make(chan outcome, calls)
		for i := 0; i < calls; i++ {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				reply, err := caller.Call(ctx, target("finish"), []byte(fmt.Sprint(i)))
				results <- outcome{i, reply, err}
			}()
		}
		for i := 0; i < calls; i++ {
			if !lines.Scan() {
				t.Fatal("the calls did not reach the host's handler (or it hung, and was killed after a minute)")
			}
		}
		// The host closes while its handlers run, then exits.
		if _, err := io.WriteString(stdin, "close\n"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < calls; i++ {
			o := <-results
			if want := fmt.Sprintf("done:%d", o.i); o.err != nil || string(o.reply) != want {
				t.Errorf("round %d, call %d: %q, %v; want %q", round, o.i, o.reply, o.err, want)
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("the host process: %v", err)
		}
		watchdog.Stop()
		_ = caller.Close()
	}
}

// closingHost serves "finish" in tribe svc (a handler that ignores its
// context and answers after 300 ms, printing a line when a call begins),
// prints its address, closes on a line from standard input, and exits.
func closingHost() int {
	n, err := Start(Config{Name: "closing-host", Bind: "127.0.0.1:0", Profile: "local", NoHostFacts: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "closing host:", err)
		return 1
	}
	var out sync.Mutex
	finish := func(_ context.Context, _ CallInfo, payload []byte) ([]byte, error) {
		out.Lock()
		fmt.Println("started")
		out.Unlock()
		time.Sleep(300 * time.Millisecond)
		return append([]byte("done:"), payload...), nil
	}
	for _, err := range []error{
		n.CreateTribe("svc"),
		n.Join("svc", ""),
		n.Serve("finish", "1", Processor, finish),
	} {
		if err != nil {
			fmt.Fprintln(os.Stderr, "closing host:", err)
			return 1
		}
	}
	fmt.Println(n.Addr())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	if err := n.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "closing host:", err)
		return 1
	}
	return 0
}

// A handler that gives up because its node closes (it returns its
// context's error) ran, and may have taken effect: its caller gets a
// *RemoteError with code "shutting_down", and the call is not run again on
// another member serving the plugin.
func TestAHandlerThatGivesUpAtCloseIsNotRunAgainElsewhere(t *testing.T) {
	var runs atomic.Int32
	started := make(chan struct{}, 1)
	wait := func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
		runs.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	host, caller := servedPair(t, map[string]Handler{"wait": wait})
	result := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := caller.Call(ctx, target("wait"), nil)
		result <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the handler")
	}
	// Now the caller serves the plugin in the tribe too: a refusal would
	// move the call there.
	if err := caller.Join("svc", ""); err != nil {
		t.Fatal(err)
	}
	if err := caller.Serve("wait", "1", Processor, func(context.Context, CallInfo, []byte) ([]byte, error) {
		runs.Add(1)
		return []byte("ran again"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := host.Close(); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-result:
	case <-time.After(20 * time.Second):
		t.Fatal("the call did not return after the host closed")
	}
	var remote *RemoteError
	if !errors.As(err, &remote) || remote.Code != "shutting_down" {
		t.Fatalf("want a RemoteError with code shutting_down, got %v", err)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the call ran %d times, want once", n)
	}
}

// Close is idempotent: a second Close, also one after Abort, returns nil
// again, while other methods report ErrClosed.
func TestCloseTwiceReturnsNil(t *testing.T) {
	closed := startNode(t, "twice", nil)
	aborted := startNode(t, "twice", nil)
	aborted.Abort()
	for _, n := range []*Node{closed, closed, aborted} {
		if err := n.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if err := closed.CreateTribe("t"); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateTribe after Close: %v", err)
	}
}

// A call the closing host took but whose handler had not started yet is
// refused as stopping, so its caller moves it to another member: no handler
// starts with a context Close already ended, and no caller hears
// "shutting_down" from a handler that never ran.
func TestCallsQueuedAtCloseMoveToAnotherMember(t *testing.T) {
	var ran, endedAtStart atomic.Int64
	h := func(ctx context.Context, _ CallInfo, _ []byte) ([]byte, error) {
		ran.Add(1)
		if ctx.Err() != nil {
			endedAtStart.Add(1)
			return nil, ctx.Err()
		}
		return []byte("host"), nil
	}
	for round := 0; round < 3; round++ {
		host, caller := servedPair(t, map[string]Handler{"h": h})
		backup := startNode(t, "backup", func(c *Config) { c.Seeds = []string{host.Addr()} })
		waitFor(t, "the backup to learn tribe svc", 20*time.Second, func() bool {
			_, err := backup.Tribe("svc")
			return err == nil
		})
		if err := backup.Join("svc", ""); err != nil {
			t.Fatal(err)
		}
		if err := backup.Serve("h", "1", Processor, func(context.Context, CallInfo, []byte) ([]byte, error) {
			return []byte("backup"), nil
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the caller to see the backup serve h", 20*time.Second, func() bool {
			m, err := caller.Member(backup.Name())
			return err == nil && m.State == "alive" && len(m.Endpoints) == 1 && inTribe(caller, "svc", backup.Name())
		})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var unexpected []error
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := caller.Call(ctx, target("h"), nil)
					cancel()
					if err != nil {
						mu.Lock()
						unexpected = append(unexpected, err)
						mu.Unlock()
					}
				}
			}()
		}
		waitFor(t, "calls served by the host", 10*time.Second, func() bool { return ran.Load() > 100 })
		if err := host.Close(); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		// One handler may start just as Close ends the context (after its
		// last look), see it ended at once and answer "shutting_down": it
		// did start. Calls queued before Close made many (2 to 35 a round).
		raced := endedAtStart.Swap(0)
		if raced > 1 {
			t.Errorf("round %d: %d handlers started with a context Close had ended", round, raced)
		}
		var remote *RemoteError
		if raced == 1 && len(unexpected) > 0 && errors.As(unexpected[0], &remote) && remote.Code == "shutting_down" {
			unexpected = unexpected[1:]
		}
		for i, err := range unexpected {
			if i == 5 {
				t.Errorf("round %d: ... %d calls failed in all", round, len(unexpected))
				break
			}
			t.Errorf("round %d: a call failed while another member served the plugin: %v", round, err)
		}
		_ = caller.Close()
		_ = backup.Close()
	}
}

// Counters answers while Close waits for a running handler (an agent
// polling them sees the stop through), and with the final counts after.
func TestCountersWhileClosing(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := func(_ context.Context, _ CallInfo, _ []byte) ([]byte, error) {
		started <- struct{}{}
		<-release // ignores its context: Close waits for it
		return []byte("late"), nil
	}
	host, caller := servedPair(t, map[string]Handler{"slow": slow})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, _ = caller.Call(ctx, target("slow"), nil)
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the handler")
	}
	closed := make(chan error, 1)
	go func() { closed <- host.Close() }()
	waitFor(t, "Close to begin", 10*time.Second, func() bool { return host.Serve("x", "1", Processor, echo) != nil })
	counters, err := host.Counters()
	if err != nil {
		t.Fatalf("Counters while closing: %v", err)
	}
	if got := counters["calls"]["serving"].String(); got != "1" {
		t.Errorf("calls.serving while the handler runs = %s, want 1", got)
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := host.Counters(); err != nil {
		t.Fatalf("Counters after Close: %v", err)
	}
	_ = caller.Close()
}

// A Close whose data dir does not take the node's last state (a full disk;
// here every write of the state file fails) says so with ErrIO, once: the
// node is closed all the same, and a later Close returns the same result.
func TestCloseSaysWhenTheDataDirMissedTheLastState(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, "unsaved", func(c *Config) { c.DataDir = dir })
	// The state file's temporary file's place is taken by a directory
	// (tried again while a write of the node's holds it as a file).
	waitFor(t, "the temporary file's place taken", 10*time.Second, func() bool {
		return os.Mkdir(dir+"/node-state.json.tmp", 0o700) == nil
	})
	if err := n.CreateTribe("lost"); err != nil {
		t.Fatal(err)
	}
	err := n.Close()
	if !errors.Is(err, ErrIO) {
		t.Fatalf("Close: %v, want ErrIO", err)
	}
	if again := n.Close(); !errors.Is(again, ErrIO) {
		t.Fatalf("a second Close: %v, want the first's result", again)
	}
	if err := n.CreateTribe("later"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}
