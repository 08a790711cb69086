package tribe

/*
#include "tribe.h"
*/
import "C"

import "fmt"

// The constants are written as literals so that godoc shows their values;
// an "invalid array index" compiler error here means one of them no longer
// matches include/tribe.h.
func _() {
	var x [1]struct{}
	_ = x[Collector-C.TRIBE_KIND_COLLECTOR]
	_ = x[Processor-C.TRIBE_KIND_PROCESSOR]
	_ = x[Publisher-C.TRIBE_KIND_PUBLISHER]
	_ = x[TaskRunning-C.TRIBE_TASK_RUNNING]
	_ = x[TaskStopped-C.TRIBE_TASK_STOPPED]
	_ = x[EventJoined-C.TRIBE_EVENT_JOINED]
	_ = x[EventIsolated-C.TRIBE_EVENT_ISOLATED]
	_ = x[EventMemberJoined-C.TRIBE_EVENT_MEMBER_JOINED]
	_ = x[EventMemberUpdated-C.TRIBE_EVENT_MEMBER_UPDATED]
	_ = x[EventMemberLeft-C.TRIBE_EVENT_MEMBER_LEFT]
	_ = x[EventMemberFailed-C.TRIBE_EVENT_MEMBER_FAILED]
	_ = x[EventMemberReaped-C.TRIBE_EVENT_MEMBER_REAPED]
	_ = x[EventTribeCreated-C.TRIBE_EVENT_TRIBE_CREATED]
	_ = x[EventTribeDeleted-C.TRIBE_EVENT_TRIBE_DELETED]
	_ = x[EventTribeJoined-C.TRIBE_EVENT_TRIBE_JOINED]
	_ = x[EventTribeLeft-C.TRIBE_EVENT_TRIBE_LEFT]
	_ = x[EventPluginLoad-C.TRIBE_EVENT_PLUGIN_LOAD]
	_ = x[EventPluginUnload-C.TRIBE_EVENT_PLUGIN_UNLOAD]
	_ = x[EventTaskRun-C.TRIBE_EVENT_TASK_RUN]
	_ = x[EventTaskStop-C.TRIBE_EVENT_TASK_STOP]
	_ = x[EventArtifactCorrupt-C.TRIBE_EVENT_ARTIFACT_CORRUPT]
	_ = x[EventArtifactUnavailable-C.TRIBE_EVENT_ARTIFACT_UNAVAILABLE]
	_ = x[EventPolicyError-C.TRIBE_EVENT_POLICY_ERROR]
	_ = x[EventIdentityClaimed-C.TRIBE_EVENT_IDENTITY_CLAIMED]
	_ = x[EventClockSkew-C.TRIBE_EVENT_CLOCK_SKEW]
	_ = x[EventLog-C.TRIBE_EVENT_LOG]
	_ = x[MaxCallBudget/1e6-C.TRIBE_MAX_CALL_BUDGET_MS]
}

// headerABI is the C ABI version of the header this package was built with.
const headerABI = C.TRIBE_ABI_VERSION

// abiError is Start's error when the linked library's C ABI version is not
// the header's; nil when they match. The library may come from another
// build than the header (CGO_LDFLAGS=-L), so the header alone proves
// nothing.
func abiError(header, linked uint32) error {
	if header == linked {
		return nil
	}
	return &Error{Code: "config", Message: fmt.Sprintf(
		"the linked libtribe implements C ABI version %d, this package was built for version %d: "+
			"rebuild libtribe.a (cargo build --release --lib) from the checkout this package comes from",
		linked, header)}
}
