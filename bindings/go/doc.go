// Package tribe lets a Go program join tribes: a gossip cluster of nodes
// divided into named subtribes, with facts, policies, per-tribe plugin and
// task catalogs, remote plugin calls and encryption. It wraps libtribe's C
// ABI (include/tribe.h) and links the static library that
//
//	cargo build --release --lib
//
// writes to target/release of the libtribe repository.
//
// A node is started with Start and stopped with Close (or Abort). One
// goroutine takes everything libtribe queues for the host, for every node
// of the process (they share one poll group, whose call streams that
// goroutine drives while it waits): node
// events go to the Events channel, completions of Call go to the waiting
// call, and each incoming call to a plugin served with Serve runs its
// Handler in a goroutine of its own. libtribe never calls into Go.
//
// Errors match the sentinels (ErrNoProvider, ErrTimeout, ...) with
// errors.Is; *RemoteError and *PolicyError carry details for errors.As.
//
// The package needs cgo (CGO_ENABLED=1 and a C compiler); Start refuses a
// linked libtribe of another C ABI version than include/tribe.h's.
//
// Only one Rust static library can be linked into a Go binary: two of them
// clash on the Rust standard library's symbols.
package tribe
