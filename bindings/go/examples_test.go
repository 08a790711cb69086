package tribe_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	tribe "github.com/libtribe/libtribe/bindings/go"
)

// The examples run real nodes on 127.0.0.1, each on a free port (port 0),
// with the "local" timing profile, meant for one host.

func ExampleStart() {
	node, err := tribe.Start(tribe.Config{
		Name:    "example-start",
		Bind:    "127.0.0.1:0", // port 0: a free port; node.Addr() tells which
		Profile: "local",
		Facts:   map[string]string{"rack": "r1"},
		// A real cluster also sets Seeds (peers to join through) and Key
		// (from Keygen or `tribe keygen`): without a key traffic is plaintext.
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	st, err := node.Status()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Name, "is up, live members:", st.MembersAlive, "encryption:", st.Encryption)
	// Output: example-start is up, live members: 1 encryption: off
}

// Two nodes of one cluster: the host serves a processor in tribe "svc", the
// caller, which joined the cluster through the host, calls it.
func ExampleNode_Serve() {
	host, err := tribe.Start(tribe.Config{Name: "example-host", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close()
	caller, err := tribe.Start(tribe.Config{
		Name:    "example-caller",
		Bind:    "127.0.0.1:0",
		Profile: "local",
		Seeds:   []string{host.Addr()},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer caller.Close()

	// The host creates tribe svc, joins it and serves "upper" there. Each
	// call runs the handler in a goroutine of its own.
	if err := host.CreateTribe("svc"); err != nil {
		log.Fatal(err)
	}
	if err := host.Join("svc", ""); err != nil { // "": this node
		log.Fatal(err)
	}
	err = host.Serve("upper", "1", tribe.Processor,
		func(ctx context.Context, call tribe.CallInfo, payload []byte) ([]byte, error) {
			return []byte(strings.ToUpper(string(payload)) + " (for " + call.Caller + ")"), nil
		})
	if err != nil {
		log.Fatal(err)
	}

	// The caller learns of the tribe and the plugin by gossip, a moment
	// after it starts: until then its calls fail with ErrUnknownTribe or
	// ErrNoProvider, and it tries again while its context lasts.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	target := tribe.Target{Tribe: "svc", Plugin: "upper", Kind: tribe.Processor}
	for {
		reply, err := caller.Call(ctx, target, []byte("hello"))
		if (errors.Is(err, tribe.ErrUnknownTribe) || errors.Is(err, tribe.ErrNoProvider)) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(reply))
		break
	}
	// Output: HELLO (for example-caller)
}

// Call returns errors that match the package's sentinels (and the
// context's errors) with errors.Is.
func ExampleNode_Call() {
	node, err := tribe.Start(tribe.Config{Name: "example-call", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	if err := node.CreateTribe("svc"); err != nil {
		log.Fatal(err)
	}
	if err := node.Join("svc", ""); err != nil {
		log.Fatal(err)
	}
	// A handler that does not answer before its caller's deadline.
	err = node.Serve("slow", "1", tribe.Processor, func(ctx context.Context, _ tribe.CallInfo, _ []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	if err != nil {
		log.Fatal(err)
	}

	for _, t := range []tribe.Target{
		{Tribe: "nosuch", Plugin: "slow", Kind: tribe.Processor},
		{Tribe: "svc", Plugin: "missing", Kind: tribe.Processor},
		{Tribe: "svc", Plugin: "slow", Kind: tribe.Processor},
	} {
		// The context's deadline is the call's timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := node.Call(ctx, t, []byte("batch"))
		cancel()
		var remote *tribe.RemoteError
		switch {
		case err == nil:
			fmt.Println(t.Plugin, "answered")
		case errors.Is(err, tribe.ErrUnknownTribe):
			fmt.Printf("%s/%s: no tribe %s (yet)\n", t.Tribe, t.Plugin, t.Tribe)
		case errors.Is(err, tribe.ErrNoProvider):
			fmt.Printf("%s/%s: nobody serves it (yet)\n", t.Tribe, t.Plugin)
		case errors.Is(err, context.DeadlineExceeded): // also matches tribe.ErrTimeout
			fmt.Printf("%s/%s: no reply before the deadline (ErrTimeout: %t)\n", t.Tribe, t.Plugin, errors.Is(err, tribe.ErrTimeout))
		case errors.As(err, &remote):
			fmt.Printf("%s/%s: the handler failed: %s\n", t.Tribe, t.Plugin, remote.Code)
		default:
			fmt.Printf("%s/%s: %v\n", t.Tribe, t.Plugin, err)
		}
	}
	// Output:
	// nosuch/slow: no tribe nosuch (yet)
	// svc/missing: nobody serves it (yet)
	// svc/slow: no reply before the deadline (ErrTimeout: true)
}

// A handler returns a *HandlerError to choose the code and message its
// caller gets, as a *RemoteError.
func ExampleHandlerError() {
	node, err := tribe.Start(tribe.Config{Name: "example-handler-error", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	if err := node.CreateTribe("svc"); err != nil {
		log.Fatal(err)
	}
	if err := node.Join("svc", ""); err != nil {
		log.Fatal(err)
	}
	err = node.Serve("enrich", "1", tribe.Processor, func(_ context.Context, _ tribe.CallInfo, payload []byte) ([]byte, error) {
		if len(payload) == 0 {
			return nil, &tribe.HandlerError{Code: "bad_input", Message: "empty batch"}
		}
		return payload, nil
	})
	if err != nil {
		log.Fatal(err)
	}

	// A node calls its own plugin like any other: it serves it, so it runs
	// the call itself.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = node.Call(ctx, tribe.Target{Tribe: "svc", Plugin: "enrich", Kind: tribe.Processor}, nil)
	var remote *tribe.RemoteError
	if errors.As(err, &remote) {
		fmt.Println("code:", remote.Code)
		fmt.Println("message:", remote.Message)
		fmt.Println("matches ErrRemote:", errors.Is(err, tribe.ErrRemote))
	}
	// Output:
	// code: bad_input
	// message: empty batch
	// matches ErrRemote: true
}

// Errors match the sentinels by code with errors.Is, whatever their message.
func ExampleError() {
	node, err := tribe.Start(tribe.Config{Name: "example-error", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	err = node.Join("nosuch", "")
	fmt.Println("unknown tribe:", errors.Is(err, tribe.ErrUnknownTribe))
	var e *tribe.Error
	if errors.As(err, &e) {
		fmt.Println("code:", e.Code) // the admin API's "error" field
	}

	node.Close()
	_, err = node.Status()
	fmt.Println("closed:", errors.Is(err, tribe.ErrClosed), "shutting down:", errors.Is(err, tribe.ErrShuttingDown))
	// Output:
	// unknown tribe: true
	// code: unknown_tribe
	// closed: true shutting down: true
}

// Events tells what happens to the node and its cluster.
func ExampleNode_Events() {
	node, err := tribe.Start(tribe.Config{Name: "example-events", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	events := node.Events() // closed once the node is closed

	if err := node.CreateTribe("svc"); err != nil {
		log.Fatal(err)
	}
	if err := node.Join("svc", ""); err != nil {
		log.Fatal(err)
	}
	for e := range events {
		switch e.Kind {
		case tribe.EventTribeCreated:
			fmt.Println("tribe created:", e.Tribe)
		case tribe.EventTribeJoined:
			fmt.Println("joined tribe:", e.Tribe, "by hand:", e.ByHand, "by policy:", e.ByPolicy)
			return
		}
	}
	// Output:
	// tribe created: svc
	// joined tribe: svc by hand: true by policy: false
}

// A service stops on SIGINT or SIGTERM and gives its running handlers some
// time to finish.
func ExampleNode_Shutdown() {
	node, err := tribe.Start(tribe.Config{Name: "example-shutdown", Bind: "127.0.0.1:0", Profile: "local"})
	if err != nil {
		log.Fatal(err)
	}

	// Here the example stops itself, through the parent context: a real
	// program passes context.Background() and is stopped by a signal.
	parent, stopExample := context.WithCancel(context.Background())
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopExample()

	<-ctx.Done() // a real program serves until a signal comes
	stop()       // a second signal kills the program at once

	// Leave the cluster; running handlers have up to 10 s to return.
	timeout, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.Shutdown(timeout); err != nil {
		log.Print("shutdown: ", err) // handlers still ran: their answers were dropped
	}
	_, err = node.Status()
	fmt.Println("closed:", errors.Is(err, tribe.ErrClosed))
	// Output: closed: true
}

// A program checks names and its node's configuration when it reads them,
// before it starts anything (a daemon's -t flag): no node is needed.
func ExampleConfig_Check() {
	for _, name := range []string{"collector-1", "-collector"} {
		err := tribe.CheckName(name)
		fmt.Printf("%q: %v (invalid name: %v)\n", name, err, errors.Is(err, tribe.ErrInvalidName))
	}

	cfg := tribe.Config{Name: "collector-1", Bind: "0.0.0.0:7946"}
	err := cfg.Check()
	fmt.Println("config error:", errors.Is(err, tribe.ErrConfig))
	cfg.Advertise = "10.0.0.7:7946" // the address peers reach
	fmt.Println("with an advertise address:", cfg.Check())
	// Output:
	// "collector-1": <nil> (invalid name: false)
	// "-collector": tribe: invalid name "-collector": must start with an ASCII letter or digit (invalid name: true)
	// config error: true
	// with an advertise address: <nil>
}

// A publisher served with Serve checks the step request a task sends it
// and answers the number of metrics, as the agent's publishers do.
func ExampleCheckStepRequest() {
	n, err := tribe.CheckStepRequest([]byte(`{"config": {}, "metrics": [
		{"name": "load/1min", "value": 0.25, "tags": {"rack": "r1"}, "timestamp_ms": 1700000000000},
		{"name": "load/5min", "value": 0.5, "timestamp_ms": 1700000000000}]}`))
	fmt.Println(n, err)
	_, err = tribe.CheckStepRequest([]byte(`{"metrics": [{"value": 1, "timestamp_ms": 1}]}`))
	fmt.Println("invalid argument:", errors.Is(err, tribe.ErrInvalidArgument))
	// Output:
	// 2 <nil>
	// invalid argument: true
}
