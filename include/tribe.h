/*
 * libtribe C API.
 *
 * Conventions
 * - Every fallible function returns a uint32_t result code: TRIBE_OK (0) or a
 *   TRIBE_* error code. Codes are never renumbered or reused. The last
 *   parameter, `tribe_error **err`, is optional: when not NULL it receives
 *   NULL on success and an owned error object on failure (read it with
 *   tribe_error_code / tribe_error_message / ..., free it with
 *   tribe_error_free). There is no thread-local "last error".
 * - Strings passed in are NUL-terminated UTF-8 and only borrowed for the
 *   call; invalid UTF-8 is TRIBE_INVALID_UTF8, a NULL where a value is
 *   needed is TRIBE_NULL_ARGUMENT. Byte buffers passed in are (pointer,
 *   length) pairs, copied if kept.
 * - Strings returned as `char **out` (+ optional `size_t *out_len`, the
 *   length without the NUL) are owned by the caller: free them with
 *   tribe_string_free. Byte buffers returned as `uint8_t **out` + `size_t
 *   *out_len` are owned: free them with tribe_bytes_free(out, out_len); an
 *   empty buffer is NULL. `const char *` results are borrowed from the object
 *   they came from and valid until it is freed, unless said to be static.
 * - Each object is freed once, with its own free function; freeing it again
 *   or using it after its free is undefined behaviour, as with free(3).
 * - Out-parameters (a pointer or length a function writes) hold NULL / 0
 *   unless the function returns TRIBE_OK, whatever the failure (a bad
 *   argument, a consumed object, a panic), so `if (rc) free(out)` paths
 *   never free garbage.
 * - A panic inside libtribe is caught and returned as TRIBE_PANIC; nothing
 *   unwinds into C. libtribe installs no signal handlers, and its socket
 *   writes (also those made on the host's threads) never raise SIGPIPE. A
 *   signal does not interrupt a blocked call or wait (no EINTR), and no
 *   function is async-signal-safe: from a signal handler, write to a
 *   self-pipe (or use signalfd) and call tribe_node_shutdown from a thread.
 *   Every descriptor libtribe opens belongs to one node or poll group and
 *   is closed by its free (none is process-wide), but a name lookup's
 *   (seeds by name, tribe_node_join_cluster): it runs on a thread of its
 *   own that only the system resolver ends, so one that hangs outlives
 *   its node until the resolver gives up (32 at most in a process).
 *
 * Threads
 * - libtribe never calls into the host from its own threads. Node events,
 *   incoming calls (TRIBE_EVENT_CALL, with a responder) and the completions of
 *   tribe_node_call_async (TRIBE_EVENT_CALL_DONE) wait in a queue that the host
 *   drains with tribe_node_next_event on a thread of its choosing;
 *   tribe_node_event_fd is readable while the queue is not empty, for poll,
 *   epoll or libuv loops. Several nodes of one process may share a poll
 *   group (tribe_group_new, tribe_config_set_group), whose one host thread
 *   waits for all of them in tribe_group_wait.
 * - A tribe_node may be used from many threads at once (every function that
 *   takes a `const tribe_node *`), except tribe_node_free.
 * - A tribe_responder may be answered from any thread, one thread at a time.
 * - A tribe_group may be used from many threads at once, except
 *   tribe_group_free; so may a tribe_cancel, except tribe_cancel_free
 *   (tribe_cancel_trigger ends a blocking join on another thread).
 * - tribe_config, tribe_event and tribe_error objects must not be used from
 *   two threads at once (hand them over between threads freely).
 * - A host thread that calls libtribe needs 128 KiB of stack or more: a
 *   blocking call or a start runs part of the node's work on it (a release
 *   build crashed below 80 KiB; a debug build needs more). Threads of
 *   glibc get 8 MiB unless told otherwise, musl's 128 KiB.
 *
 * Blocking, and after a shutdown
 * - Where a function's comment says nothing else: a command (tribes,
 *   policies, facts, catalog, keys, serve/unserve) blocks until the node's
 *   own loop has applied it (with a data dir, also written it), never for
 *   the network or for peers; a snapshot (`*_json`, counters, state digest)
 *   reads the node's current state; both return TRIBE_SHUTTING_DOWN once
 *   tribe_node_shutdown or tribe_node_abort has begun. tribe_node_name,
 *   tribe_node_addr and tribe_node_event_fd work until tribe_node_free.
 * - Incoming calls are bounded by the node's serving places
 *   (tribe_config_set_rpc_limits: max_serving, max_inflight_per_conn): a
 *   call holds its places until its responder is answered or freed (a
 *   declined one until its budget runs out; an answer gives them back
 *   before it is sent, so a caller that waits for each answer before its
 *   next call never finds them taken), also while it waits in the
 *   queue and past its budget, so a host that stops
 *   polling makes the node refuse new calls (TRIBE_OVERLOADED at the
 *   caller) rather than queue them without end.
 *
 * Lifecycle and shutdown order
 *   tribe_config_new -> tribe_config_set_* -> tribe_node_start (consumes the
 *   config's contents) -> tribe_config_free -> ... -> tribe_node_shutdown
 *   (or tribe_node_abort) -> join the threads that use the node (their
 *   blocked calls return TRIBE_SHUTTING_DOWN) -> drain tribe_node_next_event
 *   until it returns TRIBE_SHUTTING_DOWN (answer those calls, free those
 *   events) -> tribe_node_free, which sends the replies still queued before
 *   it returns (2 s at most), so the process may exit right after it.
 *   Responders, events and errors are independent objects and may be freed
 *   before or after their node.
 *
 * fork()
 *   Start nodes after daemonizing. A node's threads stay in the process that
 *   started it: in a forked child, that node and its responders refuse all
 *   work with TRIBE_FORKED (at once, never a hang), and tribe_node_free /
 *   tribe_responder_free there release nothing. A child may start nodes of
 *   its own, also from a config made before the fork, but not in a poll
 *   group made before it (TRIBE_FORKED: the group's runtime runs in the
 *   parent; make a group in the child). A child forked without exec keeps
 *   the node's sockets open (they are close-on-exec), so the port stays
 *   taken until it exits, and should the parent crash while the child
 *   lives, its peers see no closed stream: its calls in flight end when
 *   they time out or when it is declared failed. The child closes its copy
 *   of the data-dir lock.
 */


#ifndef TRIBE_H
#define TRIBE_H

/* Generated by cbindgen from src/ffi (build.rs). Do not edit: the test script fails when this file drifts. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * The version of the C ABI. It grows only when a function's signature or
 * meaning changes in a way older programs would notice.
 */
#define TRIBE_ABI_VERSION 1

/**
 * Gathers metrics.
 */
#define TRIBE_KIND_COLLECTOR 1

/**
 * Transforms metrics.
 */
#define TRIBE_KIND_PROCESSOR 2

/**
 * Sends metrics somewhere.
 */
#define TRIBE_KIND_PUBLISHER 3

/**
 * The longest a host runs a call, in ms (5 minutes): a call's handler gets
 * at most this budget, so a call with a longer `timeout_ms` ends with
 * `TRIBE_TIMEOUT` after it unless answered first.
 */
#define TRIBE_MAX_CALL_BUDGET_MS 300000

/**
 * Task states for `tribe_node_add_task` and `tribe_node_set_task_state`.
 */
#define TRIBE_TASK_RUNNING 1

/**
 * A task members should not run.
 */
#define TRIBE_TASK_STOPPED 2

/**
 * Success. Any other code is a failure, and then every out-parameter the
 * caller passed (a pointer or a length other than `err`) holds NULL or 0,
 * whatever the cause: a NULL or invalid argument, a used-up object, an
 * error of the operation, a caught panic. Nothing but the error needs
 * freeing then. (The slots of an event array are not written: its
 * length is 0.)
 */
#define TRIBE_OK 0

/**
 * A panic was caught inside libtribe; the object it happened on may be unusable.
 */
#define TRIBE_PANIC 1

/**
 * A required pointer argument was NULL.
 */
#define TRIBE_NULL_ARGUMENT 2

/**
 * A string argument was not valid UTF-8.
 */
#define TRIBE_INVALID_UTF8 3

/**
 * The object was used up already (a started config, an answered responder,
 * a responder or reply taken from its event).
 */
#define TRIBE_CONSUMED 4

/**
 * The accessor does not apply to this kind of event.
 */
#define TRIBE_WRONG_EVENT 5

/**
 * An asynchronous call was cancelled by `tribe_node_call_cancel`.
 */
#define TRIBE_CANCELLED 6

/**
 * The node (or responder) was made by the process this one was forked
 * from; a forked child cannot use it.
 */
#define TRIBE_FORKED 7

/**
 * This node holds no artifact with that SHA-256 (`tribe_node_artifact`).
 */
#define TRIBE_UNKNOWN_ARTIFACT 8

/**
 * A name broke the naming rules.
 */
#define TRIBE_INVALID_NAME 100

/**
 * An argument other than a name was out of range or malformed.
 */
#define TRIBE_INVALID_ARGUMENT 101

/**
 * The tribe does not exist.
 */
#define TRIBE_UNKNOWN_TRIBE 102

/**
 * The tribe exists already.
 */
#define TRIBE_TRIBE_EXISTS 103

/**
 * No node of that name is known.
 */
#define TRIBE_UNKNOWN_NODE 104

/**
 * The node is a member of the tribe by hand already.
 */
#define TRIBE_ALREADY_MEMBER 105

/**
 * The node is not a member of the tribe by hand.
 */
#define TRIBE_NOT_MEMBER 106

/**
 * A policy expression did not compile (see `tribe_error_line`/`_column`).
 */
#define TRIBE_INVALID_POLICY 107

/**
 * The policy does not exist.
 */
#define TRIBE_UNKNOWN_POLICY 108

/**
 * A policy of that name exists already.
 */
#define TRIBE_POLICY_EXISTS 109

/**
 * The plugin entry does not exist in the tribe's catalog.
 */
#define TRIBE_UNKNOWN_PLUGIN 110

/**
 * The plugin entry exists already.
 */
#define TRIBE_PLUGIN_EXISTS 111

/**
 * The task does not exist in the tribe.
 */
#define TRIBE_UNKNOWN_TASK 112

/**
 * A task with that id exists already.
 */
#define TRIBE_TASK_EXISTS 113

/**
 * The fact is not a user fact of this node.
 */
#define TRIBE_UNKNOWN_FACT 114

/**
 * A keyring operation on a node started without a key.
 */
#define TRIBE_NO_KEYRING 115

/**
 * Keyring operations need the `require` encryption mode.
 */
#define TRIBE_ENCRYPTION_NOT_REQUIRED 116

/**
 * The keyring is full.
 */
#define TRIBE_KEYRING_FULL 117

/**
 * No such key in the keyring.
 */
#define TRIBE_UNKNOWN_KEY 118

/**
 * The primary key cannot be removed.
 */
#define TRIBE_PRIMARY_KEY 119

/**
 * No live member of the tribe serves the plugin.
 */
#define TRIBE_NO_PROVIDER 120

/**
 * The call did not complete before its deadline.
 */
#define TRIBE_TIMEOUT 121

/**
 * The handler failed (see `tribe_error_remote_code`/`_message`).
 */
#define TRIBE_REMOTE 122

/**
 * A payload over the limit.
 */
#define TRIBE_TOO_LARGE 123

/**
 * Too many calls in flight.
 */
#define TRIBE_OVERLOADED 124

/**
 * The host went away with the call in flight (it may have run).
 */
#define TRIBE_DISCONNECTED 125

/**
 * The node is shutting down or has stopped.
 */
#define TRIBE_SHUTTING_DOWN 126

/**
 * A socket or file could not be used.
 */
#define TRIBE_IO 127

/**
 * The configuration is inconsistent.
 */
#define TRIBE_CONFIG 128

/**
 * The replicated state holds as many records of a kind as allowed.
 */
#define TRIBE_LIMIT_REACHED 129

/**
 * A keyring step would cut live members off (the key has not spread yet);
 * nothing changed.
 */
#define TRIBE_KEY_NOT_SPREAD 130

/**
 * No event (a NULL event).
 */
#define TRIBE_EVENT_NONE 0

/**
 * This node joined a cluster (it has a live peer).
 */
#define TRIBE_EVENT_JOINED 1

/**
 * This node lost every peer; it keeps trying its seeds.
 */
#define TRIBE_EVENT_ISOLATED 2

/**
 * A node became alive (subject: its name): new, back after it was found
 * down, or restarted under its name before it was found down.
 */
#define TRIBE_EVENT_MEMBER_JOINED 3

/**
 * A node's record (facts, endpoints) changed (subject: its name).
 */
#define TRIBE_EVENT_MEMBER_UPDATED 4

/**
 * A node left on purpose (subject: its name).
 */
#define TRIBE_EVENT_MEMBER_LEFT 5

/**
 * A node stopped answering and was declared failed (subject: its name).
 */
#define TRIBE_EVENT_MEMBER_FAILED 6

/**
 * A failed or left node was forgotten (subject: its name).
 */
#define TRIBE_EVENT_MEMBER_REAPED 7

/**
 * A tribe came into existence (tribe).
 */
#define TRIBE_EVENT_TRIBE_CREATED 8

/**
 * A tribe was deleted (tribe).
 */
#define TRIBE_EVENT_TRIBE_DELETED 9

/**
 * This node is now in a tribe (tribe).
 */
#define TRIBE_EVENT_TRIBE_JOINED 10

/**
 * This node is no longer in a tribe (tribe).
 */
#define TRIBE_EVENT_TRIBE_LEFT 11

/**
 * Load this plugin (tribe; subject: plugin name).
 */
#define TRIBE_EVENT_PLUGIN_LOAD 12

/**
 * Unload this plugin (tribe; subject: plugin name).
 */
#define TRIBE_EVENT_PLUGIN_UNLOAD 13

/**
 * Run this task (tribe; subject: task id).
 */
#define TRIBE_EVENT_TASK_RUN 14

/**
 * Stop this task (tribe; subject: task id).
 */
#define TRIBE_EVENT_TASK_STOP 15

/**
 * A holder sent artifact bytes that do not match their hash (tribe;
 * subject: plugin name).
 */
#define TRIBE_EVENT_ARTIFACT_CORRUPT 16

/**
 * A plugin's artifact could not be fetched from any holder (tribe;
 * subject: plugin name).
 */
#define TRIBE_EVENT_ARTIFACT_UNAVAILABLE 17

/**
 * A policy could not be evaluated for this node (subject: policy name).
 */
#define TRIBE_EVENT_POLICY_ERROR 18

/**
 * A call to a plugin this node serves (tribe; subject: plugin name); take
 * its responder with `tribe_event_take_responder`.
 */
#define TRIBE_EVENT_CALL 19

/**
 * An asynchronous call finished (`tribe_event_call_id`,
 * `tribe_event_take_reply`).
 */
#define TRIBE_EVENT_CALL_DONE 20

/**
 * A log record of libtribe (subject: the message; `tribe_event_log_level`),
 * queued only for nodes started with `tribe_config_set_log_level`.
 */
#define TRIBE_EVENT_LOG 21

/**
 * Another identity uses this node's name, a second node started under it
 * or a forgery (`tribe_event_json` has its address and generation). The
 * one with the newer generation holds the name; the other keeps out of the
 * cluster until the holder goes (meanwhile `name_held_by` in
 * `tribe_node_status_json` names the holder's address).
 */
#define TRIBE_EVENT_IDENTITY_CLAIMED 22

/**
 * A peer's clock is off this node's (subject: its name; `tribe_event_json`
 * has the offset).
 */
#define TRIBE_EVENT_CLOCK_SKEW 23

/**
 * Error records.
 */
#define TRIBE_LOG_ERROR 1

/**
 * Warnings.
 */
#define TRIBE_LOG_WARN 2

/**
 * Notable steps (joins, leaves, key changes).
 */
#define TRIBE_LOG_INFO 3

/**
 * Details for debugging.
 */
#define TRIBE_LOG_DEBUG 4

/**
 * Everything.
 */
#define TRIBE_LOG_TRACE 5

/**
 * An error: its result code, stable name and message, plus the handler's
 * code and message for `TRIBE_REMOTE` and the position for
 * `TRIBE_INVALID_POLICY`.
 */
typedef struct tribe_error tribe_error;

/**
 * A cancel token.
 */
typedef struct tribe_cancel tribe_cancel;

/**
 * What `tribe_node_start` takes.
 */
typedef struct tribe_config tribe_config;

/**
 * An event taken by the host.
 */
typedef struct tribe_event tribe_event;

/**
 * A poll group.
 */
typedef struct tribe_group tribe_group;

/**
 * A running node.
 */
typedef struct tribe_node tribe_node;

/**
 * An incoming call waiting for its answer.
 */
typedef struct tribe_responder tribe_responder;

/**
 * What `tribe_responder_info` tells about an incoming call. Every pointer
 * is borrowed from the responder until `tribe_responder_free`.
 */
typedef struct tribe_call_info {
    /**
     * The calling node's name.
     */
    const char *caller;
    /**
     * The tribe the call came through.
     */
    const char *tribe;
    /**
     * The plugin called.
     */
    const char *plugin;
    /**
     * The version of the served plugin that takes the call (also when the
     * caller asked for any version).
     */
    const char *version;
    /**
     * The payload (NULL when empty) and its length.
     */
    const uint8_t *payload;
    size_t payload_len;
    /**
     * How long the caller still waited when the call arrived, in
     * microseconds.
     */
    uint64_t budget_us;
} tribe_call_info;

#ifdef __cplusplus
extern "C" {
#endif /* __cplusplus */

/**
 * Adds a plugin entry (`kind`: `TRIBE_KIND_*`) that carries `bytes` (copied;
 * NULL with length 0 for none) to a tribe's catalog. This node holds the
 * bytes and hands them out; every member, also a later one, fetches and
 * verifies them, then gets `TRIBE_EVENT_PLUGIN_LOAD` and reads them with
 * `tribe_node_artifact`. When `sha256_out` is not NULL it receives the
 * bytes' SHA-256 in lowercase hex (owned: `tribe_string_free`). Blocks for a
 * local write (and the hash of `bytes`). After shutdown:
 * `TRIBE_SHUTTING_DOWN`. The bytes stay held also when the entry is refused
 * (for instance `TRIBE_PLUGIN_EXISTS`). `TRIBE_TOO_LARGE` for bytes over
 * 256 MiB (268,435,456), refused before they are copied.
 */
uint32_t tribe_node_load_plugin_artifact(const struct tribe_node *node,
                                         const char *tribe,
                                         const char *name,
                                         const char *version,
                                         uint32_t kind,
                                         const uint8_t *bytes,
                                         size_t bytes_len,
                                         char **sha256_out,
                                         struct tribe_error **err);

/**
 * The verified bytes of an artifact this node holds (its own, or one it
 * fetched for a plugin entry of a tribe it is in), by SHA-256 in hex
 * (`sha256` of the plugin's event JSON). `*out` / `*out_len` receive an
 * owned copy (`tribe_bytes_free`; NULL for empty bytes).
 * `TRIBE_UNKNOWN_ARTIFACT` when this node holds no such bytes (not yet
 * fetched, or of a tribe it is not in); `TRIBE_INVALID_ARGUMENT` when
 * `sha256` is not 64 hex digits. Does not block. After shutdown:
 * `TRIBE_SHUTTING_DOWN`.
 */
uint32_t tribe_node_artifact(const struct tribe_node *node,
                             const char *sha256,
                             uint8_t **out,
                             size_t *out_len,
                             struct tribe_error **err);

/**
 * The C ABI version this library implements (`TRIBE_ABI_VERSION` of the
 * header it was built with). A program can compare it with the header's.
 */
uint32_t tribe_abi_version(void);

/**
 * The libtribe version, e.g. `"0.1.0"`. Static: never freed.
 */
const char *tribe_version(void);

/**
 * Generates a new random cluster key, as base64 text (what `tribe keygen`
 * prints). `*out` receives an owned string (free it with
 * `tribe_string_free`); `*out_len`, if not NULL, its length without the NUL.
 * Does not block.
 */
uint32_t tribe_keygen(char **out,
                      size_t *out_len,
                      struct tribe_error **err);

/**
 * The public id of a key (base64, as `tribe_keygen` gives): 8 hex digits,
 * as snapshots and `tribe_node_keys_json` name keys, so a host can watch a
 * key it installed spread. `*out` receives an owned string (free it with
 * `tribe_string_free`); `*out_len`, if not NULL, its length.
 * `TRIBE_INVALID_ARGUMENT` for text that is no key. Does not block; needs
 * no node.
 */
uint32_t tribe_key_id(const char *key,
                      char **out,
                      size_t *out_len,
                      struct tribe_error **err);

/**
 * Checks `name` against the naming rules of nodes, tribes, policies and
 * plugins (1 to 64 bytes, a letter or a digit first, then letters, digits
 * and `_ - . : @`): `TRIBE_OK`, or `TRIBE_INVALID_NAME` saying which rule
 * it breaks, so a host can refuse a bad name in its own configuration
 * before anything uses it. Does not block; needs no node.
 */
uint32_t tribe_name_check(const char *name,
                          struct tribe_error **err);

/**
 * Checks `version` against the rules of plugin versions (those of names,
 * up to 32 bytes): `TRIBE_OK`, or `TRIBE_INVALID_NAME` saying which rule
 * it breaks. Does not block; needs no node.
 */
uint32_t tribe_version_check(const char *version,
                             struct tribe_error **err);

/**
 * Checks a step request, the payload a publisher or processor of a task
 * receives (`{"config": {...}, "metrics": [...]}`), as the agent's
 * publishers do: `TRIBE_OK` with the number of metrics in `*metrics`, or
 * `TRIBE_INVALID_ARGUMENT` saying what is wrong (not JSON, trailing text,
 * a metric without a name, a control character, over the batch limits);
 * `*metrics` is 0 then. The answer a publisher gives is that number, as
 * text. `payload` may be NULL only with `len` 0. Does not block; needs no
 * node.
 */
uint32_t tribe_step_request_check(const uint8_t *payload,
                                  size_t len,
                                  size_t *metrics,
                                  struct tribe_error **err);

/**
 * Frees a string returned by libtribe. NULL is ignored. Passing anything
 * else, or freeing twice, is undefined behaviour.
 */
void tribe_string_free(char *s);

/**
 * Frees a byte buffer returned by libtribe, with the length it came with.
 * NULL is ignored (an empty buffer is returned as NULL).
 */
void tribe_bytes_free(uint8_t *bytes,
                      size_t len);

/**
 * Serves a plugin: advertises it in this node's record, so members of this
 * node's tribes can call it. Each incoming call becomes a
 * `TRIBE_EVENT_CALL` event for `tribe_node_next_event`; libtribe never
 * calls into the host. A call that arrives once the node is stopping is
 * refused as `tribe_responder_refuse_stopping` would (the caller moves it to
 * another member). Serving the same name and version again replaces the
 * first (its kind too: a name and version is served as one kind).
 */
uint32_t tribe_node_serve(const struct tribe_node *node,
                          const char *name,
                          const char *version,
                          uint32_t kind,
                          struct tribe_error **err);

/**
 * Stops serving a plugin and withdraws its endpoint.
 */
uint32_t tribe_node_unserve(const struct tribe_node *node,
                            const char *name,
                            const char *version,
                            struct tribe_error **err);

/**
 * Calls `plugin` (`version`: NULL for any) of kind `kind` served by a live
 * member of `tribe`: this node first when it serves it, then the member
 * with the fewest calls outstanding, suspected members last. Blocks the calling thread until the
 * reply, an error, `timeout_ms` (a host runs the call for at most
 * `TRIBE_MAX_CALL_BUDGET_MS`; 0 is a deadline already passed, as a handler
 * passing on `tribe_responder_remaining_us(r) / 1000` gets once its budget
 * is spent: `TRIBE_TIMEOUT` at once, as in Go and Python), or a shutdown of the node from
 * another thread (`TRIBE_SHUTTING_DOWN`). On `TRIBE_OK`, `*reply` receives
 * an owned buffer (free with `tribe_bytes_free(*reply, *reply_len)`; NULL
 * for an empty reply); `reply` and `reply_len` both NULL drop the reply
 * (a publisher's, say: its caller wants only the outcome), one of them
 * NULL is `TRIBE_NULL_ARGUMENT`. Errors: `TRIBE_NO_PROVIDER`, `TRIBE_TIMEOUT`,
 * `TRIBE_REMOTE` (the handler's code and message in the error),
 * `TRIBE_TOO_LARGE` (a payload over the node's `max_payload` is refused
 * at once, before it is copied; or a reply over it), `TRIBE_OVERLOADED`,
 * `TRIBE_DISCONNECTED`, `TRIBE_SHUTTING_DOWN`, `TRIBE_IO` (this process
 * could not open a connection: out of descriptors, buffers or memory;
 * no host is blamed). `payload` may be NULL when
 * `payload_len` is 0. A call to another node goes on a TCP stream this
 * call borrows whole, and the calling thread reads the reply from the
 * socket itself (a thread blocked here holds one stream to the host it
 * calls; they are reused). Before the thread blocks in the socket it
 * looks for the reply for up to 50 µs while this stream's recent replies
 * came that fast (see `tribe_node_next_event`).
 * A signal handled on the calling thread does not end the wait (there is
 * no `EINTR`): it goes on until the reply, the timeout or a shutdown.
 */
uint32_t tribe_node_call(const struct tribe_node *node,
                         const char *tribe,
                         const char *plugin,
                         const char *version,
                         uint32_t kind,
                         const uint8_t *payload,
                         size_t payload_len,
                         uint32_t timeout_ms,
                         uint8_t **reply,
                         size_t *reply_len,
                         struct tribe_error **err);

/**
 * Starts a call like `tribe_node_call` without blocking: `*call_id`
 * receives its id, and exactly one `TRIBE_EVENT_CALL_DONE` event with that
 * id reports the outcome (`tribe_event_take_reply`): the reply, the call's
 * error, `TRIBE_CANCELLED` after `tribe_node_call_cancel`,
 * `TRIBE_SHUTTING_DOWN` when the node stops first, or `TRIBE_PANIC` if the
 * library panicked while running the call. Errors in the arguments are
 * returned at once and give no event (`*call_id` is then 0, which no call
 * has), and so are a payload over the node's `max_payload`
 * (`TRIBE_TOO_LARGE`) and a `timeout_ms` of 0 (`TRIBE_TIMEOUT`), as
 * `tribe_node_call` gives them. `*call_id` is written
 * before the call starts, but another thread may take the completion
 * before this function returns: a host that maps ids to waiting callers
 * holds that map's lock across this call (its event thread then waits for
 * the entry).
 * A call with no other asynchronous call of the node in flight runs its
 * first step on the calling thread: when a stream to the chosen host is
 * open, the request is written before this returns (a write that does
 * not block). With others in flight, the call is handed to the thread that
 * waits in `tribe_node_next_event(s)`, which sends the requests of a burst
 * together (libtribe's own thread while none waits). That thread reads the
 * answers.
 */
uint32_t tribe_node_call_async(const struct tribe_node *node,
                               const char *tribe,
                               const char *plugin,
                               const char *version,
                               uint32_t kind,
                               const uint8_t *payload,
                               size_t payload_len,
                               uint32_t timeout_ms,
                               uint64_t *call_id,
                               struct tribe_error **err);

/**
 * Cancels an asynchronous call: if it has not finished, it is abandoned
 * and its `TRIBE_EVENT_CALL_DONE` event carries `TRIBE_CANCELLED`. An id
 * that already finished (or never existed) is ignored, also after a
 * shutdown (`TRIBE_OK`: the stop ended every call). Does not block.
 */
uint32_t tribe_node_call_cancel(const struct tribe_node *node,
                                uint64_t call_id,
                                struct tribe_error **err);

/**
 * Ends an asynchronous call as timed out, for a host that keeps the
 * call's deadline itself (a Go context's): if it has not finished, it is
 * abandoned, its `TRIBE_EVENT_CALL_DONE` event carries `TRIBE_TIMEOUT`,
 * and it counts as a timeout in the node's counters, as a call libtribe
 * timed out does. An id that already finished (or never existed) is
 * ignored, also after a shutdown. Does not block.
 */
uint32_t tribe_node_call_expire(const struct tribe_node *node,
                                uint64_t call_id,
                                struct tribe_error **err);

/**
 * The payload of a call. `*len` receives its length; the bytes are
 * borrowed until `tribe_responder_free` (NULL when empty or for NULL).
 */
const uint8_t *tribe_responder_payload(const struct tribe_responder *r,
                                       size_t *len);

/**
 * Everything `tribe_responder_caller`, `_tribe`, `_plugin`, `_version`,
 * `_payload` and `_budget_us` give, in one call (for bindings, where each
 * call into C has a cost). Writes `*info`; `TRIBE_NULL_ARGUMENT` for NULL.
 * Does not block.
 */
uint32_t tribe_responder_info(const struct tribe_responder *r,
                              struct tribe_call_info *info,
                              struct tribe_error **err);

/**
 * The calling node's name. Borrowed until `tribe_responder_free`; NULL for NULL.
 */
const char *tribe_responder_caller(const struct tribe_responder *r);

/**
 * The tribe the call came through. Borrowed until `tribe_responder_free`.
 */
const char *tribe_responder_tribe(const struct tribe_responder *r);

/**
 * The plugin called. Borrowed until `tribe_responder_free`.
 */
const char *tribe_responder_plugin(const struct tribe_responder *r);

/**
 * The version of the served plugin that takes the call (also when the
 * caller asked for any version). Borrowed until `tribe_responder_free`.
 */
const char *tribe_responder_version(const struct tribe_responder *r);

/**
 * How long the caller still waited when the call arrived, in ms; an answer
 * after that is dropped. 0 for NULL.
 */
uint64_t tribe_responder_budget_ms(const struct tribe_responder *r);

/**
 * How long the caller still waited when the call arrived, in
 * microseconds (`tribe_responder_budget_ms` rounds down to whole ms).
 * 0 for NULL.
 */
uint64_t tribe_responder_budget_us(const struct tribe_responder *r);

/**
 * How long the caller still waits now, in microseconds: the budget less
 * the time since the call arrived (0 once it has run out). A host that
 * starts a call's work late (queued behind others) sets its own deadline
 * from this rather than from the budget, so that it ends when libtribe
 * answers the caller `"timeout"`. 0 for NULL.
 */
uint64_t tribe_responder_remaining_us(const struct tribe_responder *r);

/**
 * Whether the call is over without this responder's answer: its caller
 * cancelled it (`tribe_node_call_cancel`, a cancelled Go context, ...),
 * its budget ran out, or its stream or node ended. An answer given now is
 * dropped; a long handler may check this to stop early. True for NULL and
 * for a responder already answered, and in a forked child. Does not block.
 */
bool tribe_responder_is_abandoned(const struct tribe_responder *r);

/**
 * Answers a call with `reply` (copied; NULL allowed when `reply_len` is 0).
 * Callable from any thread. `TRIBE_CONSUMED` if the call was answered
 * already. `TRIBE_TOO_LARGE` if `reply_len` is over the node's
 * `max_payload` (checked before the reply is copied): the reply is not
 * sent, the caller gets `TRIBE_REMOTE` with the code `"too_large"`, and
 * the call is answered. An answer the caller no longer waits for (deadline passed, node stopped) is dropped without an
 * error. The responder must still be
 * freed. Does not block: the reply is written to the caller's stream from
 * this thread with a non-blocking write, and what the socket does not take
 * at once is left to the node's threads.
 */
uint32_t tribe_responder_reply(const struct tribe_responder *r,
                               const uint8_t *reply,
                               size_t reply_len,
                               struct tribe_error **err);

/**
 * Answers a call with an error: the caller gets `TRIBE_REMOTE` with this
 * `code` (short, stable; NULL or "" gives `"error"`) and `message` (NULL
 * gives ""). Longer ones are cut without an error: the code to 256 bytes,
 * the message to 65,536 (64 KiB), each on a character boundary and ending
 * in "…" (counted in the limit). Bytes that are not UTF-8 (a file name,
 * `strerror` text in another encoding) are replaced with U+FFFD, not
 * refused, so the failure still reaches the caller, as in Go and Python.
 * The code `"timeout"` is reserved: it
 * reaches the caller as `TRIBE_TIMEOUT`, without the message, as a host's
 * answer to a handler that overran the caller's budget. Otherwise like
 * `tribe_responder_reply`.
 */
uint32_t tribe_responder_fail(const struct tribe_responder *r,
                              const char *code,
                              const char *message,
                              struct tribe_error **err);

/**
 * Answers that this host is stopping and did not run the call (a handler
 * pool that stops with calls still queued, a handler that gave up because
 * its node is closing before it had any effect; one that may have had
 * effects answers with `tribe_responder_fail` instead, or the caller runs
 * the call again elsewhere): the caller moves the call to another member
 * that serves the plugin, as for a call that reaches a host already stopping
 * (`TRIBE_NO_PROVIDER` when there is none). `TRIBE_CONSUMED` if the call
 * was answered already. The responder must still be freed. Does not block.
 */
uint32_t tribe_responder_refuse_stopping(const struct tribe_responder *r,
                                         struct tribe_error **err);

/**
 * Declines to answer a call: the caller gets what its own deadline gives
 * (`TRIBE_TIMEOUT`), as if the handler were still running — for a handler
 * that gave up at its budget. `TRIBE_CONSUMED` if the call was answered
 * already. The responder must still be freed. Does not block.
 */
uint32_t tribe_responder_decline(const struct tribe_responder *r,
                                 struct tribe_error **err);

/**
 * Frees a responder; an unanswered call is answered with the error code
 * `"unanswered"`. NULL is ignored.
 */
void tribe_responder_free(struct tribe_responder *r);

/**
 * Makes a cancel token, not triggered. `*out` receives an owned token:
 * free it with `tribe_cancel_free` once no function given it is still
 * running. One token may be given to several operations, one after the
 * other or at once; a triggered token stays triggered. Does not block.
 */
uint32_t tribe_cancel_new(struct tribe_cancel **out,
                          struct tribe_error **err);

/**
 * Triggers the token: every operation given it ends at once with
 * `TRIBE_CANCELLED`, and so does every later one. Safe from any thread
 * (and idempotent); does not block. NULL is ignored.
 */
void tribe_cancel_trigger(const struct tribe_cancel *cancel);

/**
 * Whether the token was triggered. NULL gives false.
 */
bool tribe_cancel_is_triggered(const struct tribe_cancel *cancel);

/**
 * Frees the token. No operation given it may still be running, and no
 * other thread may use the handle during or after this call. NULL is
 * ignored.
 */
void tribe_cancel_free(struct tribe_cancel *cancel);

/**
 * Creates an empty tribe. Blocks for a local write only (microseconds);
 * the tribe then spreads to every node. `TRIBE_TRIBE_EXISTS` if it exists.
 */
uint32_t tribe_node_create_tribe(const struct tribe_node *node,
                                 const char *tribe,
                                 struct tribe_error **err);

/**
 * Deletes a tribe with its catalog, memberships and the policies that
 * target it. `TRIBE_UNKNOWN_TRIBE` if it does not exist.
 */
uint32_t tribe_node_delete_tribe(const struct tribe_node *node,
                                 const char *tribe,
                                 struct tribe_error **err);

/**
 * Removes a policy. `TRIBE_UNKNOWN_POLICY` if it does not exist.
 */
uint32_t tribe_node_remove_policy(const struct tribe_node *node,
                                  const char *name,
                                  struct tribe_error **err);

/**
 * Sets a user fact of this node (it overrides a collected fact of that
 * name); policies are evaluated again and the fact spreads to peers. The
 * key and value follow the rules of `tribe_config_set_fact` (key 1 to 64
 * bytes of `[A-Za-z_][A-Za-z0-9_]*`, not `true`, `false`, `null` or `in`;
 * value at most 1,024 bytes, no control characters), else
 * `TRIBE_INVALID_ARGUMENT`. A node has at most 256 facts, the collected
 * ones included: a new one beyond that is `TRIBE_INVALID_ARGUMENT`.
 */
uint32_t tribe_node_set_fact(const struct tribe_node *node,
                             const char *key,
                             const char *value,
                             struct tribe_error **err);

/**
 * Removes a user fact of this node. `TRIBE_UNKNOWN_FACT` if it is not one.
 */
uint32_t tribe_node_remove_fact(const struct tribe_node *node,
                                const char *key,
                                struct tribe_error **err);

/**
 * Adds a policy: the nodes whose facts satisfy `when` (CEL over
 * `facts`, e.g. `has(facts.rack) && facts.rack == "r1"`) join `tribe`,
 * which is created when the policy first holds on some node (with the
 * tribes' limit reached, once room frees; a `TRIBE_EVENT_POLICY_ERROR`
 * says so meanwhile). Reading a fact a node lacks is an
 * evaluation error there (the node stays out and gets a
 * `TRIBE_EVENT_POLICY_ERROR`): guard optional facts with `has()`. A bad
 * expression is `TRIBE_INVALID_POLICY` with the position in
 * `tribe_error_line`/`tribe_error_column`; it never spreads. Policies
 * apply in the background: the tribe and this node's place in it may
 * appear a moment (about a millisecond) after this returns.
 * `TRIBE_IO` when no thread could be made to compile it on (the process
 * at its thread limit): try again later. A policy from a peer that meets
 * the same shortage is evaluated again every half second until it can.
 */
uint32_t tribe_node_add_policy(const struct tribe_node *node,
                               const char *name,
                               const char *tribe,
                               const char *when,
                               struct tribe_error **err);

/**
 * Removes a plugin entry from a tribe's catalog.
 */
uint32_t tribe_node_unload_plugin(const struct tribe_node *node,
                                  const char *tribe,
                                  const char *name,
                                  const char *version,
                                  struct tribe_error **err);

/**
 * Removes a task from a tribe.
 */
uint32_t tribe_node_remove_task(const struct tribe_node *node,
                                const char *tribe,
                                const char *id,
                                struct tribe_error **err);

/**
 * Adds `member` (any known node; NULL for this node) to `tribe` by hand.
 */
uint32_t tribe_node_join(const struct tribe_node *node,
                         const char *tribe,
                         const char *member,
                         struct tribe_error **err);

/**
 * Removes the membership by hand of `member` (NULL for this node) in
 * `tribe`. A membership by policy stays while its policy holds.
 */
uint32_t tribe_node_leave(const struct tribe_node *node,
                          const char *tribe,
                          const char *member,
                          struct tribe_error **err);

/**
 * Adds a plugin entry (`kind`: `TRIBE_KIND_*`) to a tribe's catalog: every
 * member, also a later one, gets a `TRIBE_EVENT_PLUGIN_LOAD`.
 */
uint32_t tribe_node_load_plugin(const struct tribe_node *node,
                                const char *tribe,
                                const char *name,
                                const char *version,
                                uint32_t kind,
                                struct tribe_error **err);

/**
 * Adds a task to a tribe: `manifest` is a JSON object (schema in
 * docs/task-manifest.md), `state` is `TRIBE_TASK_RUNNING` or
 * `TRIBE_TASK_STOPPED`. Members get `TRIBE_EVENT_TASK_RUN` while it runs.
 */
uint32_t tribe_node_add_task(const struct tribe_node *node,
                             const char *tribe,
                             const char *id,
                             const char *manifest,
                             uint32_t state,
                             struct tribe_error **err);

/**
 * Sets a task's desired state (`TRIBE_TASK_RUNNING` or `TRIBE_TASK_STOPPED`).
 */
uint32_t tribe_node_set_task_state(const struct tribe_node *node,
                                   const char *tribe,
                                   const char *id,
                                   uint32_t state,
                                   struct tribe_error **err);

/**
 * Adds a key (base64) to every node's keyring. The node must have been
 * started with a key and be in `require` mode.
 */
uint32_t tribe_node_install_key(const struct tribe_node *node,
                                const char *key,
                                struct tribe_error **err);

/**
 * Makes an installed key (its id, 8 hex digits, or the base64 key) the
 * sealing key of every node. A key installed through another node a
 * moment ago is waited for (up to 3 s until some member is heard to hold
 * it, else `TRIBE_UNKNOWN_KEY`). Then blocks (up to 10 s) until every live
 * member, this node included, holds the key; a key not there by then is
 * refused with `TRIBE_KEY_NOT_SPREAD` (naming the members) and nothing
 * changes.
 */
uint32_t tribe_node_use_key(const struct tribe_node *node,
                            const char *key,
                            struct tribe_error **err);

/**
 * Removes a key (id or base64) from every node's keyring; the primary key
 * is refused with `TRIBE_PRIMARY_KEY` (this node's own primary after up to
 * 3 s, unless a switch to another key made through another node is heard
 * of by then). First blocks (up to 10 s) until no live member, this node
 * included, seals with the key any more, else `TRIBE_KEY_NOT_SPREAD`.
 * Returns once this node dropped the key; the removal reaches the other
 * members by gossip (`tribe_node_keys_json` lists it on them until then,
 * well under a second on a LAN).
 */
uint32_t tribe_node_remove_key(const struct tribe_node *node,
                               const char *key,
                               struct tribe_error **err);

/**
 * Changes this node's encryption mode live: `"accept"`, `"send"` or
 * `"require"`.
 */
uint32_t tribe_node_set_encryption(const struct tribe_node *node,
                                   const char *mode,
                                   struct tribe_error **err);

/**
 * Makes a config for a node called `name`, with the defaults of the Rust
 * API: bind `127.0.0.1:0`, profile `lan`, host facts collected, no key,
 * 2 runtime threads. Encryption: with a key (`tribe_config_add_key`, or a
 * keyring the data dir kept), `require` by default; without one,
 * plaintext (for tests only); a mode set without a key (or a data dir
 * that keeps a keyring) is refused at start (`TRIBE_CONFIG`). `*out`
 * receives an owned config: free it with `tribe_config_free`, also after
 * a start used it.
 * A name that breaks the naming rules is `TRIBE_INVALID_NAME` at once (see
 * `tribe_name_check`), and no config is made. Does not block.
 */
uint32_t tribe_config_new(const char *name,
                          struct tribe_config **out,
                          struct tribe_error **err);

/**
 * Checks a config as `tribe_node_start` would before it opens any socket:
 * the options that only make sense together (an encryption mode with no
 * key and no data dir is `TRIBE_CONFIG`, so is a bind to an unspecified
 * address with no advertise address), names, facts, limits and timings,
 * and an existing data dir as the start would (`TRIBE_CONFIG` when any
 * user may write it, its state or keyring file is not one, or the state
 * in it is another node's; nothing is created or changed). For a host that reads its configuration before it starts the
 * node (a collectd plugin, a daemon's `-t` check): a config that passes
 * fails to start only for what the machine says: a port in use, a data
 * dir another node holds (`TRIBE_CONFIG` at the start; a check made while
 * the daemon runs passes), no thread to be had, a data dir that cannot be
 * created, read or written (`TRIBE_IO`). Does not consume the config (`TRIBE_CONSUMED` after a
 * start used it); does not block on the network.
 */
uint32_t tribe_config_check(const struct tribe_config *cfg,
                            struct tribe_error **err);

/**
 * Frees a config (started or not). NULL is ignored.
 */
void tribe_config_free(struct tribe_config *cfg);

/**
 * Sets the address to bind (UDP gossip and TCP on one port), e.g.
 * `"0.0.0.0:7946"`; port 0 picks a free port. May block on DNS for a name.
 * `TRIBE_INVALID_ARGUMENT` when `addr` is not `host:port` (the message
 * says why: no port, a port out of range, a host that does not resolve).
 */
uint32_t tribe_config_set_bind(struct tribe_config *cfg,
                               const char *addr,
                               struct tribe_error **err);

/**
 * Sets the address peers use to reach this node (NAT, binding 0.0.0.0).
 * Without it, the bound address is advertised; a bind to an unspecified
 * host (`0.0.0.0`, `[::]`) without it is `TRIBE_CONFIG` at start (see
 * `tribe_config_check`). The address is parsed as the bind address is.
 */
uint32_t tribe_config_set_advertise(struct tribe_config *cfg,
                                    const char *addr,
                                    struct tribe_error **err);

/**
 * Adds a seed (`host:port` of a node to join through); repeatable. A name
 * is not looked up here (this does not block): the node looks it up when
 * it starts and again while it has no live peer, so one that does not
 * resolve yet is no error (see `seed_lookups_failed` in the counters).
 * `TRIBE_INVALID_ARGUMENT` when `addr` is not an address or a `host:port`.
 */
uint32_t tribe_config_add_seed(struct tribe_config *cfg,
                               const char *addr,
                               struct tribe_error **err);

/**
 * Sets a user fact (it overrides a collected fact of that name). The key
 * is 1 to 64 bytes of `[A-Za-z_][A-Za-z0-9_]*` other than `true`,
 * `false`, `null` and `in` (so `facts.key` works in a policy); the value
 * at most 1,024 bytes of UTF-8 without control characters. Otherwise
 * `TRIBE_INVALID_ARGUMENT` at once. A node has at most 256 facts, the
 * collected ones included (checked at start: `TRIBE_CONFIG`).
 */
uint32_t tribe_config_set_fact(struct tribe_config *cfg,
                               const char *key,
                               const char *value,
                               struct tribe_error **err);

/**
 * Whether to collect host facts (architecture, os_dist, ...); on by default.
 */
uint32_t tribe_config_set_collect_facts(struct tribe_config *cfg,
                                        bool collect,
                                        struct tribe_error **err);

/**
 * Sets the timing profile: `"lan"` (default), `"wan"` or `"local"`.
 */
uint32_t tribe_config_set_profile(struct tribe_config *cfg,
                                  const char *profile,
                                  struct tribe_error **err);

/**
 * Sets how long a failed or left member stays listed before it is
 * reaped (forgotten, with its memberships), in milliseconds, over the
 * profile's (24 h for `"lan"` and `"wan"`, 5 min for `"local"`; the
 * agent's `--reap-after`). A reap deletes the member's record and its
 * memberships by hand for the whole tribe (the deletion spreads), so the
 * shortest `reap_after` in a tribe decides for every node: keep it alike
 * everywhere, and longer than any pause a member may come back from
 * (hours, not seconds: a member frozen past it comes back out of its
 * tribes by hand). 1 ms to 365 days (`TRIBE_INVALID_ARGUMENT` otherwise).
 */
uint32_t tribe_config_set_reap_after(struct tribe_config *cfg,
                                     uint64_t reap_after_ms,
                                     struct tribe_error **err);

/**
 * Sets the cluster label (at most 64 bytes, no control characters:
 * `TRIBE_INVALID_ARGUMENT`): nodes with different labels never talk.
 */
uint32_t tribe_config_set_label(struct tribe_config *cfg,
                                const char *label,
                                struct tribe_error **err);

/**
 * Adds a cluster key (base64 of 32 bytes, as `tribe_keygen` makes); the
 * first one added seals, all open. Without a key traffic is plaintext,
 * which is for tests only (see `tribe_config_new`). The key is never
 * logged or shown.
 */
uint32_t tribe_config_add_key(struct tribe_config *cfg,
                              const char *key,
                              struct tribe_error **err);

/**
 * Adds a cluster key read from a file holding it as base64 (what `tribe
 * keygen` prints; surrounding whitespace is ignored), as
 * `tribe_config_add_key`. Reads the file, which must be a regular file of
 * at most 4096 bytes (a link to one is followed; a FIFO or a device is
 * refused at once with `TRIBE_CONFIG`, not waited on); a file that cannot
 * be read is `TRIBE_IO`, one that holds no key `TRIBE_INVALID_ARGUMENT`.
 * The key is never shown.
 */
uint32_t tribe_config_add_key_file(struct tribe_config *cfg,
                                   const char *path,
                                   struct tribe_error **err);

/**
 * Sets the encryption mode: `"require"`, `"send"` or `"accept"` (the live
 * migration steps; see docs/operating.md). With a key (or a keyring the
 * data dir kept), `require` by default; without one, plaintext; a mode set
 * without a key (or a data dir that keeps a keyring) is refused at start
 * (`TRIBE_CONFIG`; `tribe_config_check` tells it before). An unknown mode
 * is `TRIBE_INVALID_ARGUMENT`.
 */
uint32_t tribe_config_set_encryption(struct tribe_config *cfg,
                                     const char *mode,
                                     struct tribe_error **err);

/**
 * Sets the data directory (known peers, memberships by hand, keyring kept
 * across restarts). A relative path is made absolute now, against the
 * working directory of this call (a daemon that changes directory before
 * it starts the node keeps the dir its configuration named and
 * `tribe_config_check` checked). Created at start (owner-only) if missing; an existing
 * one keeps its mode, but one every user may write, or one that belongs
 * to another user than root or this process's, is refused at start
 * (`TRIBE_CONFIG`; one its group may write is taken, with a warning).
 */
uint32_t tribe_config_set_data_dir(struct tribe_config *cfg,
                                   const char *dir,
                                   struct tribe_error **err);

/**
 * The node the data dir `dir` belongs to (the name its state was kept
 * under): `*out` receives an owned string (free it with
 * `tribe_string_free`), or NULL when the dir holds no state (missing,
 * empty, or kept before names were); `*out_len`, if not NULL, its length.
 * For a host that learns its node's name only later (collectd's
 * `Hostname`) and checks the rest of its configuration now.
 * `TRIBE_CONFIG` for a state file that is damaged or not a regular file,
 * `TRIBE_IO` for one that cannot be read. Reads the state file (up to its
 * size); does not block on the network; needs no node.
 */
uint32_t tribe_data_dir_owner(const char *dir,
                              char **out,
                              size_t *out_len,
                              struct tribe_error **err);

/**
 * Sets the bounds of remote calls; 0 keeps a bound's default. Defaults:
 * payload 4 MiB, 256 calls in flight per connection, 4096 per node, 1024
 * handlers at once. Checked at start (`TRIBE_CONFIG`): the payload at most
 * 1 GiB less 1 KiB (1,073,740,800), the others at most 16,777,216.
 */
uint32_t tribe_config_set_rpc_limits(struct tribe_config *cfg,
                                     size_t max_payload,
                                     size_t max_inflight_per_conn,
                                     size_t max_inflight,
                                     size_t max_serving,
                                     struct tribe_error **err);

/**
 * Sets one named limit to `value` (at least 1). Names and defaults: the
 * replicated state's caps per kind of record, `"nodes"` 20,000,
 * `"tribes"` 10,000, `"members"` (memberships by hand) 200,000,
 * `"policies"` 1,000, `"plugins"` 20,000, `"tasks"` 20,000 (keep them
 * equal cluster-wide; a command past one fails with
 * `TRIBE_LIMIT_REACHED`); `"max_streams"`, inbound call streams served
 * at once, 1,024 (one more is refused, its calls see `TRIBE_OVERLOADED`);
 * and the call bounds `tribe_config_set_rpc_limits` also sets:
 * `"max_inflight_per_conn"` 256, `"max_inflight"` 4,096, `"max_serving"`
 * 1,024. An unknown name, a zero value or a call bound (`max_*`) over
 * 16,777,216 is `TRIBE_INVALID_ARGUMENT`.
 */
uint32_t tribe_config_set_limit(struct tribe_config *cfg,
                                const char *name,
                                uint64_t value,
                                struct tribe_error **err);

/**
 * Starts the node in a poll group (see `tribe_group_new`): its call
 * streams run on the runtime the group's members share, and
 * `tribe_group_wait` wakes for its events. The config keeps its own
 * reference: the group handle may be freed before the start. Does not
 * block.
 */
uint32_t tribe_config_set_group(struct tribe_config *cfg,
                                const struct tribe_group *group,
                                struct tribe_error **err);

/**
 * Sets how many threads the node's runtime runs (1 to 64; default 2).
 */
uint32_t tribe_config_set_worker_threads(struct tribe_config *cfg,
                                         uint32_t threads,
                                         struct tribe_error **err);

/**
 * Queues libtribe's log records from `level` on as `TRIBE_EVENT_LOG`
 * events of this node: `"off"` (default), `"error"`, `"warn"`, `"info"`,
 * `"debug"` or `"trace"`. The records come from the node's own threads and
 * from host threads while they call into this node; they are delivered only
 * if the process has no other global `tracing` subscriber (a C, Go or
 * Python host has none). Like other node events, records are dropped when
 * more than 65,536 wait.
 */
uint32_t tribe_config_set_log_level(struct tribe_config *cfg,
                                    const char *level,
                                    struct tribe_error **err);

/**
 * The result code of an error (`TRIBE_NULL_ARGUMENT` for NULL).
 */
uint32_t tribe_error_code(const struct tribe_error *err);

/**
 * The error's message (UTF-8, NUL-terminated). Borrowed: valid until
 * `tribe_error_free`. NULL for a NULL error.
 */
const char *tribe_error_message(const struct tribe_error *err);

/**
 * The error's stable snake_case name (e.g. `"no_provider"`), the same as
 * the admin API's `"error"` field. Static: never freed. NULL for a NULL error.
 */
const char *tribe_error_name(const struct tribe_error *err);

/**
 * The stable snake_case name of a result code (`"unknown"` for a number
 * that is not a code). Static: never freed.
 */
const char *tribe_result_name(uint32_t code);

/**
 * For `TRIBE_REMOTE`: the code the handler chose (`"panic"` for a handler
 * that panicked). Borrowed until `tribe_error_free`; NULL for other errors.
 */
const char *tribe_error_remote_code(const struct tribe_error *err);

/**
 * For `TRIBE_REMOTE`: the handler's message. Borrowed until
 * `tribe_error_free`; NULL for other errors.
 */
const char *tribe_error_remote_message(const struct tribe_error *err);

/**
 * For `TRIBE_INVALID_POLICY`: the line of the error in the expression,
 * from 1; 0 when unknown or for other errors.
 */
uint32_t tribe_error_line(const struct tribe_error *err);

/**
 * For `TRIBE_INVALID_POLICY`: the column of the error on its line, from 1,
 * in characters; 0 when unknown or for other errors.
 */
uint32_t tribe_error_column(const struct tribe_error *err);

/**
 * Frees an error. NULL is ignored.
 */
void tribe_error_free(struct tribe_error *err);

/**
 * Takes the next event of `node`, waiting up to `timeout_ms` milliseconds
 * (0: do not wait; negative: wait until an event comes or the node stops).
 * Returns `TRIBE_OK` with `*out` set to an owned event (free it with
 * `tribe_event_free`), or `TRIBE_OK` with `*out` NULL when the time ran
 * out. After `tribe_node_shutdown` or `tribe_node_abort`, the events still
 * queued are handed out, then every call returns `TRIBE_SHUTTING_DOWN`
 * at once; a shutdown from another thread wakes a waiting call.
 * Blocks the calling thread up to `timeout_ms` (never less; as the timer
 * counts whole milliseconds, a wait that times out may last about 1 ms
 * longer, so a 1 ms timeout takes about 2); while it waits, the thread
 * reads the node's incoming calls and the answers to its asynchronous
 * calls from their sockets itself (libtribe's own thread does it while no
 * host thread waits). Before it blocks, a thread looks for events for up
 * to 50 µs, busy on its CPU, while this node's recent waits ended that
 * fast (a quick exchange of calls), since waking a thread that slept
 * costs more than that on a virtual machine; after long waits it blocks
 * at once. A signal handled on the waiting thread does not end the wait
 * (there is no `EINTR`): with a negative timeout it goes on until an
 * event or a shutdown.
 */
uint32_t tribe_node_next_event(const struct tribe_node *node,
                               int32_t timeout_ms,
                               struct tribe_event **out,
                               struct tribe_error **err);

/**
 * Takes up to `cap` events of `node` at once: waits like
 * `tribe_node_next_event` (up to `timeout_ms`; 0: do not wait; negative:
 * until an event comes or the node stops) for the first one, then takes
 * the events already queued behind it without waiting more. `out` is an
 * array of `cap` slots (at least 1); `*out_len` receives how many were
 * filled, each an owned event to free with `tribe_event_free`, in queue
 * order (0 when the time ran out). One wake of the calling thread then
 * serves a whole burst of incoming calls or completions. After shutdown it
 * behaves as `tribe_node_next_event`: the queued events are handed out,
 * then `TRIBE_SHUTTING_DOWN`. Blocks the calling thread up to `timeout_ms`,
 * driving the node's call streams meanwhile as `tribe_node_next_event`.
 */
uint32_t tribe_node_next_events(const struct tribe_node *node,
                                int32_t timeout_ms,
                                struct tribe_event **out,
                                size_t cap,
                                size_t *out_len,
                                struct tribe_error **err);

/**
 * Takes up to `cap` events of `node` without blocking, after driving its
 * call streams for one turn on the calling thread: the tasks ready now
 * run, and what the node's sockets hold is read, so incoming calls and
 * answers that arrived are among the events taken. Otherwise as
 * `tribe_node_next_events` with `timeout_ms` 0 (the same `out`, `cap` and
 * `*out_len`; after shutdown the queued events, then
 * `TRIBE_SHUTTING_DOWN`). When another thread drives the streams at that
 * moment it only takes what is queued.
 *
 * For a host thread that must not block, yet may find the answers it
 * waits for before it would sleep: a thread that yields to other work
 * between looks, or an event loop spinning briefly before it sleeps. A
 * `tribe_node_next_events` with 0 ms only takes what other threads
 * queued: a loop that sleeps on the event fd between looks drains it
 * better that way (a look here takes the call streams over from
 * libtribe's thread, which takes them back after 0.1 ms).
 */
uint32_t tribe_node_poll_events(const struct tribe_node *node,
                                struct tribe_event **out,
                                size_t cap,
                                size_t *out_len,
                                struct tribe_error **err);

/**
 * The kind of an event (`TRIBE_EVENT_*`); `TRIBE_EVENT_NONE` for NULL.
 */
uint32_t tribe_event_kind(const struct tribe_event *event);

/**
 * The whole event as a JSON object `{"kind": ..., ...}` (schema in
 * docs/c-api.md). `*out` receives an owned string (`tribe_string_free`),
 * `*out_len` (if not NULL) its length.
 */
uint32_t tribe_event_json(const struct tribe_event *event,
                          char **out,
                          size_t *out_len,
                          struct tribe_error **err);

/**
 * What the event is about: a member's name, a plugin's name, a task's id,
 * a policy's name or a log message (see each `TRIBE_EVENT_*`). `*out` is borrowed: valid
 * until the event is freed. `TRIBE_WRONG_EVENT` for kinds without one.
 */
uint32_t tribe_event_subject(const struct tribe_event *event,
                             const char **out,
                             struct tribe_error **err);

/**
 * The tribe an event is about. `*out` is borrowed: valid until the event is
 * freed. `TRIBE_WRONG_EVENT` for kinds without one.
 */
uint32_t tribe_event_tribe(const struct tribe_event *event,
                           const char **out,
                           struct tribe_error **err);

/**
 * Moves the responder out of a `TRIBE_EVENT_CALL` event. `*out` receives
 * an owned responder: answer it with `tribe_responder_reply` or
 * `tribe_responder_fail` (from any thread) and free it with
 * `tribe_responder_free`. `TRIBE_CONSUMED` the second time;
 * `TRIBE_WRONG_EVENT` for other kinds. Freeing the event without taking the
 * responder answers the caller with the error code `"unanswered"`.
 */
uint32_t tribe_event_take_responder(struct tribe_event *event,
                                    struct tribe_responder **out,
                                    struct tribe_error **err);

/**
 * The level of a `TRIBE_EVENT_LOG` record: `TRIBE_LOG_ERROR` (1) to
 * `TRIBE_LOG_TRACE` (5). Its message is the event's subject.
 * `TRIBE_WRONG_EVENT` for other kinds.
 */
uint32_t tribe_event_log_level(const struct tribe_event *event,
                               uint32_t *out,
                               struct tribe_error **err);

/**
 * The id `tribe_node_call_async` gave the call a `TRIBE_EVENT_CALL_DONE`
 * event finishes. `TRIBE_WRONG_EVENT` for other kinds.
 */
uint32_t tribe_event_call_id(const struct tribe_event *event,
                             uint64_t *out,
                             struct tribe_error **err);

/**
 * The outcome of the asynchronous call a `TRIBE_EVENT_CALL_DONE` event
 * finishes: returns what `tribe_node_call` would have returned (`TRIBE_OK`
 * with the reply in `*reply`/`*reply_len`, owned, freed with
 * `tribe_bytes_free`; or the call's error); `reply` and `reply_len` both
 * NULL take the outcome only (a publisher's), dropping the reply.
 * `TRIBE_CONSUMED` the second time; `TRIBE_WRONG_EVENT` for other kinds.
 */
uint32_t tribe_event_take_reply(struct tribe_event *event,
                                uint8_t **reply,
                                size_t *reply_len,
                                struct tribe_error **err);

/**
 * Frees an event. An incoming call whose responder was not taken is
 * answered with the error code `"unanswered"`. NULL is ignored.
 */
void tribe_event_free(struct tribe_event *event);

/**
 * Makes a poll group. Pass it to `tribe_config_set_group` for each node
 * that joins it, and wait for the events of all of them on one thread with
 * `tribe_group_wait`. `*out` receives an owned group: free it with
 * `tribe_group_free` (its members keep what they share until they are
 * freed too). Starts one thread (which drives the members' call streams
 * while no host thread waits). Does not block.
 */
uint32_t tribe_group_new(struct tribe_group **out,
                         struct tribe_error **err);

/**
 * Frees the group handle. Nodes started in it go on working; the runtime
 * they share stops when the last of them is freed. When no node of the
 * group is left, it stops the group's thread and runtime (up to about
 * 2 s). No other thread may use the handle during or after this call.
 * NULL is ignored.
 */
void tribe_group_free(struct tribe_group *group);

/**
 * Waits until a member of the group queues an event or stops, or
 * `tribe_group_wake` is called, up to `timeout_ms` milliseconds (0: do
 * not wait; negative: no limit). While it waits, the calling thread reads
 * every member's incoming calls and answers from their sockets itself, as
 * `tribe_node_next_events` does for one node; with 0 it does so for one
 * turn. (When another thread drives the group's streams at that moment,
 * in its own wait, it only waits.) Then take the events with
 * `tribe_node_next_events(node, 0, ...)`
 * from each member. Returns `TRIBE_OK` also when the time ran out.
 * It waits for a notification, not for a state: one that came while no
 * thread waited is kept for the next wait (one at most), but events left
 * untaken and a member that stopped before do not end a later wait. So
 * take from every member (until it gives none, or `TRIBE_SHUTTING_DOWN`
 * once it stopped) before waiting again; it may also return once for
 * events already taken. With several threads waiting, each notification
 * of events ends one of their waits (the one woken takes for all); a
 * member that stops ends them all. Blocks the calling thread up to
 * `timeout_ms`.
 */
uint32_t tribe_group_wait(const struct tribe_group *group,
                          int32_t timeout_ms,
                          struct tribe_error **err);

/**
 * Makes one `tribe_group_wait` in progress, or the next one, return at
 * once (for a host that added a node to the set it takes events from).
 * Does not block; callable from any thread.
 */
uint32_t tribe_group_wake(const struct tribe_group *group,
                          struct tribe_error **err);

/**
 * Joins the cluster through `places` (`places_len` strings `host:port`:
 * addresses, or names looked up), also while this node is in a cluster
 * already (two clusters then merge; their records merge as every record
 * does, the later write winning: a tribe or policy deleted on one side
 * within the tombstone grace deletes one of that name on the other when
 * the deletion is the later write): each place gets a join exchange, in
 * which this node sends its view and takes the peer's. The addresses
 * become seeds too, those that did not answer also (a node alone, or one
 * that loses every peer later, tries them again). Blocks until every
 * exchange ended: up to 5 s for the lookups plus 12 s for the exchanges
 * (those still under way then are given up; the ones that completed
 * count); a node runs 16 joins at once, the others wait their turn; at most 256
 * addresses are tried, the first ones, however many the names give;
 * `tribe_node_shutdown` from another thread ends it at once
 * (`TRIBE_SHUTTING_DOWN`). A name's lookup runs on a thread of its own
 * (the resolver cannot be cancelled): one that hangs outlives the node
 * until the resolver gives up; 32 run at once in a process, a name past
 * that fails at once. `*joined` (may be NULL) receives how many addresses
 * completed their exchange, 0 on error.
 *
 * Errors: `TRIBE_INVALID_ARGUMENT` (no place, more than 256, one not
 * `host:port` or of port 0, only this node's own address), `TRIBE_IO`
 * when no address completed its exchange (the message names each and
 * why: refused, no answer, another key, a name that does not resolve,
 * this node itself through another of its addresses),
 * `TRIBE_SHUTTING_DOWN`.
 */
uint32_t tribe_node_join_cluster(const struct tribe_node *node,
                                 const char *const *places,
                                 size_t places_len,
                                 size_t *joined,
                                 struct tribe_error **err);

/**
 * Like `tribe_node_join_cluster`, but waits at most `timeout_ms`
 * milliseconds in all (0: no limit of the caller's; the join's own are
 * 5 s for the lookups plus 12 s for the exchanges): then its exchanges
 * still under way are given up, and the addresses reached by then count
 * (`TRIBE_OK`, `*joined` of them, as memberlist's `Join` succeeds when
 * any address answered; when none was reached, `TRIBE_TIMEOUT` if no
 * address had answered at all, else `TRIBE_IO` naming each and why:
 * another key, refused, still under way at the limit). `cancel` (may
 * be NULL) ends it at once with `TRIBE_CANCELLED` when triggered, from
 * another thread or before the call (bad places are still told as
 * `TRIBE_INVALID_ARGUMENT`). A join given up drops its exchanges still
 * under way at once (their connections closed, their addresses not kept
 * as seeds unless a join exchange completed with them); those that
 * completed before keep what they merged (the peers' members, tribes and
 * catalogs), and their addresses stay seeds; `*joined` is 0 on an error.
 * `cancel` must stay alive until this function returns.
 */
uint32_t tribe_node_join_cluster_cancellable(const struct tribe_node *node,
                                             const char *const *places,
                                             size_t places_len,
                                             uint64_t timeout_ms,
                                             const struct tribe_cancel *cancel,
                                             size_t *joined,
                                             struct tribe_error **err);

/**
 * Starts a node from `cfg`: builds its runtime, binds the sockets, starts
 * gossip and joins through the seeds (in the background: it does not wait
 * for peers; `TRIBE_EVENT_JOINED` tells when it has one, and tribes made
 * elsewhere are known after the first sync, so a call made before may be
 * `TRIBE_UNKNOWN_TRIBE` or `TRIBE_NO_PROVIDER`). libtribe's threads block
 * asynchronous signals, so the host's threads receive them. Blocks for the bind only (milliseconds; longer when a data
 * dir is read). `cfg` is consumed on every path, success or not: later use
 * of it returns `TRIBE_CONSUMED`, and it must still be freed with
 * `tribe_config_free`. `*out` receives an owned node: stop it with
 * `tribe_node_shutdown` (or `tribe_node_abort`), then free it with
 * `tribe_node_free`. Every descriptor libtribe opens belongs to one node
 * (or poll group) and is closed by its free: none is process-wide, so a
 * daemon may close every descriptor after the free and start nodes again
 * (but a name lookup's, which only the system resolver ends: see the top
 * of this header).
 */
uint32_t tribe_node_start(struct tribe_config *cfg,
                          struct tribe_node **out,
                          struct tribe_error **err);

/**
 * Leaves the cluster gracefully (peers record the node as *left*) and
 * stops: blocked `tribe_node_call`s and `tribe_node_next_event`s on other
 * threads return `TRIBE_SHUTTING_DOWN`, pending asynchronous calls finish
 * with `TRIBE_SHUTTING_DOWN` events, and every later command returns
 * `TRIBE_SHUTTING_DOWN`. Idempotent: a second call (also from another
 * thread) returns `TRIBE_OK` once the first has finished. Blocks while the
 * goodbye is sent (well under a second on a LAN, 1.5 s at most when peers
 * do not answer it, as when they stop at the same time) and, with a data
 * dir, while the node's last state is written (`TRIBE_IO` when the data
 * dir did not take it: a full disk, or a hung one waited for 5 s; the node
 * is stopped all the same, and a restart from the data dir comes back
 * with what it last saved). Calls to
 * this node's plugins are refused from the start (callers move them to
 * another host); those it already runs are still answered, and its call
 * streams close once they are, or at `tribe_node_free` (whose callers
 * then get `TRIBE_DISCONNECTED`, and whose responders turn abandoned).
 * Not async-signal-safe (it takes locks, allocates and waits for the
 * node's threads), nor is any other libtribe function: on SIGTERM, have
 * the handler write to a self-pipe (or take the signal from a `signalfd`
 * instead of a handler), and call this from the ordinary thread that
 * reads it.
 */
uint32_t tribe_node_shutdown(const struct tribe_node *node,
                             struct tribe_error **err);

/**
 * Stops at once without a goodbye, as a crash would (peers record the node
 * as *failed*); otherwise like `tribe_node_shutdown`. Idempotent. After
 * (or during) a `tribe_node_shutdown`, as a host's second signal or a host
 * that gave up on its handlers, it makes `tribe_node_free` wait only for
 * the replies already given to be sent, not for calls still unanswered
 * (their callers get `TRIBE_DISCONNECTED` at the free). During a
 * `tribe_node_shutdown` of another thread it does not cut the goodbye
 * short: it returns when that shutdown does (1.5 s at most, plus the
 * data dir's last write).
 */
uint32_t tribe_node_abort(const struct tribe_node *node,
                          struct tribe_error **err);

/**
 * Frees a node: aborts it if it was not stopped, ends its threads and
 * closes its sockets and event fd. After `tribe_node_shutdown` it
 * first lets the call streams send the replies given meanwhile (answer
 * every responder before the free), up to 2 s, and waits for no call
 * whose caller gave up on it (its timeout passed, it was cancelled, its
 * stream ended; after a `tribe_node_abort`, for no call still
 * unanswered); the threads get up to 2 s more. No other thread may use
 * the node during or after this call. NULL is ignored; in a
 * process forked from the one that started the node, nothing is released
 * (see fork() above).
 */
void tribe_node_free(struct tribe_node *node);

/**
 * The node's name. Borrowed: valid until `tribe_node_free`. NULL for NULL.
 */
const char *tribe_node_name(const struct tribe_node *node);

/**
 * The advertised address, `ip:port` with the bound port. Borrowed: valid
 * until `tribe_node_free`. NULL for NULL.
 */
const char *tribe_node_addr(const struct tribe_node *node);

/**
 * A file descriptor that is readable while events wait for
 * `tribe_node_next_event`, and stays readable once the node has stopped.
 * It is a level: with `EPOLLET`, take events until none is left (a wait
 * of 0 ms that gives none) before waiting again, as an event queued while
 * others wait makes no new edge. Owned by the node (do not read, write or
 * close it); valid until `tribe_node_free`. -1 for NULL, and in a forked
 * child.
 */
int tribe_node_event_fd(const struct tribe_node *node);

/**
 * Node events dropped because the host read them too slowly (more than
 * 65,536 waiting). 0 for NULL, and in a forked child.
 */
uint64_t tribe_node_events_dropped(const struct tribe_node *node);

/**
 * Every known member, this node included, as the JSON array of the
 * admin API's `GET /v1/members`. `*out` is owned (`tribe_string_free`).
 * Does not block. `TRIBE_SHUTTING_DOWN` once the node stops (so for
 * every snapshot).
 */
uint32_t tribe_node_members_json(const struct tribe_node *node,
                                 char **out,
                                 size_t *out_len,
                                 struct tribe_error **err);

/**
 * One member by name, this node included, as the admin API's
 * `GET /v1/members/{name}`; `TRIBE_UNKNOWN_NODE` if none,
 * `TRIBE_INVALID_NAME` for a name no node can have. `*out` is
 * owned (`tribe_string_free`). Does not block.
 */
uint32_t tribe_node_member_json(const struct tribe_node *node,
                                const char *name,
                                char **out,
                                size_t *out_len,
                                struct tribe_error **err);

/**
 * Every tribe with its live members and catalog, as `GET /v1/tribes`.
 */
uint32_t tribe_node_tribes_json(const struct tribe_node *node,
                                char **out,
                                size_t *out_len,
                                struct tribe_error **err);

/**
 * Every policy, as `GET /v1/policies`.
 */
uint32_t tribe_node_policies_json(const struct tribe_node *node,
                                  char **out,
                                  size_t *out_len,
                                  struct tribe_error **err);

/**
 * Which live nodes hold which keys (ids only), as `GET /v1/keys`.
 */
uint32_t tribe_node_keys_json(const struct tribe_node *node,
                              char **out,
                              size_t *out_len,
                              struct tribe_error **err);

/**
 * Name, address, live members, state digest, encryption, as
 * `GET /v1/status`.
 */
uint32_t tribe_node_status_json(const struct tribe_node *node,
                                char **out,
                                size_t *out_len,
                                struct tribe_error **err);

/**
 * The node's counters (traffic, refusals, sync, calls) as one JSON
 * object: `{"engine": {...}, "calls": {...}}`; names in docs/c-api.md.
 * Unlike the snapshots, also after a shutdown or an abort (until
 * `tribe_node_free`): the final counts. Does not block.
 */
uint32_t tribe_node_counters_json(const struct tribe_node *node,
                                  char **out,
                                  size_t *out_len,
                                  struct tribe_error **err);

/**
 * One tribe, as `GET /v1/tribes/{name}`; `TRIBE_UNKNOWN_TRIBE` if none,
 * `TRIBE_INVALID_NAME` for a name no tribe can have (empty, say).
 */
uint32_t tribe_node_tribe_json(const struct tribe_node *node,
                               const char *tribe,
                               char **out,
                               size_t *out_len,
                               struct tribe_error **err);

/**
 * The digest of the replicated state (hex): equal on converged nodes.
 * `*out` is owned (`tribe_string_free`).
 */
uint32_t tribe_node_state_digest(const struct tribe_node *node,
                                 char **out,
                                 size_t *out_len,
                                 struct tribe_error **err);

#ifdef __cplusplus
}  /* extern "C" */
#endif  /* __cplusplus */

#endif  /* TRIBE_H */
