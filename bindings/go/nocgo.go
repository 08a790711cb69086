//go:build !cgo

package tribe

// The package wraps libtribe's C library through cgo. Without cgo
// (CGO_ENABLED=0, or no C compiler found) this reference to an undefined
// name is the one build error, and its name says what to do.
const _ = tribe_requires_cgo__build_with_CGO_ENABLED_1_and_a_C_compiler
