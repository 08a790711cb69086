package tribe

// All cgo flags of the package live here. The package links the static
// library that `cargo build --release --lib` writes to target/release of the
// repository (two directories up). `-l:libtribe.a` picks the static archive
// even where libtribe.so sits next to it; a program that keeps the library
// elsewhere puts `-L/that/dir` in CGO_LDFLAGS, which is searched first.
//
// The native libraries are those `cargo rustc --release --lib --crate-type
// staticlib -- --print native-static-libs` lists for Linux, less `-lgcc_s`:
// the C compiler's driver links the unwinder itself (libgcc_s, or
// libgcc_eh for a fully static binary, which `-lgcc_s` would make
// impossible).

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -l:libtribe.a -lutil -lrt -lpthread -lm -ldl -lc
#include <stdlib.h>
#include "tribe.h"
*/
import "C"
