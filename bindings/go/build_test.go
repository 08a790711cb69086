package tribe

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"unsafe"
)

// Without cgo the package fails to build with one error whose name says
// that cgo is needed, not with an undefined name for each use of the API.
func TestBuildWithoutCgoSaysCgoIsNeeded(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	cmd := exec.Command(goCmd, "build", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOGC=100")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("the package built without cgo")
	}
	var errs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(line, "#") {
			errs = append(errs, line)
		}
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "undefined: tribe_requires_cgo__build_with_CGO_ENABLED_1") {
		t.Fatalf("want one error naming cgo, got:\n%s", out)
	}
}

// Config.EventBuffer's doc gives the size of an Event: each slot of the
// Events channel holds one.
func TestEventSizeAsDocumented(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the documented size is for 64-bit platforms")
	}
	if size := unsafe.Sizeof(Event{}); size != 176 {
		t.Fatalf("an Event is %d bytes; the EventBuffer doc says 176", size)
	}
}
