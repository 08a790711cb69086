package tribe

/*
#include "tribe.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Error is an error reported by libtribe (or by this package, for ErrClosed).
// Compare with the sentinels using errors.Is; the sentinels match by code, so
// errors.Is(err, ErrNoProvider) holds whatever the message says.
//
// A call that ended because its context ended also matches the context's
// error: errors.Is(err, context.DeadlineExceeded) for an expired deadline
// (together with ErrTimeout), errors.Is(err, context.Canceled) for a
// cancelled context (together with ErrCancelled), and also the cause given
// to context.WithCancelCause, WithDeadlineCause or WithTimeoutCause.
type Error struct {
	// Code is the stable snake_case name of the error, the same as the
	// admin API's "error" field: "no_provider", "unknown_tribe", ...
	Code string
	// Message says what went wrong, for people.
	Message string

	cause error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "tribe: " + e.Code
	}
	return "tribe: " + e.Message
}

// Is reports whether target is an *Error of the same Code, such as the
// sentinel of that code. ErrClosed also matches ErrShuttingDown: a closed
// node has stopped.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || t == nil {
		return false
	}
	return t.Code == e.Code || (e.Code == ErrClosed.Code && t.Code == ErrShuttingDown.Code)
}

// Unwrap gives the context error a call ended with, if any.
func (e *Error) Unwrap() error { return e.cause }

// RemoteError is the failure a handler on the serving node reported: the
// code it chose ("error" for a plain Go error, "panic" for a handler that
// panicked, "unanswered" for a call the serving host dropped, "too_large"
// for a reply over the serving node's payload limit) and its message. It
// matches ErrRemote (and "too_large" also ErrTooLarge).
type RemoteError struct {
	// Code is the code the serving node answered with: the one its handler
	// chose (a HandlerError's Code, cut to 256 bytes), or "error",
	// "panic", "unanswered", "too_large" or "shutting_down" (see Handler);
	// never empty.
	Code string
	// Message is the answer's text, for people: a HandlerError's Message,
	// a plain error's text or the panic's (cut to 64 KiB); it may be empty.
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("tribe: remote handler failed (%s): %s", e.Code, e.Message)
}

// Is makes a RemoteError match ErrRemote, and also ErrTooLarge when the
// handler's reply was over the serving node's payload limit (code
// "too_large").
func (e *RemoteError) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || t == nil {
		return false
	}
	// By code, as *Error matches: ErrRemote, or ErrTooLarge for "too_large".
	return t.Code == ErrRemote.Code || (t.Code == ErrTooLarge.Code && e.Code == "too_large")
}

// PolicyError is a policy expression that did not compile, with the position
// of the error (line and column from 1; 0 when unknown). It matches
// ErrInvalidPolicy.
type PolicyError struct {
	// Line is the line of the expression where the error is, from 1; 0
	// when unknown.
	Line int
	// Column is the column of that line where the error is, from 1; 0
	// when unknown.
	Column int
	// Message is libtribe's message, position included when known, e.g.
	// "invalid policy: line 1, column 15: mismatched input ...".
	Message string
}

func (e *PolicyError) Error() string {
	// libtribe's message starts with the position ("line 1, column 14: ...")
	// when it has one.
	return "tribe: invalid policy: " + strings.TrimPrefix(e.Message, "invalid policy: ")
}

// Is makes a PolicyError match ErrInvalidPolicy.
func (e *PolicyError) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == ErrInvalidPolicy.Code
}

// HandlerError is what a Handler returns to choose the code and message the
// caller sees in its RemoteError. Any other error gives the code "error"
// with the error's text. The code "timeout" is reserved: the caller gets
// ErrTimeout (without the message), as when a handler overran its budget.
// The code "too_large" is the host's own for a reply over the caller's
// limit: a handler's "too_large" matches ErrTooLarge at the caller too.
type HandlerError struct {
	// Code is the code the caller sees as RemoteError.Code: short and
	// stable, snake_case by convention ("bad_input"). Empty gives "error";
	// invalid UTF-8 is replaced and a NUL byte becomes '?'; over 256 bytes
	// it is cut.
	Code string
	// Message is the text the caller sees as RemoteError.Message (may be
	// empty; cut at 64 KiB, invalid UTF-8 and NUL bytes replaced as in
	// Code).
	Message string
}

func (e *HandlerError) Error() string { return e.Code + ": " + e.Message }

// Sentinels, one per result code of the C ABI (plus ErrClosed), each
// matching every *Error with its Code.
var (
	// ErrPanic: libtribe caught a panic of its own; the node may be unusable.
	ErrPanic = &Error{Code: "panic"}
	// ErrNullArgument is of the C ABI only (a NULL pointer): this package never returns it.
	ErrNullArgument = &Error{Code: "null_argument"}
	// ErrConsumed is of the C ABI only (an object used twice): this package never returns it.
	ErrConsumed = &Error{Code: "consumed"}
	// ErrWrongEvent is of the C ABI only (an accessor of another event kind): this package never returns it.
	ErrWrongEvent = &Error{Code: "wrong_event"}
	// ErrInvalidUTF8: a string argument is not valid UTF-8.
	ErrInvalidUTF8 = &Error{Code: "invalid_utf8"}
	// ErrCancelled: Call's (or JoinClusterContext's) context was cancelled; it also matches context.Canceled.
	ErrCancelled = &Error{Code: "cancelled"}
	// ErrForked is of the C ABI only (a node used in a forked child): this package never returns it.
	ErrForked = &Error{Code: "forked"}
	// ErrUnknownArtifact: Artifact found no artifact with that SHA-256 on this node.
	ErrUnknownArtifact = &Error{Code: "unknown_artifact"}
	// ErrInvalidName: a node, tribe, policy, plugin or task name breaks the naming rules.
	ErrInvalidName = &Error{Code: "invalid_name"}
	// ErrInvalidArgument: an argument other than a name is out of range or malformed.
	ErrInvalidArgument = &Error{Code: "invalid_argument"}
	// ErrUnknownTribe: the tribe does not exist, or this node has not learned of it yet.
	ErrUnknownTribe = &Error{Code: "unknown_tribe"}
	// ErrTribeExists: CreateTribe found the tribe there already.
	ErrTribeExists = &Error{Code: "tribe_exists"}
	// ErrUnknownNode: no node of that name is known.
	ErrUnknownNode = &Error{Code: "unknown_node"}
	// ErrAlreadyMember: Join found the node a member of the tribe by hand already.
	ErrAlreadyMember = &Error{Code: "already_member"}
	// ErrNotMember: Leave found the node not a member of the tribe by hand.
	ErrNotMember = &Error{Code: "not_member"}
	// ErrInvalidPolicy: a policy expression did not compile (a *PolicyError has the position).
	ErrInvalidPolicy = &Error{Code: "invalid_policy"}
	// ErrUnknownPolicy: RemovePolicy found no policy of that name.
	ErrUnknownPolicy = &Error{Code: "unknown_policy"}
	// ErrPolicyExists: AddPolicy found a policy of that name already.
	ErrPolicyExists = &Error{Code: "policy_exists"}
	// ErrUnknownPlugin: the plugin entry is not in the tribe's catalog
	// (UnloadPlugin), or this node does not serve that name and version
	// (Unserve).
	ErrUnknownPlugin = &Error{Code: "unknown_plugin"}
	// ErrPluginExists: the plugin entry is in the tribe's catalog already.
	ErrPluginExists = &Error{Code: "plugin_exists"}
	// ErrUnknownTask: the task is not in the tribe.
	ErrUnknownTask = &Error{Code: "unknown_task"}
	// ErrTaskExists: a task with that id is in the tribe already.
	ErrTaskExists = &Error{Code: "task_exists"}
	// ErrUnknownFact: RemoveFact found no user fact of that key on this node.
	ErrUnknownFact = &Error{Code: "unknown_fact"}
	// ErrNoKeyring: a key method on a node started without a key.
	ErrNoKeyring = &Error{Code: "no_keyring"}
	// ErrEncryptionNotRequired: a key method on a node whose encryption mode is not "require".
	ErrEncryptionNotRequired = &Error{Code: "encryption_not_required"}
	// ErrKeyringFull: InstallKey found the keyring full.
	ErrKeyringFull = &Error{Code: "keyring_full"}
	// ErrUnknownKey: UseKey or RemoveKey found no such key in the keyring.
	ErrUnknownKey = &Error{Code: "unknown_key"}
	// ErrPrimaryKey: RemoveKey was given the key that seals (the primary).
	ErrPrimaryKey = &Error{Code: "primary_key"}
	// ErrNoProvider: Call found no live member of the tribe serving the plugin.
	ErrNoProvider = &Error{Code: "no_provider"}
	// ErrTimeout: Call did not complete in time; also context.DeadlineExceeded when the context's deadline passed.
	ErrTimeout = &Error{Code: "timeout"}
	// ErrRemote: Call's handler failed; the error is a *RemoteError with its code and message.
	ErrRemote = &Error{Code: "remote"}
	// ErrTooLarge: a call's payload or reply is over a node's Limits.MaxPayload, or an artifact over its limit.
	ErrTooLarge = &Error{Code: "too_large"}
	// ErrOverloaded: Call found too many calls in flight; the message says whose limit:
	// this node's Limits.MaxInflight or MaxInflightPerConn, or the busy hosts (named).
	ErrOverloaded = &Error{Code: "overloaded"}
	// ErrDisconnected: Call's host went away with the call in flight (it may have run).
	ErrDisconnected = &Error{Code: "disconnected"}
	// ErrShuttingDown: the node is shutting down or has stopped (also a call in flight at Close).
	ErrShuttingDown = &Error{Code: "shutting_down"}
	// ErrIO: a socket or file could not be used (the bind address, KeyFile,
	// DataDir; a call's connection, when the process is out of descriptors).
	ErrIO = &Error{Code: "io"}
	// ErrConfig: the configuration is inconsistent, or the linked libtribe does not fit this package.
	ErrConfig = &Error{Code: "config"}
	// ErrLimitReached: the cluster holds as many records of a kind
	// (tribes, policies, plugins, tasks, artifacts) as its limits allow.
	ErrLimitReached = &Error{Code: "limit_reached"}
	// ErrKeyNotSpread: UseKey or RemoveKey would cut live members off
	// (the key has not reached every live member, or some still seal
	// with it, after 10 s of waiting); nothing changed.
	ErrKeyNotSpread = &Error{Code: "key_not_spread"}
	// ErrClosed: the Node was closed (or aborted) through this package. It
	// also matches ErrShuttingDown.
	ErrClosed = &Error{Code: "closed", Message: "the node is closed"}
)

// errClosed is what methods of a closed Node return.
func errClosed() error { return ErrClosed }

// takeError turns a result code and its owned error object into a Go error
// and frees the object. A nil object (err not asked for) still gives the
// code's name.
func takeError(rc C.uint32_t, cerr *C.tribe_error) error {
	if rc == C.TRIBE_OK {
		if cerr != nil {
			C.tribe_error_free(cerr)
		}
		return nil
	}
	defer C.tribe_error_free(cerr)
	var message string
	if cerr != nil {
		message = C.GoString(C.tribe_error_message(cerr))
	}
	switch rc {
	case C.TRIBE_REMOTE:
		if cerr != nil {
			return &RemoteError{
				Code:    C.GoString(C.tribe_error_remote_code(cerr)),
				Message: C.GoString(C.tribe_error_remote_message(cerr)),
			}
		}
		return &RemoteError{Code: "error"}
	case C.TRIBE_INVALID_POLICY:
		return &PolicyError{
			Line:    int(C.tribe_error_line(cerr)),
			Column:  int(C.tribe_error_column(cerr)),
			Message: message,
		}
	}
	return &Error{Code: resultName(uint32(rc)), Message: message}
}

// kindError refuses a Kind other than the three in Go's own words (the C
// ABI's message names its C constants).
func kindError(k Kind) error {
	switch k {
	case Collector, Processor, Publisher:
		return nil
	}
	return &Error{Code: "invalid_argument", Message: fmt.Sprintf("plugin kind %d is not tribe.Collector, tribe.Processor or tribe.Publisher", uint32(k))}
}

// taskStateError refuses a TaskState other than the two in Go's own words
// (the C message names C constants).
func taskStateError(st TaskState) error {
	switch st {
	case TaskRunning, TaskStopped:
		return nil
	}
	return &Error{Code: "invalid_argument", Message: fmt.Sprintf("task state %d is not tribe.TaskRunning or tribe.TaskStopped", uint32(st))}
}

// resultName is the C ABI's snake_case name of a result code.
func resultName(rc uint32) string { return C.GoString(C.tribe_result_name(C.uint32_t(rc))) }

// withContext marks a call's error as caused by its context's end.
func withContext(err error, ctxErr error) error {
	if ctxErr == nil {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.cause = ctxErr
		var ce *causeError
		if errors.As(ctxErr, &ce) {
			c.Message += ": " + ce.cause.Error()
		}
		return &c
	}
	return err
}

// contextError is the error of a call abandoned because ctx ended first.
func contextError(ctxErr error) error { return abandoned("the call", ctxErr) }

// abandoned is the error of an operation (what: "the call", "the join")
// given up because its context ended first.
func abandoned(what string, ctxErr error) error {
	msg := what + " was cancelled"
	if errors.Is(ctxErr, context.DeadlineExceeded) {
		msg = what + " did not complete before its deadline"
	}
	var c *causeError
	if errors.As(ctxErr, &c) {
		msg += ": " + c.cause.Error()
	}
	if errors.Is(ctxErr, context.DeadlineExceeded) {
		return &Error{Code: "timeout", Message: msg, cause: ctxErr}
	}
	return &Error{Code: "cancelled", Message: msg, cause: ctxErr}
}

// ctxEnd is how ctx ended: its error, joined with the cause given to
// context.WithCancelCause (or WithDeadlineCause) when there is one, or
// otherwise when ctx has not noticed its end yet.
func ctxEnd(ctx context.Context, otherwise error) error {
	err := ctx.Err()
	if err == nil {
		return otherwise
	}
	if cause := context.Cause(ctx); cause != nil && cause != err {
		return &causeError{err: err, cause: cause}
	}
	return err
}

// causeError matches both a context's error and its cause.
type causeError struct{ err, cause error }

func (c *causeError) Error() string   { return c.err.Error() + ": " + c.cause.Error() }
func (c *causeError) Unwrap() []error { return []error{c.err, c.cause} }
