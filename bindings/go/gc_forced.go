//go:build tribegc

package tribe

import "runtime"

// gcPoint forces a collection inside every wrapper (build tag tribegc), so
// that lifetime bugs (a Go value freed while C still uses it, a finalizer
// running too early) show up in tests.
func gcPoint() { runtime.GC() }
