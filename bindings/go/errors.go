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
// cancelled context (together with ErrCancelled).
type Error struct {
	// Code is the stable snake_case name of the error, the same as the
	// admin API's "error" field: "no_provider", "unknown_tribe", ...
	Code string
	// Message says what went wrong, for people.
	Message string

	num   uint32
	cause error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "tribe: " + e.Code
	}
	return "tribe: " + e.Message
}

// Is reports whether target is a sentinel of the same code. ErrClosed also
// matches ErrShuttingDown: a closed node has stopped.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t.num == e.num {
		return true
	}
	return e.num == codeClosed && t.num == C.TRIBE_SHUTTING_DOWN
}

// Unwrap gives the context error a call ended with, if any.
func (e *Error) Unwrap() error { return e.cause }

// RemoteError is the failure a handler on the serving node reported: the
// code it chose ("error" for a plain Go error, "panic" for a handler that
// panicked, "unanswered" for a call the serving host dropped, "too_large"
// for a reply over the serving node's payload limit) and its message. It
// matches ErrRemote (and "too_large" also ErrTooLarge).
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("tribe: remote handler failed (%s): %s", e.Code, e.Message)
}

// Is makes a RemoteError match ErrRemote, and also ErrTooLarge when the
// handler's reply was over the serving node's payload limit (code
// "too_large").
func (e *RemoteError) Is(target error) bool {
	return target == ErrRemote || (target == ErrTooLarge && e.Code == "too_large")
}

// PolicyError is a policy expression that did not compile, with the position
// of the error (line and column from 1; 0 when unknown). It matches
// ErrInvalidPolicy.
type PolicyError struct {
	Line    int
	Column  int
	Message string
}

func (e *PolicyError) Error() string {
	// libtribe's message starts with the position ("line 1, column 14: ...")
	// when it has one.
	return "tribe: invalid policy: " + strings.TrimPrefix(e.Message, "invalid policy: ")
}

// Is makes a PolicyError match ErrInvalidPolicy.
func (e *PolicyError) Is(target error) bool { return target == ErrInvalidPolicy }

// HandlerError is what a Handler returns to choose the code and message the
// caller sees in its RemoteError. Any other error gives the code "error"
// with the error's text. The code "timeout" is reserved: the caller gets
// ErrTimeout (without the message), as when a handler overran its budget.
type HandlerError struct {
	Code    string
	Message string
}

func (e *HandlerError) Error() string { return e.Code + ": " + e.Message }

// codeClosed is this package's own code: the Node was closed.
const codeClosed = 1000

func sentinel(num uint32, code string) *Error {
	return &Error{Code: code, num: num}
}

// Sentinels, one per result code of the C ABI (plus ErrClosed).
var (
	ErrPanic                 = sentinel(C.TRIBE_PANIC, "panic")
	ErrNullArgument          = sentinel(C.TRIBE_NULL_ARGUMENT, "null_argument")
	ErrConsumed              = sentinel(C.TRIBE_CONSUMED, "consumed")
	ErrWrongEvent            = sentinel(C.TRIBE_WRONG_EVENT, "wrong_event")
	ErrInvalidUTF8           = sentinel(C.TRIBE_INVALID_UTF8, "invalid_utf8")
	ErrCancelled             = sentinel(C.TRIBE_CANCELLED, "cancelled")
	ErrForked                = sentinel(C.TRIBE_FORKED, "forked")
	ErrUnknownArtifact       = sentinel(C.TRIBE_UNKNOWN_ARTIFACT, "unknown_artifact")
	ErrInvalidName           = sentinel(C.TRIBE_INVALID_NAME, "invalid_name")
	ErrInvalidArgument       = sentinel(C.TRIBE_INVALID_ARGUMENT, "invalid_argument")
	ErrUnknownTribe          = sentinel(C.TRIBE_UNKNOWN_TRIBE, "unknown_tribe")
	ErrTribeExists           = sentinel(C.TRIBE_TRIBE_EXISTS, "tribe_exists")
	ErrUnknownNode           = sentinel(C.TRIBE_UNKNOWN_NODE, "unknown_node")
	ErrAlreadyMember         = sentinel(C.TRIBE_ALREADY_MEMBER, "already_member")
	ErrNotMember             = sentinel(C.TRIBE_NOT_MEMBER, "not_member")
	ErrInvalidPolicy         = sentinel(C.TRIBE_INVALID_POLICY, "invalid_policy")
	ErrUnknownPolicy         = sentinel(C.TRIBE_UNKNOWN_POLICY, "unknown_policy")
	ErrPolicyExists          = sentinel(C.TRIBE_POLICY_EXISTS, "policy_exists")
	ErrUnknownPlugin         = sentinel(C.TRIBE_UNKNOWN_PLUGIN, "unknown_plugin")
	ErrPluginExists          = sentinel(C.TRIBE_PLUGIN_EXISTS, "plugin_exists")
	ErrUnknownTask           = sentinel(C.TRIBE_UNKNOWN_TASK, "unknown_task")
	ErrTaskExists            = sentinel(C.TRIBE_TASK_EXISTS, "task_exists")
	ErrUnknownFact           = sentinel(C.TRIBE_UNKNOWN_FACT, "unknown_fact")
	ErrNoKeyring             = sentinel(C.TRIBE_NO_KEYRING, "no_keyring")
	ErrEncryptionNotRequired = sentinel(C.TRIBE_ENCRYPTION_NOT_REQUIRED, "encryption_not_required")
	ErrKeyringFull           = sentinel(C.TRIBE_KEYRING_FULL, "keyring_full")
	ErrUnknownKey            = sentinel(C.TRIBE_UNKNOWN_KEY, "unknown_key")
	ErrPrimaryKey            = sentinel(C.TRIBE_PRIMARY_KEY, "primary_key")
	ErrNoProvider            = sentinel(C.TRIBE_NO_PROVIDER, "no_provider")
	ErrTimeout               = sentinel(C.TRIBE_TIMEOUT, "timeout")
	ErrRemote                = sentinel(C.TRIBE_REMOTE, "remote")
	ErrTooLarge              = sentinel(C.TRIBE_TOO_LARGE, "too_large")
	ErrOverloaded            = sentinel(C.TRIBE_OVERLOADED, "overloaded")
	ErrDisconnected          = sentinel(C.TRIBE_DISCONNECTED, "disconnected")
	ErrShuttingDown          = sentinel(C.TRIBE_SHUTTING_DOWN, "shutting_down")
	ErrIO                    = sentinel(C.TRIBE_IO, "io")
	ErrConfig                = sentinel(C.TRIBE_CONFIG, "config")
	// ErrLimitReached: the cluster holds as many records of a kind
	// (tribes, policies, plugins, tasks, artifacts) as its limits allow.
	ErrLimitReached = sentinel(C.TRIBE_LIMIT_REACHED, "limit_reached")
	// ErrKeyNotSpread: UseKey or RemoveKey would cut live members off
	// (the key has not reached every live member, or some still seal
	// with it, after 10 s of waiting); nothing changed.
	ErrKeyNotSpread = sentinel(C.TRIBE_KEY_NOT_SPREAD, "key_not_spread")
	// ErrClosed: the Node was closed (or aborted) through this package. It
	// also matches ErrShuttingDown.
	ErrClosed = &Error{Code: "closed", Message: "the node is closed", num: codeClosed}
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
	num := uint32(rc)
	var message string
	if cerr != nil {
		message = C.GoString(C.tribe_error_message(cerr))
	}
	switch num {
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
	return &Error{Code: C.GoString(C.tribe_result_name(rc)), Message: message, num: num}
}

// withContext marks a call's error as caused by its context's end.
func withContext(err error, ctxErr error) error {
	if ctxErr == nil {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.cause = ctxErr
		return &c
	}
	return err
}

// contextError is the error of a call abandoned because ctx ended first.
func contextError(ctxErr error) error {
	if errors.Is(ctxErr, context.DeadlineExceeded) {
		return &Error{Code: "timeout", Message: "the call did not complete before its deadline", num: C.TRIBE_TIMEOUT, cause: ctxErr}
	}
	return &Error{Code: "cancelled", Message: "the call was cancelled", num: C.TRIBE_CANCELLED, cause: ctxErr}
}
